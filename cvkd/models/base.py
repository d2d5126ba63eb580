"""The adapter interface: what a detector must expose for distillation and evaluation.

A detector family gets one small file (``yolo.py``, ...) with a subclass of :class:`DetectorAdapter`. The trainer and
the distillation terms only ever see :class:`DetOutputs`, never a model's internals.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from ..errors import ModelError  # noqa: F401 (re-exported)


@dataclass
class DetOutputs:
    """Dense outputs of a one-stage detector for a batch of B images, A anchor points over all levels."""

    feats: list[Tensor]  # per level (B, C_l, H_l, W_l), the maps that feed the head
    strides: list[int]  # per level, input pixels per cell
    cls_logits: Tensor  # (B, A, K) raw class logits (sigmoid heads)
    box_bins: Tensor | None  # (B, A, 4, R) per-side DFL bin logits, None for heads without DFL
    boxes: Tensor  # (B, A, 4) decoded xyxy boxes in input pixels
    anchors: Tensor  # (A, 2) anchor centres in input pixels
    anchor_strides: Tensor  # (A,) stride of each anchor
    raw: Any = field(default=None, repr=False)  # the model's native output, for its own loss
    cls_logits_o2o: Tensor | None = None  # (B, A, K) end-to-end heads (YOLO26): the one-to-one branch's logits
    boxes_o2o: Tensor | None = None  # (B, A, 4) and its xyxy boxes in input pixels

    @property
    def level_sizes(self) -> list[int]:
        return [f.shape[2] * f.shape[3] for f in self.feats]


@dataclass
class Assignment:
    """What the student's own loss assigned, reused by KD terms that need foreground anchors or GT boxes."""

    fg_mask: Tensor  # (B, A) bool, anchors assigned to an object
    target_boxes: Tensor  # (B, A, 4) xyxy GT box of each anchor in input pixels (meaningful where fg)


class DetectorAdapter(nn.Module):
    """Base class. Subclasses set ``model``, ``class_names``, ``strides`` and implement ``forward`` and ``loss``."""

    family: str = "base"
    class_names: list[str]
    strides: list[int]
    dense_student: bool = True  # False: forward() has no trainable dense outputs, so it can teach but not be distilled
    teacher_assignment: bool = False  # True: loss(assign_from=) lets a teacher's predictions drive the assignment
    bf16_teacher: bool = True  # outputs move smoothly with precision (kd.teacher_precision=auto may use bf16)
    imgsz: int | None = None  # the input size it was trained at, when the checkpoint says (predict's default)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, img: Tensor) -> DetOutputs:  # img (B, 3, S, S) RGB in [0, 1]
        raise NotImplementedError

    def loss(self, out: DetOutputs, batch: dict, sum_across: Callable[[Tensor], Tensor] | None = None,
             assign_from: DetOutputs | None = None) -> tuple[Tensor, dict[str, float], Assignment]:
        """The detector's own training loss on ``batch`` (cvkd collate format), its items, and the assignment.
        ``sum_across`` (under torchrun) sums a tensor over processes: normalise over the global batch with it.
        ``assign_from``: another detector's outputs on the same anchors whose predictions the label assigner scores
        instead of this one's (label assignment distillation; adapters with ``teacher_assignment``)."""
        raise NotImplementedError

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before each epoch (0-based): for losses with an epoch schedule (YOLO26's E2E)."""

    def fold_batchnorm(self) -> int:
        """Fold each BatchNorm into the convolution before it, for a frozen eval-mode model (a teacher): the same
        outputs up to float rounding, one pass over memory fewer per layer. Returns how many were folded; families
        without a known conv -> BN -> activation block fold none."""
        return 0

    def feature_channels(self, imgsz: int = 64) -> list[int]:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            p = next(self.parameters())
            out = self(torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype))
        self.train(was_training)
        return [f.shape[1] for f in out.feats]

    @torch.no_grad()
    def predict(
        self, img: Tensor, conf: float = 0.001, iou: float = 0.7, max_det: int = 300, out: DetOutputs | None = None
    ) -> list[dict[str, Tensor]]:
        """Post-NMS detections per image: ``boxes`` (n, 4) xyxy input pixels, ``scores`` (n,), ``labels`` (n,).

        Multi-label like ultralytics' val: every (anchor, class) pair above ``conf`` is a candidate; class-aware NMS.
        """
        out = out if out is not None else self(img)
        scores_all = out.cls_logits.float().sigmoid()  # (B, A, K)
        results = []
        for b in range(scores_all.shape[0]):
            anchor_idx, cls_idx = (scores_all[b] > conf).nonzero(as_tuple=True)
            scores = scores_all[b, anchor_idx, cls_idx]
            if scores.numel() > 30000:  # bound NMS work on an untrained model
                top = scores.topk(30000).indices
                anchor_idx, cls_idx, scores = anchor_idx[top], cls_idx[top], scores[top]
            boxes = out.boxes[b, anchor_idx].float()  # (n, 4)
            keep = torchvision.ops.batched_nms(boxes, scores, cls_idx, iou)[:max_det]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": cls_idx[keep]})
        return results


def pair_levels(strides_s: list[int], strides_t: list[int]) -> list[tuple[int, int]]:
    """Match student and teacher pyramid levels by stride: [(level_s, level_t), ...]; one-line error if none match."""
    pairs = [(i, strides_t.index(s)) for i, s in enumerate(strides_s) if s in strides_t]
    if not pairs:
        raise ModelError(
            f"teacher and student cannot be paired: no common feature stride (student {strides_s}, teacher {strides_t})"
        )
    return pairs


def check_pair(student: DetectorAdapter, teacher: DetectorAdapter) -> None:
    """Refuse a teacher whose classes differ from the student's (dense class KD would be silently wrong)."""
    if student.class_names != teacher.class_names:
        raise ModelError(
            f"teacher classes {teacher.class_names} differ from student classes {student.class_names}: "
            "train the teacher on the same class map"
        )
    pair_levels(student.strides, teacher.strides)
