"""Export to cameras: ONNX FP32 (``full`` decoded / ``raw`` per-level head), ONNX INT8 (ORT static QDQ), OpenVINO IR,
an ONNX Runtime adapter for accuracy parity, CPU latency helpers. See docs/export.md."""
from .errors import ExportError
from .onnx_export import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    VARIANTS,
    export_onnx,
    read_metadata,
)
from .ort_detector import OrtDetector, model_size_mb, ort_session
from .pipeline import (
    ExportRequest,
    export_set,
    load_for_export,
    markdown_table,
    predictors,
    score,
    to_openvino,
)
from .quantize import (
    CALIB_METHODS,
    ImageFolderReader,
    list_images,
    quantize_int8,
    tail_nodes,
)

__all__ = [
    "CALIB_METHODS", "DEFAULT_OPSET", "ExportError", "ExportRequest", "ImageFolderReader", "MAX_OPSET", "MIN_OPSET",
    "OrtDetector", "VARIANTS", "export_onnx", "export_set", "list_images", "load_for_export", "markdown_table",
    "model_size_mb", "ort_session", "predictors", "quantize_int8", "read_metadata", "score", "tail_nodes",
    "to_openvino",
]
