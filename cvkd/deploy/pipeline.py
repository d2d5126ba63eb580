"""What cvkd export and benchmarks/export_latency.py share: load a checkpoint for export, write the set of files
(ONNX FP32 full/raw, INT8, OpenVINO IR), score them with the COCO evaluator, print markdown tables."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import CocoData, check_class_names
from ..models import DetectorAdapter, ModelError, load_detector
from .errors import ExportError
from .onnx_export import DEFAULT_OPSET, VARIANTS, check_imgsz, check_opset, export_onnx
from .ort_detector import OrtDetector
from .quantize import CALIB_METHODS, INT8_MIN_OPSET, SCHEMES, list_images, quantize_int8


@dataclass
class ExportRequest:
    """Everything one export writes; ``out_dir / f"{stem}_{imgsz}_{variant}[_nms]_{precision}.onnx"``."""

    imgsz: int = 640
    out_dir: Path = Path("runs/export")
    stem: str = "model"
    variants: tuple[str, ...] = ("full",)
    opset: int = DEFAULT_OPSET
    nms: bool = False
    slim: bool = True
    int8: bool = False
    calib: Path | None = None
    calib_frames: int = 100
    calib_method: str = "minmax"
    int8_scheme: str = "per_channel"
    openvino: bool = False
    written: dict[str, Path] = field(default_factory=dict)  # "full_fp32" -> path, filled by :func:`export_set`
    int8_report: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Every cheap check before a checkpoint is even loaded."""
        check_opset(self.opset)
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ExportError(f"unknown ONNX variant(s) {bad}: expected {', '.join(VARIANTS)}")
        if self.nms and "full" not in self.variants:
            raise ExportError("NMS is baked into the 'full' variant only: add it to the variants")
        if self.int8:
            if not {"full", "e2e"} & set(self.variants):
                raise ExportError("INT8 is made from the 'full' (and 'e2e') variant: add one to the variants")
            if self.opset < INT8_MIN_OPSET:
                raise ExportError(f"INT8 (per-channel QDQ) needs opset >= {INT8_MIN_OPSET}, got {self.opset}")
            if self.calib is None:
                raise ExportError("INT8 needs a calibration folder of the camera's images (--calib DIR)")
            if self.int8_scheme not in SCHEMES:
                raise ExportError(f"unknown INT8 scheme '{self.int8_scheme}': expected {', '.join(SCHEMES)}")
            if self.calib_method not in CALIB_METHODS:
                raise ExportError(f"unknown calibration method '{self.calib_method}': "
                                  f"expected {', '.join(CALIB_METHODS)}")
            list_images(self.calib)  # fails now rather than after the FP32 export
        if self.openvino:
            _openvino()

    def path(self, variant: str, precision: str) -> Path:
        nms = "_nms" if self.nms and variant == "full" else ""
        return Path(self.out_dir) / f"{self.stem}_{self.imgsz}_{variant}{nms}_{precision}.onnx"


def load_for_export(path: str | Path) -> DetectorAdapter:
    """A detector from a cvkd or ultralytics checkpoint, eval mode on CPU; one-line :class:`ModelError` otherwise."""
    try:
        return load_detector(path, "cpu").eval()
    except ModelError:
        raise
    except (KeyError, TypeError, AttributeError, RuntimeError) as e:  # broken meta, or weights of other shapes
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise ModelError(f"{path}: malformed detector checkpoint ({type(e).__name__}: {first})") from None


def export_qat(adapter: DetectorAdapter, req: ExportRequest, scheme: str) -> dict[str, Path]:
    """A quantization-aware-trained model: each variant as ONNX QDQ (its fake-quant modules become QuantizeLinear /
    DequantizeLinear, biases int32: ORT's INT8 kernels), ``{stem}_{imgsz}_{variant}_int8_qat[_npu].onnx``."""
    import onnx

    from .onnx_export import read_metadata, set_metadata
    from .qat import dequantize_after_views, fold_weight_quantization, quantize_biases

    if req.int8:
        raise ExportError(f"this model was trained with QAT ({scheme}): it exports as INT8 itself; drop --int8")
    precision = "int8_qat" + ("" if scheme == "per_channel" else f"_{scheme}")
    for variant in req.variants:
        path = export_onnx(adapter, req.path(variant, precision), req.imgsz, variant, req.opset,
                           nms=req.nms and variant == "full", slim=req.slim)
        model = onnx.load(str(path))
        dequantize_after_views(model)  # first: a conv reading a chunk then reads a DequantizeLinear
        n = quantize_biases(model)
        folded = fold_weight_quantization(model)  # int8 weights on disk, as PTQ files store them
        set_metadata(model, {**read_metadata(model), "precision": "int8", "int8_scheme": scheme, "qat": True,
                             "int32_biases": n, "int8_weights": folded})
        onnx.save(model, str(path))
        req.written[f"{variant}_int8"] = path
    return req.written


def export_set(adapter: DetectorAdapter, req: ExportRequest) -> dict[str, Path]:
    """Write the requested files: {"full_fp32": path, "raw_fp32": ..., "full_int8": ..., "full_int8_ir": ...}."""
    from .qat import is_qat

    req.check()
    check_imgsz(req.imgsz, adapter.strides)
    scheme = is_qat(adapter)
    if scheme:
        return export_qat(adapter, req, scheme)
    for variant in req.variants:
        req.written[f"{variant}_fp32"] = export_onnx(adapter, req.path(variant, "fp32"), req.imgsz, variant, req.opset,
                                                     nms=req.nms and variant == "full", slim=req.slim)
    for variant in ("full", "e2e") if req.int8 else ():
        if variant in req.variants:
            precision = "int8" if req.int8_scheme == "per_channel" else f"int8_{req.int8_scheme}"
            report = quantize_int8(req.written[f"{variant}_fp32"], req.path(variant, precision), req.calib,
                                   req.calib_frames, req.calib_method, req.int8_scheme)
            req.written[f"{variant}_int8"] = report["path"]
            req.int8_report = req.int8_report or report  # the full variant's, else the e2e one's
    if req.openvino:
        for key in list(req.written):
            req.written[f"{key}_ir"] = to_openvino(req.written[key])
    return req.written


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ExportError("OpenVINO IR needs the openvino package: pip install openvino") from None
    return openvino


def to_openvino(onnx_path: Path) -> Path:
    """ONNX -> OpenVINO IR (.xml + .bin next to it, FP32 weights; a QDQ INT8 file becomes an INT8 IR)."""
    ov = _openvino()
    xml = onnx_path.with_suffix(".xml")
    with contextlib.redirect_stdout(io.StringIO()):
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def predictors(adapter: DetectorAdapter | None, files: dict[str, Path], threads: int = 1) -> dict[tuple[str, str], Any]:
    """{(format, precision): detector with ``predict``} for the PyTorch model and each ``full`` / ``e2e`` ONNX file
    (format ``onnx`` / ``onnx-e2e``)."""
    out: dict[tuple[str, str], Any] = {}
    if adapter is not None:
        out[("pytorch", "fp32")] = adapter
    for key, path in files.items():
        variant, precision = key.split("_")[:2]
        if variant in ("full", "e2e") and path.suffix == ".onnx":
            out[("onnx" if variant == "full" else "onnx-e2e", precision)] = OrtDetector(path, threads)
    return out


def score(detector: Any, data: CocoData, imgsz: int, conf: float = 0.001, iou: float = 0.7,
          max_det: int = 300, batch_size: int = 8, predictions_out: list | None = None) -> dict[str, Any]:
    """COCO metrics of ``detector.predict`` on ``data`` through :func:`cvkd.eval.evaluate`; ``predictions_out``, if
    a list, receives the scored detections (COCO results)."""
    from ..eval import evaluate

    where = f"{getattr(detector, 'path', 'model')} on {data.json_path}"
    check_class_names(data.class_names, list(detector.class_names), where)
    return evaluate(lambda img: detector.predict(img, conf=conf, iou=iou, max_det=max_det), data, imgsz, batch_size,
                    "cpu", cache=False, quiet=True, predictions_out=predictions_out)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` (floats to 4 significant decimals, missing values blank)."""
    def fmt(v: Any) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
