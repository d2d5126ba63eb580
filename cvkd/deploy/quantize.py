"""ONNX FP32 -> INT8 by ONNX Runtime static quantization (QDQ), calibrated on camera frames.

Recipe: ``quant_pre_process`` (shape inference + graph optimisation), then ``quantize_static`` with QDQ format under a
scheme (:data:`SCHEMES`: ``per_channel``, per-channel int8 weights and uint8 activations, the default; ``npu``,
per-tensor symmetric int8 everywhere), MinMax / Entropy / Percentile calibration on N frames of the camera's own
images letterboxed exactly as for evaluation. The decode tail (everything after the head's last convolutions: DFL
softmax/expectation, anchors, concat, sigmoid, NMS) stays float: whole-graph INT8 of a YOLO head puts boxes in pixels
and 0-1 scores on one scale and collapses to ~0 mAP.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from ..data import DataError, letterbox
from ..data.images import read_rgb
from .errors import ExportError
from .onnx_export import read_metadata, set_metadata

INT8_MIN_OPSET = 13  # per-channel DequantizeLinear (``axis``) needs opset 13
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
CALIB_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}
# INT8 schemes: what ONNX Runtime runs best (per-channel weights, asymmetric uint8 activations), and what strict camera
# NPUs accept (Axis ARTPEC TFLite, many SoC NPUs: per-tensor symmetric int8 weights and activations for every layer,
# the head's convolutions included). The decode tail stays float in both.
SCHEMES = {"per_channel": {"per_channel": True, "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
                           "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True}},
           "npu": {"per_channel": False, "activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
                   "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True}}}


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted); one-line error when the folder is missing or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"calibration folder {folder} not found")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise ExportError(f"calibration folder {folder} has no images ({', '.join(sorted(IMAGE_EXTS))})")
    return paths


def load_frame(path: Path, imgsz: int) -> np.ndarray:
    """One image letterboxed like evaluation: (1, 3, S, S) float32 RGB in [0, 1]."""
    try:
        img = read_rgb(path)  # (H, W, 3) uint8 RGB
    except DataError as e:
        raise ExportError(f"calibration: {e}") from None
    boxed, _, _ = letterbox(img, imgsz)  # (S, S, 3)
    return (boxed.transpose(2, 0, 1)[None].astype(np.float32) / 255.0).copy()  # (1, 3, S, S)


class ImageFolderReader(CalibrationDataReader):
    """Feeds ``frames`` images of ``folder`` (evenly spaced over the sorted list: consecutive camera frames are
    near-duplicates) to the calibrator, one (1, 3, S, S) batch at a time."""

    def __init__(self, folder: str | Path, imgsz: int, frames: int = 100, input_name: str = "images"):
        paths = list_images(folder)
        if frames <= 0:
            raise ExportError(f"calibration needs at least 1 frame, got {frames}")
        idx = np.linspace(0, len(paths) - 1, min(frames, len(paths))).round().astype(int)
        self.paths = [paths[i] for i in sorted(set(idx.tolist()))]
        self.imgsz, self.input_name = imgsz, input_name
        self._it = iter(self.paths)

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._it, None)
        return None if path is None else {self.input_name: load_frame(path, self.imgsz)}

    def rewind(self) -> None:
        self._it = iter(self.paths)


def tail_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes downstream of the head's last convolutions (Conv nodes with no Conv after them): the decode tail."""
    nodes = list(model.graph.node)  # ONNX graphs are topologically sorted
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    conv_below = [False] * len(nodes)  # a Conv is reachable from this node's outputs
    for i in reversed(range(len(nodes))):
        nxt = [j for t in nodes[i].output for j in consumers.get(t, [])]
        conv_below[i] = any(nodes[j].op_type == "Conv" or conv_below[j] for j in nxt)
    head_convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv" and not conv_below[i]]
    tail: set[int] = set()
    frontier = [j for i in head_convs for t in nodes[i].output for j in consumers.get(t, [])]
    while frontier:
        j = frontier.pop()
        if j not in tail:
            tail.add(j)
            frontier += [k for t in nodes[j].output for k in consumers.get(t, [])]
    return [nodes[i] for i in sorted(tail)]


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib_dir: str | Path, frames: int = 100,
                  method: str = "minmax", scheme: str = "per_channel", keep_tail_float: bool = True) -> dict[str, Any]:
    """Quantize an ONNX file written by :func:`export_onnx` under ``scheme`` (:data:`SCHEMES`); returns ``path``,
    ``excluded`` (node names left float), ``excluded_ops`` ({op type: count}) and ``frames`` (calibration images)."""
    if method not in CALIB_METHODS:
        raise ExportError(f"unknown calibration method '{method}': expected one of {', '.join(CALIB_METHODS)}")
    if scheme not in SCHEMES:
        raise ExportError(f"unknown INT8 scheme '{scheme}': expected one of {', '.join(SCHEMES)}")
    per_channel = SCHEMES[scheme]["per_channel"]
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    meta = read_metadata(fp32_path)
    if "imgsz" not in meta:
        raise ExportError(f"{fp32_path}: not an ONNX file written by cvkd export (no imgsz metadata)")
    opset = max((o.version for o in onnx.load(str(fp32_path), load_external_data=False).opset_import
                 if o.domain in ("", "ai.onnx")), default=0)
    if per_channel and opset < INT8_MIN_OPSET:
        raise ExportError(f"{fp32_path}: per-channel INT8 needs opset >= {INT8_MIN_OPSET}, the file has opset {opset}")
    reader = ImageFolderReader(calib_dir, int(meta["imgsz"]), frames)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cvkd-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        with _quiet():
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        tail = tail_nodes(onnx.load(str(pre))) if keep_tail_float else []
        with _quiet():
            quantize_static(str(pre), str(out_path), reader, quant_format=QuantFormat.QDQ,
                            calibrate_method=CALIB_METHODS[method], nodes_to_exclude=[n.name for n in tail],
                            **SCHEMES[scheme])
    model = onnx.load(str(out_path))
    set_metadata(model, {**meta, "precision": "int8", "int8_scheme": scheme, "calib_method": method,
                         "calib_frames": len(reader.paths), "float_tail_nodes": len(tail)})
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    ops: dict[str, int] = {}
    for n in tail:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"path": out_path, "excluded": [n.name for n in tail], "excluded_ops": ops, "frames": len(reader.paths)}


@contextlib.contextmanager
def _quiet():
    """Silence ORT quantization's prints and INFO logs (they go to the root logger)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
