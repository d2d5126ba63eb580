"""The distillation terms of a detector run: loss-core functions applied to adapter outputs.

Each term is a small function in a table (``KD_TERMS``: logit, feature, box; ``FEATURE_LOSSES`` and ``BOX_LOSSES``
for their variants, ``FEATURE_MASKS`` for the hint/PKD masks) returning a numerator and a denominator; the config
check (:func:`check_kd_config`) reads the same tables, so every legal combination is declared once. The
:class:`Distiller` holds the only trainable distillation parts (the 1x1 hint adapters) and aligns teacher and student
anchors level by level (by stride). It knows adapters' :class:`DetOutputs`, never a model's internals.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
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
    # oneDNN also reports bf16 "supported" on AVX-512 CPUs that only emulate it: there the teacher's pass was 1.9x
    # slower than fp32 (YOLOv8s, batch 16 at 320 px: 3.45 s vs 1.83 s, kd_step_cost.py --teacher-pass), so ask for
    # the instructions themselves
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(native and torch.backends.mkldnn.is_available())
    except (AttributeError, RuntimeError):
        return False


def teacher_forward(teacher: DetectorAdapter, img: Tensor, bf16: bool) -> DetOutputs:
    """The frozen teacher's outputs, without gradients. With ``bf16`` the pass runs under CPU bf16 autocast on
    channels_last memory (call ``teacher.to(memory_format=torch.channels_last)`` once) and the outputs come back as
    contiguous fp32: for YOLOv8s at 320 px on a CPU with native bf16 ~3x faster, max score error < 0.01, feature
    error ~1 % (``benchmarks/kd_step_cost.py --teacher-pass``; without the flag it measures the whole step)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = teacher(img.contiguous(memory_format=torch.channels_last) if bf16 else img)
    if not bf16:
        return out

    def f32(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.float().contiguous()

    return dataclasses.replace(out, feats=[f32(f) for f in out.feats], cls_logits=f32(out.cls_logits),
                               box_bins=f32(out.box_bins), boxes=f32(out.boxes), anchors=f32(out.anchors),
                               anchor_strides=f32(out.anchor_strides), raw=None,
                               cls_logits_o2o=f32(out.cls_logits_o2o), boxes_o2o=f32(out.boxes_o2o))


def _level_slices(sizes: list[int]) -> list[slice]:
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)
    return [slice(starts[i], starts[i + 1]) for i in range(len(sizes))]


@dataclass
class KDInputs:
    """What every KD term of one batch sees: outputs, assignment and the aligned anchors (A' = shared-level anchors)."""

    cfg: KDConfig
    out_s: DetOutputs
    out_t: DetOutputs
    assign: Assignment
    batch: dict
    idx_s: Tensor  # (A',) student anchor indices
    idx_t: Tensor  # (A',) teacher anchor indices, same order
    z_s: Tensor  # (B*A', K) student class logits
    z_t: Tensor  # (B*A', K) teacher class logits
    fg: Tensor  # (B*A',) anchors assigned to a ground-truth object
    score_t: Tensor  # (B*A',) the teacher's highest class probability

    @property
    def B(self) -> int:
        return self.out_s.cls_logits.shape[0]


Parts = tuple[Tensor, Tensor]  # (numerator, denominator): the term is num / den; levels may pool them (joint)


def _one(t: Tensor) -> Tensor:
    return t.new_ones(())


# --- spatial masks of the hint / PKD feature terms: (inputs, teacher level, f_t) -> (weight map, foreground map) ----

def _mask_all(x: KDInputs, lt: int, f_t: Tensor):
    return None, None


def _mask_gt(x: KDInputs, lt: int, f_t: Tensor):
    boxes, bidx = x.batch["bboxes"].to(f_t.device).float(), x.batch["batch_idx"].to(f_t.device)
    return None, box_mask(boxes, bidx, x.B, f_t.shape[-2:], x.out_t.strides[lt])  # (B, H, W)


def _mask_attention(x: KDInputs, lt: int, f_t: Tensor):
    return attention_masks(f_t, x.cfg.feature_t)[0], None  # (B, H, W)


def _mask_teacher_score(x: KDInputs, lt: int, f_t: Tensor):
    sl = _level_slices(x.out_t.level_sizes)[lt]  # the teacher's confidence per cell of this level
    return teacher_score_weights(x.out_t.cls_logits[:, sl]).reshape(x.B, *f_t.shape[-2:]), None  # (B, H, W)


FEATURE_MASKS: dict[str, Callable] = {"all": _mask_all, "gt": _mask_gt, "attention": _mask_attention,
                                      "teacher_score": _mask_teacher_score}


# --- feature losses, one pyramid level: (inputs, f_s adapted, f_t, teacher level, weight map, fg map) -> (num, den)

def _feature_hint(x: KDInputs, f_s: Tensor, f_t: Tensor, lt: int, mask, fg_map) -> Parts:
    return hint_parts(f_s, f_t, mask, fg_map, x.cfg.feature_bg)


def _feature_pkd(x: KDInputs, f_s: Tensor, f_t: Tensor, lt: int, mask, fg_map) -> Parts:
    return pkd_parts(f_s, f_t, mask if fg_map is None else fg_map, x.cfg.pkd_stats)


def _feature_cwd(x: KDInputs, f_s: Tensor, f_t: Tensor, lt: int, mask, fg_map) -> Parts:
    loss = cwd_loss(f_s, f_t, x.cfg.feature_t)
    return loss, _one(loss)


def _feature_fgd(x: KDInputs, f_s: Tensor, f_t: Tensor, lt: int, mask, fg_map) -> Parts:
    boxes, bidx = x.batch["bboxes"].to(f_t.device).float(), x.batch["batch_idx"].to(f_t.device)
    m = box_mask(boxes, bidx, x.B, f_t.shape[-2:], x.out_t.strides[lt], area_norm=True)  # its own GT mask
    loss = fgd_loss(f_s, f_t, m, temperature=x.cfg.feature_t)
    return loss, _one(loss)


@dataclass(frozen=True)
class FeatureLoss:
    fn: Callable[..., Parts]
    masks: tuple[str, ...]  # the kd.feature_mask values it takes
    joint: bool  # its levels can be pooled into one weighted mean (kd.feature_norm=joint)


FEATURE_LOSSES: dict[str, FeatureLoss] = {
    "hint": FeatureLoss(_feature_hint, tuple(FEATURE_MASKS), joint=True),
    "pkd": FeatureLoss(_feature_pkd, tuple(FEATURE_MASKS), joint=True),
    "cwd": FeatureLoss(_feature_cwd, ("all",), joint=False),
    "fgd": FeatureLoss(_feature_fgd, ("all",), joint=False),  # FGD brings its own foreground/background split
}


# --- box losses: (inputs, region weight (B*A',)) -> loss ------------------------------------------------------------

def _box_ld(x: KDInputs, region: Tensor) -> Tensor:
    if x.out_s.box_bins is None or x.out_t.box_bins is None:
        raise ModelError("LD needs DFL bin outputs from both detectors")
    R = x.out_s.box_bins.shape[-1]
    bins_s = x.out_s.box_bins[:, x.idx_s].reshape(-1, 4, R)  # (B*A', 4, R)
    bins_t = x.out_t.box_bins[:, x.idx_t].reshape(-1, 4, R)
    return distribution_kd(bins_s, bins_t, x.cfg.box_t, weight=region)


def _box_iou(x: KDInputs, region: Tensor) -> Tensor:
    boxes_s = x.out_s.boxes[:, x.idx_s].reshape(-1, 4)  # (B*A', 4) pixels
    boxes_t = x.out_t.boxes[:, x.idx_t].reshape(-1, 4)
    return iou_imitation(boxes_s, boxes_t, weight=region)


def _box_bounded(x: KDInputs, region: Tensor) -> Tensor:
    """Chen et al. 2017 on assigned anchors only (it needs the ground-truth box), in stride units."""
    stride = x.out_s.anchor_strides[x.idx_s].repeat(x.B)[:, None]  # (B*A', 1)
    boxes_s = x.out_s.boxes[:, x.idx_s].reshape(-1, 4) / stride  # (B*A', 4)
    boxes_t = x.out_t.boxes[:, x.idx_t].reshape(-1, 4) / stride
    gt = x.assign.target_boxes[:, x.idx_s].reshape(-1, 4) / stride
    return teacher_bounded_l2(boxes_s, boxes_t, gt, x.cfg.box_margin, weight=x.fg.float())


BOX_LOSSES: dict[str, Callable[[KDInputs, Tensor], Tensor]] = {"ld": _box_ld, "iou": _box_iou,
                                                               "bounded": _box_bounded}


# --- the KD terms: (distiller, inputs) -> (num, den) --------------------------------------------------------------

def _logit_term(d: "Distiller", x: KDInputs) -> Parts:
    """On the one-to-many logits (what trains the neck); with kd.logit_branch=both also on the student's one-to-one
    branch (YOLO26), against the teacher's one-to-one logits where it has them, else its only ones: the mean of the
    two."""
    w = x.score_t if x.cfg.logit_weighting == "teacher_score" else None
    loss = sigmoid_kd(x.z_s, x.z_t, x.cfg.logit_t, weight=w, fg_mask=x.fg, bg_weight=x.cfg.logit_bg)
    if x.cfg.logit_branch == "both":
        K = x.z_s.shape[-1]
        z_s = x.out_s.cls_logits_o2o[:, x.idx_s].reshape(-1, K)  # (B*A', K)
        t = x.out_t.cls_logits_o2o if x.out_t.cls_logits_o2o is not None else x.out_t.cls_logits
        z_t = t[:, x.idx_t].reshape(-1, K)
        loss = 0.5 * (loss + sigmoid_kd(z_s, z_t, x.cfg.logit_t, weight=w, fg_mask=x.fg, bg_weight=x.cfg.logit_bg))
    return loss, _one(loss)


def _feature_term(d: "Distiller", x: KDInputs) -> Parts:
    spec = FEATURE_LOSSES[x.cfg.feature_loss]
    parts = []
    for level, ((ls, lt), adapter) in enumerate(zip(d.feature_pairs, d.adapters)):
        f_t = x.out_t.feats[lt]
        f_s = adapter(x.out_s.feats[ls], f_t.shape[-2:])  # (B, C_t, H_t, W_t)
        mask, fg_map = FEATURE_MASKS[x.cfg.feature_mask](x, lt, f_t)  # (B, H, W) or None each
        num, den = spec.fn(x, f_s, f_t, lt, mask, fg_map)
        for hook in d.hooks:  # benchmarks trace a term here (see benchmarks/feature_levels.py)
            hook({"term": "feature", "loss": x.cfg.feature_loss, "level": level, "num": num, "den": den, "f_s": f_s,
                  "f_t": f_t, "mask": mask, "fg_map": fg_map})
        parts.append((num, den))
    if x.cfg.feature_norm == "joint":
        return feature_hint_levels(parts), _one(parts[0][0])
    loss = torch.stack([n / dn.clamp_min(1e-12) for n, dn in parts]).mean()
    return loss, _one(loss)


def _box_term(d: "Distiller", x: KDInputs) -> Parts:
    region = x.fg.float() if x.cfg.box_region == "fg" else x.score_t
    loss = sum(BOX_LOSSES[name](x, region) for name in x.cfg.box_loss.split("+"))
    return loss, _one(loss)


KD_TERMS: dict[str, Callable[["Distiller", KDInputs], Parts]] = {"logit": _logit_term, "feature": _feature_term,
                                                                 "box": _box_term}


def check_kd_config(cfg: KDConfig) -> None:
    """The combinations the tables above allow; one line for any other."""
    spec = FEATURE_LOSSES[cfg.feature_loss]
    if cfg.feature > 0 and cfg.feature_mask not in spec.masks:
        takes = [n for n, f in FEATURE_LOSSES.items() if cfg.feature_mask in f.masks]
        raise ConfigError(f"kd.feature_mask={cfg.feature_mask} does not apply to kd.feature_loss={cfg.feature_loss} "
                          f"(it applies to: {', '.join(takes)})")
    if cfg.feature_norm == "joint" and not spec.joint:
        joint = [n for n, f in FEATURE_LOSSES.items() if f.joint]
        raise ConfigError(f"kd.feature_norm=joint applies to kd.feature_loss={' or '.join(joint)}, "
                          f"not {cfg.feature_loss}")
    unknown = [n for n in cfg.box_loss.split("+") if n not in BOX_LOSSES]
    if unknown:
        raise ConfigError(f"kd.box_loss={cfg.box_loss}: unknown part(s) {unknown} (parts: {', '.join(BOX_LOSSES)})")


class Distiller(nn.Module):
    """Computes the weighted KD terms ``{"logit": ..., "feature": ..., "box": ...}`` for one batch."""

    def __init__(self, cfg: KDConfig, student: DetectorAdapter, teacher: DetectorAdapter, imgsz: int):
        super().__init__()
        if not student.dense_student:
            raise ModelError(f"a {student.family} model cannot be a distillation student (no dense outputs to train); "
                             "use it as the teacher, or train it with cvkd train")
        check_pair(student, teacher)
        check_kd_config(cfg)
        self.cfg = cfg
        self.pairs = pair_levels(student.strides, teacher.strides)  # [(level_s, level_t)] with equal strides
        self.feature_pairs = [p for p in self.pairs if p[0] in cfg.feature_levels]
        if cfg.feature > 0 and not self.feature_pairs:
            raise ModelError(f"kd.feature_levels {cfg.feature_levels} select no level shared with the teacher")
        if cfg.box > 0 and "ld" in cfg.box_loss.split("+"):
            for role, m in (("student", student), ("teacher", teacher)):
                if not getattr(m, "reg_max", None):
                    raise ModelError(f"kd.box_loss={cfg.box_loss}: LD distils DFL bins, and the {role} ({m.family}) has "
                                     "none: use kd.box_loss=iou or bounded")
            if student.reg_max != teacher.reg_max:
                raise ModelError(f"LD needs equal DFL bins: student reg_max {student.reg_max}, "
                                 f"teacher {teacher.reg_max}")
        if cfg.assign == "teacher":
            if not student.teacher_assignment:
                raise ModelError(f"kd.assign=teacher: a {student.family} student assigns its own labels (YOLO students "
                                 "score a teacher's predictions)")
            if student.strides != teacher.strides:
                raise ModelError(f"kd.assign=teacher needs the teacher's anchors: strides {student.strides} (student) "
                                 f"vs {teacher.strides} (teacher)")
        if cfg.logit_branch == "both" and not getattr(student, "end2end", False):
            raise ModelError("kd.logit_branch=both needs a student with a one-to-one branch (YOLO26)")
        self.adapters = nn.ModuleList()
        if cfg.feature > 0:
            ch_s, ch_t = student.feature_channels(imgsz), teacher.feature_channels(imgsz)
            for ls, lt in self.feature_pairs:
                if cfg.feature_adapter == "none" and ch_s[ls] != ch_t[lt]:
                    raise ModelError(f"kd.feature_adapter=none needs the teacher's channels: student level {ls} has "
                                     f"{ch_s[ls]}, teacher level {lt} {ch_t[lt]} (use conv or mlp)")
                self.adapters.append(HintAdapter(ch_s[ls], ch_t[lt], cfg.feature_adapter))
        self.same_anchors = student.strides == teacher.strides
        self.hooks: list[Callable[[dict], None]] = []  # called with each feature level's parts (tracing)

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
        idx_s, idx_t = self._align(out_s, out_t)
        z_s = out_s.cls_logits[:, idx_s].reshape(-1, out_s.cls_logits.shape[-1])  # (B*A', K)
        z_t = out_t.cls_logits[:, idx_t].reshape(-1, out_t.cls_logits.shape[-1])  # (B*A', K)
        x = KDInputs(self.cfg, out_s, out_t, assign, batch, idx_s, idx_t, z_s, z_t,
                     fg=assign.fg_mask[:, idx_s].reshape(-1), score_t=teacher_score_weights(z_t))
        terms = {}
        for name, term in KD_TERMS.items():
            weight = getattr(self.cfg, name)
            if weight > 0:
                num, den = term(self, x)
                terms[name] = weight * num / den.clamp_min(1e-12)
        return terms
