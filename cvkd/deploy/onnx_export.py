"""Detector -> ONNX FP32 (static ``(1, 3, S, S)`` input), checked with ``onnx.checker``, optionally slimmed.

Input ``images``: float32 RGB in [0, 1], letterboxed like evaluation (long side resized to S, gray 114 padding).
Outputs, ``full`` variant: ``predictions`` (1, A, 4 + K) xyxy input pixels + sigmoid scores, or with NMS baked in
``detections`` (N, 6) ``x1, y1, x2, y2, score, label``. ``raw`` variant: ``box_s{stride}`` (1, 4R, H, W) DFL bin logits
and ``cls_s{stride}`` (1, K, H, W) class logits per level (YOLO26: l/t/r/b distances, (1, 4, H, W)). ``e2e`` variant
(YOLO26): ``detections`` (1, k, 6), the NMS-free top-k of the one-to-one branch. The model's metadata (``metadata_props``) records the
variant, class names, strides, imgsz, reg_max and the NMS settings, read back by :func:`read_metadata`.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from ..models.base import DetectorAdapter
from .errors import ExportError
from .wrapper import E2EHead, FullHead, RawHead

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 11, 19, 17  # 11: NonMaxSuppression/Resize; 19: newest opset tested here
VARIANTS = ("full", "raw", "e2e")


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")


def check_imgsz(imgsz: int, strides: list[int]) -> None:
    step = max(strides)
    if imgsz <= 0 or imgsz % step:
        raise ExportError(f"imgsz must be a positive multiple of {step} (the model's largest stride), got {imgsz}")


def output_names(adapter: DetectorAdapter, variant: str, nms: bool) -> list[str]:
    if variant == "raw":
        return [f"{kind}_s{s}" for s in adapter.strides for kind in ("box", "cls")]
    return ["detections" if nms or variant == "e2e" else "predictions"]


def build_wrapper(adapter: DetectorAdapter, imgsz: int, variant: str = "full", nms: bool = False,
                  conf: float = 0.001, iou: float = 0.7, max_det: int = 300) -> torch.nn.Module:
    """The traced module: a float32 CPU eval-mode copy of ``adapter`` under :class:`FullHead` / :class:`RawHead`."""
    if variant not in VARIANTS:
        raise ExportError(f"unknown ONNX variant '{variant}': expected one of {', '.join(VARIANTS)}")
    if nms and variant != "full":
        raise ExportError("NMS can only be baked into the 'full' variant")
    check_imgsz(imgsz, adapter.strides)
    model = copy.deepcopy(adapter).float().cpu().eval()
    if variant == "full":
        return FullHead(model, imgsz, nms, conf, iou, max_det).eval()
    return (E2EHead(model, imgsz, max_det) if variant == "e2e" else RawHead(model)).eval()


def export_onnx(adapter: DetectorAdapter, path: str | Path, imgsz: int, variant: str = "full",
                opset: int = DEFAULT_OPSET, nms: bool = False, slim: bool = True, conf: float = 0.001,
                iou: float = 0.7, max_det: int = 300, extra_meta: dict[str, Any] | None = None) -> Path:
    """Trace ``adapter`` to ``path``; returns the path. Raises :class:`ExportError` (one line) on a bad request."""
    check_opset(opset)
    wrapper = build_wrapper(adapter, imgsz, variant, nms, conf, iou, max_det)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, imgsz, imgsz)  # (1, 3, S, S)
    names = output_names(adapter, variant, nms)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter deprecation warnings
        try:
            torch.onnx.export(wrapper, (dummy,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                              output_names=names, do_constant_folding=True)
        except Exception as e:  # an op the opset cannot express, ...
            first = str(e).splitlines()[0][:200] if str(e) else ""
            raise ExportError(f"ONNX export at opset {opset} failed: {type(e).__name__}: {first}") from None
    model = onnx.load(str(path))
    if slim:
        model = _slim(model)
    meta = {"cvkd_variant": variant, "class_names": list(adapter.class_names), "strides": list(adapter.strides),
            "imgsz": imgsz, "reg_max": int(getattr(adapter, "reg_max", None) or 0), "nms": nms, "conf": conf,
            "iou": iou, "max_det": max_det, "precision": "fp32", "family": adapter.family, **(extra_meta or {})}
    set_metadata(model, meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim (constant folding, dead nodes, op fusion) when installed; the model unchanged otherwise."""
    try:
        import onnxslim
    except ImportError:
        return model
    with contextlib.redirect_stdout(io.StringIO()):
        return onnxslim.slim(model)


def set_metadata(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Write ``meta`` as JSON values into ``metadata_props`` (replacing keys already there)."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: json.dumps(v) for k, v in meta.items()})
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def read_metadata(model: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """The ``metadata_props`` written by :func:`export_onnx`, JSON-decoded (non-JSON values kept as strings)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out
