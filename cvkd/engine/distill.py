"""The distillation terms of a detector run: loss-core functions applied to adapter outputs.

Holds the only trainable distillation parts (the 1x1 hint adapters) and aligns teacher and student anchors level by
level (by stride). Knows adapters' :class:`DetOutputs`, never a model's internals.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from ..losses import (
    HintAdapter,
    attention_masks,
    box_mask,
    cwd_loss,
    distribution_kd,
    feature_hint_levels,
    fgd_loss,
    hint_parts,
    iou_imitation,
    pkd_parts,
    sigmoid_kd,
    teacher_bounded_l2,
    teacher_score_weights,
)
from ..models import (
    Assignment,
    DetectorAdapter,
    DetOutputs,
    ModelError,
    check_pair,
    pair_levels,
)
from .config import KDConfig


def cpu_bf16_teacher(precision: str, device: torch.device, smooth: bool = True) -> bool:
    """Whether the teacher runs in bf16 on this device: ``bf16`` forces it on CPU, ``auto`` asks for a teacher whose
    outputs move smoothly with precision (``smooth``: not a two-stage detector, whose proposal choices flip) and for
    native support (avx512_bf16 / AMX, where bf16 is faster than fp32; emulated bf16 is slower)."""
    if device.type != "cpu" or precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if not smooth:
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def teacher_forward(teacher: DetectorAdapter, img: Tensor, bf16: bool) -> DetOutputs:
    """The frozen teacher's outputs, without gradients. With ``bf16`` the pass runs under CPU bf16 autocast on
    channels_last memory (call ``teacher.to(memory_format=torch.channels_last)`` once) and the outputs come back as
    contiguous fp32: for YOLOv8s at 320 px on this project's CPU ~3x faster, max score error < 0.01, feature
    error ~1 % (``benchmarks/kd_step_cost.py --teacher-pass``; without the flag it measures the whole step)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = teacher(img.contiguous(memory_format=torch.channels_last) if bf16 else img)
    if not bf16:
        return out

    def f32(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.float().contiguous()

    return dataclasses.replace(out, feats=[f32(f) for f in out.feats], cls_logits=f32(out.cls_logits),
                               box_bins=f32(out.box_bins), boxes=f32(out.boxes), anchors=f32(out.anchors),
                               anchor_strides=f32(out.anchor_strides), raw=None)


def _level_slices(sizes: list[int]) -> list[slice]:
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)
    return [slice(starts[i], starts[i + 1]) for i in range(len(sizes))]


class Distiller(nn.Module):
    """Computes the weighted KD terms ``{"logit": ..., "feature": ..., "box": ...}`` for one batch."""

    def __init__(self, cfg: KDConfig, student: DetectorAdapter, teacher: DetectorAdapter, imgsz: int):
        super().__init__()
        if not student.dense_student:
            raise ModelError(f"a {student.family} model cannot be a distillation student (no dense outputs to train); "
                             "use it as the teacher, or train it with cvkd train")
        check_pair(student, teacher)
        self.cfg = cfg
        self.pairs = pair_levels(student.strides, teacher.strides)  # [(level_s, level_t)] with equal strides
        self.feature_pairs = [p for p in self.pairs if p[0] in cfg.feature_levels]
        if cfg.feature > 0 and not self.feature_pairs:
            raise ModelError(f"kd.feature_levels {cfg.feature_levels} select no level shared with the teacher")
        if cfg.box > 0 and "ld" in cfg.box_loss and (student.reg_max != teacher.reg_max):
            raise ModelError(f"LD needs equal DFL bins: student reg_max {student.reg_max}, teacher {teacher.reg_max}")
        self.adapters = nn.ModuleList()
        if cfg.feature > 0:
            ch_s, ch_t = student.feature_channels(imgsz), teacher.feature_channels(imgsz)
            mlp = cfg.feature_adapter == "mlp"
            self.adapters.extend(HintAdapter(ch_s[ls], ch_t[lt], mlp) for ls, lt in self.feature_pairs)
        self.same_anchors = student.strides == teacher.strides

    def _align(self, out_s: DetOutputs, out_t: DetOutputs) -> tuple[Tensor, Tensor]:
        """Anchor indices of the shared levels in student and teacher order: (A',) each."""
        if self.same_anchors:
            idx = torch.arange(out_s.cls_logits.shape[1], device=out_s.cls_logits.device)
            return idx, idx
        sl_s, sl_t = _level_slices(out_s.level_sizes), _level_slices(out_t.level_sizes)
        dev = out_s.cls_logits.device
        idx_s = torch.cat([torch.arange(sl_s[ls].start, sl_s[ls].stop, device=dev) for ls, _ in self.pairs])
        idx_t = torch.cat([torch.arange(sl_t[lt].start, sl_t[lt].stop, device=dev) for _, lt in self.pairs])
        return idx_s, idx_t

    def weight_factor(self, epoch: int, epochs: int) -> float:
        if self.cfg.decay == "constant":
            return 1.0
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))

    def forward(self, out_s: DetOutputs, out_t: DetOutputs, assign: Assignment, batch: dict) -> dict[str, Tensor]:
        cfg = self.cfg
        terms: dict[str, Tensor] = {}
        idx_s, idx_t = self._align(out_s, out_t)
        B = out_s.cls_logits.shape[0]
        z_s = out_s.cls_logits[:, idx_s].reshape(-1, out_s.cls_logits.shape[-1])  # (B*A', K)
        z_t = out_t.cls_logits[:, idx_t].reshape(-1, out_t.cls_logits.shape[-1])  # (B*A', K)
        fg = assign.fg_mask[:, idx_s].reshape(-1)  # (B*A',)
        score_t = teacher_score_weights(z_t)  # (B*A',)

        if cfg.logit > 0:
            w = score_t if cfg.logit_weighting == "teacher_score" else None
            terms["logit"] = cfg.logit * sigmoid_kd(z_s, z_t, cfg.logit_t, weight=w, fg_mask=fg, bg_weight=cfg.logit_bg)

        if cfg.feature > 0:
            boxes = batch["bboxes"].to(z_s.device).float()
            bidx = batch["batch_idx"].to(z_s.device)
            level_losses, level_parts = [], []  # per-level losses; (numerator, denominator) of hint/PKD levels
            for (ls, lt), adapter in zip(self.feature_pairs, self.adapters):
                f_t = out_t.feats[lt]
                f_s = adapter(out_s.feats[ls], f_t.shape[-2:])  # (B, C_t, H_t, W_t)
                stride = out_t.strides[lt]
                if cfg.feature_loss == "cwd":
                    level_losses.append(cwd_loss(f_s, f_t, cfg.feature_t))
                elif cfg.feature_loss == "fgd":
                    m = box_mask(boxes, bidx, B, f_t.shape[-2:], stride, area_norm=True)
                    level_losses.append(fgd_loss(f_s, f_t, m, temperature=cfg.feature_t))
                else:
                    mask, fg_map = None, None
                    if cfg.feature_mask == "gt":
                        fg_map = box_mask(boxes, bidx, B, f_t.shape[-2:], stride)
                    elif cfg.feature_mask == "attention":
                        mask = attention_masks(f_t, cfg.feature_t)[0]
                    elif cfg.feature_mask == "teacher_score":  # the teacher's confidence per cell of this level
                        sl = _level_slices(out_t.level_sizes)[lt]
                        mask = teacher_score_weights(out_t.cls_logits[:, sl]).reshape(B, *f_t.shape[-2:])  # (B, H, W)
                    if cfg.feature_loss == "hint":
                        parts = hint_parts(f_s, f_t, mask, fg_map, cfg.feature_bg)
                    else:
                        parts = pkd_parts(f_s, f_t, mask if fg_map is None else fg_map, cfg.pkd_stats)
                    level_parts.append(parts)
                    level_losses.append(parts[0] / parts[1].clamp_min(1e-12))
            joint = cfg.feature_norm == "joint" and level_parts
            feature = feature_hint_levels(level_parts) if joint else torch.stack(level_losses).mean()
            terms["feature"] = cfg.feature * feature

        if cfg.box > 0:
            region = fg.float() if cfg.box_region == "fg" else score_t
            box = z_s.new_zeros((), dtype=torch.float32)
            if "ld" in cfg.box_loss:
                if out_s.box_bins is None or out_t.box_bins is None:
                    raise ModelError("LD needs DFL bin outputs from both detectors")
                R = out_s.box_bins.shape[-1]
                bins_s = out_s.box_bins[:, idx_s].reshape(-1, 4, R)  # (B*A', 4, R)
                bins_t = out_t.box_bins[:, idx_t].reshape(-1, 4, R)
                box = box + distribution_kd(bins_s, bins_t, cfg.box_t, weight=region)
            boxes_s = out_s.boxes[:, idx_s].reshape(-1, 4)  # (B*A', 4) pixels
            boxes_t = out_t.boxes[:, idx_t].reshape(-1, 4)
            if "iou" in cfg.box_loss:
                box = box + iou_imitation(boxes_s, boxes_t, weight=region)
            if cfg.box_loss == "bounded":
                stride = out_s.anchor_strides[idx_s].repeat(B)[:, None]  # (B*A', 1)
                gt = assign.target_boxes[:, idx_s].reshape(-1, 4)
                box = box + teacher_bounded_l2(
                    boxes_s / stride, boxes_t / stride, gt / stride, cfg.box_margin, weight=fg.float()
                )
            terms["box"] = cfg.box * box
        return terms
