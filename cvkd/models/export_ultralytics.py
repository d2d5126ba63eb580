"""Write a cvkd YOLO checkpoint in ultralytics' own ``.pt`` layout, so ultralytics tools (``yolo val``, its built-in
``distill_model=`` distillation) can use a teacher trained by cvkd: the benchmark compares both tools on one teacher."""
from __future__ import annotations

import copy
import datetime
from pathlib import Path

import torch

from . import load_detector
from .base import ModelError


def to_ultralytics_checkpoint(src: str | Path, dst: str | Path, imgsz: int = 640) -> Path:
    adapter = load_detector(src)
    if adapter.family != "yolo":
        raise ModelError(f"{src}: only YOLO checkpoints can be written in ultralytics' format")
    import ultralytics

    model = copy.deepcopy(adapter.model).float().cpu()
    model.names = {i: n for i, n in enumerate(adapter.class_names)}
    model.args = {"imgsz": imgsz, "task": "detect"}
    for p in model.parameters():
        p.requires_grad_(False)
    ckpt = {"date": datetime.datetime.now().isoformat(), "version": ultralytics.__version__, "model": model,
            "ema": None, "train_args": {"imgsz": imgsz, "task": "detect", "nc": len(adapter.class_names)},
            "epoch": -1}
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(dst)
    return dst
