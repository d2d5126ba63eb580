"""Ultralytics YOLO (v8, 11) adapter: dense class logits, DFL bins, decoded boxes, neck features.

Builds on the training-mode output of ultralytics 8.4's ``Detect`` head (a dict of ``boxes`` (B, 4*R, A), ``scores``
(B, K, A) and ``feats``) and reuses ultralytics' task-aligned assigner and detection loss for the student's own loss.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no version checks, no downloads

import torch
from torch import Tensor

from ..losses import dfl_expectation
from .base import Assignment, DetectorAdapter, DetOutputs, ModelError
from .registry import register_family

# ultralytics' default loss gains (box, cls, dfl) and training hyper-parameters the loss reads
LOSS_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}


def _ultralytics():
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import v8DetectionLoss
    from ultralytics.utils.tal import make_anchors

    return DetectionModel, v8DetectionLoss, make_anchors


def _arch_from_name(name: str, width: float | None = None, depth: float | None = None):
    """``yolov8n.yaml`` -> the ultralytics model dict, optionally with custom width/depth multipliers."""
    from ultralytics.nn.tasks import yaml_model_load

    try:
        cfg = yaml_model_load(name)
    except FileNotFoundError:
        raise ModelError(f"unknown YOLO architecture '{name}' (expected e.g. yolov8n.yaml, yolo11s.yaml)") from None
    if width is not None or depth is not None:
        scale = cfg.get("scale") or next(iter(cfg.get("scales", {"n": [0.33, 0.25, 1024]})))
        d0, w0, max_ch = cfg["scales"][scale]
        cfg["scales"] = {scale: [depth if depth is not None else d0, width if width is not None else w0, max_ch]}
    return cfg


@register_family("yolo", matches=lambda name: name.startswith("yolo"), example="yolov8n.yaml, yolo11s.yaml")
class YoloAdapter(DetectorAdapter):
    family = "yolo"

    def __init__(self, model, class_names: list[str], arch: str | dict):
        super().__init__()
        head = model.model[-1]
        if getattr(head, "one2one_cv2", None) is not None or head.reg_max <= 1:
            raise ModelError(
                "YOLO26-style end-to-end heads (no DFL, one-to-one branch) are not supported yet: use a YOLOv8/YOLO11 model"
            )
        if head.nc != len(class_names):
            raise ModelError(f"model has {head.nc} classes but the class list has {len(class_names)}: {class_names}")
        model.args = SimpleNamespace(**LOSS_GAINS)
        self.model = model
        self.arch = arch
        self.class_names = list(class_names)
        self.strides = [int(s) for s in head.stride.tolist()]
        self.reg_max = int(head.reg_max)
        self._criterion = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_name(
        cls, name: str, class_names: list[str], width: float | None = None, depth: float | None = None
    ) -> "YoloAdapter":
        DetectionModel, _, _ = _ultralytics()
        cfg = _arch_from_name(name, width, depth)
        model = DetectionModel(cfg, nc=len(class_names), verbose=False)
        arch = {"name": name, "width": width, "depth": depth}
        return cls(model, class_names, arch)

    @classmethod
    def from_ultralytics_checkpoint(cls, path: str | Path) -> "YoloAdapter":
        """Load an ultralytics ``.pt`` (``ema`` weights if present, else ``model``)."""
        from ..checkpoint import CheckpointError, torch_load

        try:
            ck = torch_load(path)  # allowlisted unpickling: never runs code from the file
        except CheckpointError as e:
            raise ModelError(str(e)) from None
        model = (ck.get("ema") or ck.get("model")) if isinstance(ck, dict) else None
        if model is None or type(model).__name__ != "DetectionModel":
            raise ModelError(f"{path}: not an ultralytics detection checkpoint (got {type(model).__name__})")
        names = model.names if isinstance(model.names, list) else [model.names[i] for i in sorted(model.names)]
        arch = {"name": model.yaml.get("yaml_file", "yolo"), "yaml": model.yaml}
        adapter = cls(model.float(), names, arch)
        imgsz = (ck.get("train_args") or {}).get("imgsz")
        adapter.imgsz = imgsz if isinstance(imgsz, int) else None
        return adapter

    def arch_spec(self) -> dict:
        """What is needed to rebuild the network before loading a state dict."""
        return dict(self.arch) if isinstance(self.arch, dict) else {"name": self.arch}

    @classmethod
    def from_spec(cls, spec: dict, class_names: list[str]) -> "YoloAdapter":
        if "yaml" in spec:  # an architecture that came from an ultralytics checkpoint
            DetectionModel, _, _ = _ultralytics()
            model = DetectionModel(dict(spec["yaml"]), nc=len(class_names), verbose=False)
            return cls(model, class_names, spec)
        return cls.from_name(spec["name"], class_names, spec.get("width"), spec.get("depth"))

    # ------------------------------------------------------------------ forward
    def forward(self, img: Tensor) -> DetOutputs:
        _, _, make_anchors = _ultralytics()
        preds = self.model(img)
        preds = preds[1] if isinstance(preds, tuple) else preds  # eval mode returns (decoded, raw dict)
        feats = preds["feats"]
        B = img.shape[0]
        cls_logits = preds["scores"].permute(0, 2, 1)  # (B, A, K)
        bins = preds["boxes"].permute(0, 2, 1).reshape(B, -1, 4, self.reg_max)  # (B, A, 4, R)
        anchor_points, stride_t = make_anchors(feats, self.model.model[-1].stride, 0.5)  # (A, 2) grid units, (A, 1)
        dist = dfl_expectation(bins)  # (B, A, 4) ltrb in grid units
        lt, rb = dist[..., :2], dist[..., 2:]
        boxes = torch.cat([anchor_points - lt, anchor_points + rb], -1) * stride_t  # (B, A, 4) xyxy pixels
        return DetOutputs(
            feats=list(feats),
            strides=self.strides,
            cls_logits=cls_logits,
            box_bins=bins,
            boxes=boxes,
            anchors=anchor_points * stride_t,
            anchor_strides=stride_t.squeeze(1),
            raw=preds,
        )

    # ------------------------------------------------------------------ loss
    def loss(self, out: DetOutputs, batch: dict,
             sum_across: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, dict[str, float], Assignment]:
        """ultralytics' v8 detection loss (TAL assigner, BCE + CIoU + DFL), summed and scaled by batch size as in
        ultralytics' trainer."""
        if self._criterion is None or self._criterion.device != out.cls_logits.device:
            _, v8DetectionLoss, _ = _ultralytics()
            self._criterion = v8DetectionLoss(self.model)
        H, W = out.feats[0].shape[2] * self.strides[0], out.feats[0].shape[3] * self.strides[0]
        xyxy = batch["bboxes"].to(out.cls_logits.device).float()  # (M, 4) input pixels
        xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        norm = xywh / xywh.new_tensor([W, H, W, H])
        ul_batch = {
            "batch_idx": batch["batch_idx"].to(norm.device),
            "cls": batch["cls"].to(norm.device),
            "bboxes": norm,
        }
        captured: dict = {}
        hook = self._criterion.assigner.register_forward_hook(lambda m, i, o: captured.update(scores=o[2]))
        try:
            (fg_mask, _, target_boxes, _, _), parts, _ = self._criterion.get_assigned_targets_and_loss(out.raw, ul_batch)
        finally:
            hook.remove()
        B = out.cls_logits.shape[0]
        if sum_across is not None:  # several processes: normalise like one process over the global batch would
            norm_local = captured["scores"].detach().sum()  # ultralytics' per-batch normaliser (clamped at 1)
            norm_all = sum_across(norm_local)
            parts = parts * norm_local.clamp(min=1) / norm_all.clamp(min=1)  # this process's share of the global loss
            B = int(sum_across(torch.tensor(float(B), device=parts.device)))
        total = parts.sum() * B
        p = parts.detach()
        items = {"box": float(p[0]), "cls": float(p[1]), "dfl": float(p[2])}
        return total, items, Assignment(fg_mask=fg_mask.bool(), target_boxes=target_boxes)
