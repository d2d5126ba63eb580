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
from .registry import Family, families, family_of_name, register_family


def build_detector(
    name: str, class_names: list[str], width: float | None = None, depth: float | None = None
) -> DetectorAdapter:
    """A fresh detector, random weights, from the registered family whose names match: a YOLO yaml name
    (``yolov8n.yaml``, ``yolo11s.yaml``, ...), a timm backbone under a YOLOv8 head (``timm:mobilenetv3_small_100``),
    a torchvision FCOS (``fcos_resnet50_fpn``) or Faster R-CNN (``fasterrcnn_resnet50_fpn``, a teacher for dense
    students)."""
    family = family_of_name(name)
    if family is None:
        examples = "; ".join(f"{f.name}: {f.example}" for f in families().values())
        raise ModelError(f"unknown detector '{name}': expected a name of a registered family ({examples})")
    return family.adapter.from_name(name, class_names, width, depth)


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
    family = families().get(meta.get("family"))
    if family is None:
        raise ModelError(f"{path}: detector family '{meta.get('family')}' is not supported "
                         f"({', '.join(families())})")
    adapter = family.adapter.from_spec(meta["arch"], meta["class_names"])
    if meta.get("qat"):  # a quantization-aware-trained student: the same fake-quant modules before its weights
        from ..deploy.qat import prepare_qat

        prepare_qat(adapter.model, meta["qat"], silu=meta.get("qat_silu", False),  # False: files before 2026-12-07
                    ranges=meta.get("qat_ranges", "minmax"))
    missing, unexpected = adapter.model.load_state_dict(ck["model"], strict=False)
    if missing or unexpected:
        raise ModelError(f"{path}: weights do not match the architecture ({len(missing)} missing, {len(unexpected)} unexpected keys)")
    adapter.imgsz = meta.get("imgsz")  # what it was trained at: the default input size of predict
    return adapter.float().to(device)


__all__ = [
    "Assignment", "DetOutputs", "DetectorAdapter", "Family", "ModelError", "build_detector", "check_pair", "families",
    "family_of_name", "load_detector", "pair_levels", "register_family",
]
