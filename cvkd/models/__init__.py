"""Detector adapters. ``build_detector`` makes a fresh model; ``load_detector`` reads a cvkd or ultralytics checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from .base import (
    Assignment,
    DetectorAdapter,
    DetOutputs,
    ModelError,
    check_pair,
    pair_levels,
)

FAMILIES = ("yolo", "timm", "torchvision", "rcnn")


def _adapter_class(family: str) -> type[DetectorAdapter] | None:
    """The adapter class of a checkpoint's ``meta["family"]`` (imported lazily), None if unknown."""
    if family == "yolo":
        from .yolo import YoloAdapter

        return YoloAdapter
    if family == "timm":
        from .timm_det import TimmAdapter

        return TimmAdapter
    if family == "torchvision":
        from .torchvision_det import TorchvisionAdapter

        return TorchvisionAdapter
    if family == "rcnn":
        from .rcnn_det import RcnnAdapter

        return RcnnAdapter
    return None


def build_detector(
    name: str, class_names: list[str], width: float | None = None, depth: float | None = None
) -> DetectorAdapter:
    """A fresh detector, random weights: a YOLO yaml name (``yolov8n.yaml``, ``yolo11s.yaml``, ...), a timm backbone
    under a YOLOv8 head (``timm:mobilenetv3_small_100``), a torchvision FCOS (``fcos_resnet50_fpn``) or Faster R-CNN
    (``fasterrcnn_resnet50_fpn``, a teacher for dense students)."""
    from .rcnn_det import is_rcnn_name
    from .torchvision_det import PREFIXES as TORCHVISION_PREFIXES

    if name.startswith("yolo"):
        return _adapter_class("yolo").from_name(name, class_names, width, depth)
    if name.startswith("timm:"):
        return _adapter_class("timm").from_name(name, class_names, width, depth)
    if is_rcnn_name(name):
        return _adapter_class("rcnn").from_name(name, class_names, width, depth)
    if name.startswith(TORCHVISION_PREFIXES):
        return _adapter_class("torchvision").from_name(name, class_names, width, depth)
    raise ModelError(
        f"unknown detector '{name}': expected a YOLO yaml name (yolov8n.yaml, yolo11s.yaml, ...), "
        "timm:<backbone> (timm:mobilenetv3_small_100), a torchvision FCOS (fcos_resnet50_fpn) or Faster R-CNN "
        "(fasterrcnn_resnet50_fpn)"
    )


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> DetectorAdapter:
    """A detector from a cvkd checkpoint (``kind: detector``) or an ultralytics ``.pt``."""
    from .yolo import YoloAdapter

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint file not found")
    try:
        ck = load_checkpoint(path, kind="detector")
    except CheckpointError as e:
        if "no cvkd header" in str(e):  # a readable torch file of another format: try ultralytics
            adapter = YoloAdapter.from_ultralytics_checkpoint(path)  # raises its own one-line ModelError
            return adapter.to(device)
        raise ModelError(str(e)) from None
    meta = ck["meta"]
    cls = _adapter_class(meta.get("family"))
    if cls is None:
        raise ModelError(f"{path}: detector family '{meta.get('family')}' is not supported ({', '.join(FAMILIES)})")
    adapter = cls.from_spec(meta["arch"], meta["class_names"])
    missing, unexpected = adapter.model.load_state_dict(ck["model"], strict=False)
    if missing or unexpected:
        raise ModelError(f"{path}: weights do not match the architecture ({len(missing)} missing, {len(unexpected)} unexpected keys)")
    adapter.imgsz = meta.get("imgsz")  # what it was trained at: the default input size of predict
    return adapter.float().to(device)


__all__ = [
    "Assignment", "DetOutputs", "DetectorAdapter", "FAMILIES", "ModelError", "build_detector", "check_pair",
    "load_detector", "pair_levels",
]
