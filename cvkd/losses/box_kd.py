"""Box-regression distillation: teacher-bounded regression, localization distillation for DFL heads, IoU imitation.

Pure functions on box tensors. Boxes are (N, 4); bin logits of distribution (DFL/GFL) heads are (N, 4, R).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from .logit_kd import _masked_mean, kd_divergence


def teacher_bounded_l2(
    box_s: Tensor, box_t: Tensor, box_gt: Tensor, margin: float = 0.0, weight: Tensor | None = None
) -> Tensor:
    """Teacher-bounded regression loss (Chen et al. 2017, "Learning Efficient Object Detection Models with Knowledge
    Distillation", eq. 4): the teacher is an upper bound the student should reach, not a target to copy.

    ``L_b = ||R_s - y||^2  if  ||R_s - y||^2 + m > ||R_t - y||^2,  else 0``

    i.e. the student's L2 error to the ground truth counts until the student beats the teacher by the margin ``m``;
    where it does, the term is 0 (and gives no gradient). Added to the student's usual regression loss.

    Args:
        box_s, box_t, box_gt: (N, 4) regression outputs of student, teacher and the ground truth, in one parametrisation
            (e.g. normalised ltrb distances or xyxy / stride).
        weight: (N,) non-negative weights (e.g. a positive-anchor mask).
    Returns:
        Scalar: weighted mean over boxes.
    """
    err_s = (box_s.float() - box_gt.float()).pow(2).sum(-1)  # (N,)
    err_t = (box_t.detach().float() - box_gt.float()).pow(2).sum(-1)  # (N,)
    active = (err_s + margin > err_t).float()  # (N,)
    return _masked_mean(err_s * active, weight)


def distribution_kd(
    bins_s: Tensor, bins_t: Tensor, temperature: float = 10.0, weight: Tensor | None = None
) -> Tensor:
    """Localization distillation for distribution (DFL/GFL) box heads (Zheng et al. 2022, "Localization Distillation
    for Dense Object Detection").

    Each box side is a categorical distribution over R bins; ``L = T^2 * sum_sides KL(softmax(b_t/T) || softmax(b_s/T))``
    (the same :func:`kd_divergence` as class logits), averaged over boxes with ``weight``.

    Args:
        bins_s: (N, 4, R) student per-side bin logits.
        bins_t: (N, 4, R) teacher per-side bin logits.
        weight: (N,) weights (e.g. positives, or teacher scores: LD's "valuable localization region").
    Returns:
        Scalar loss.
    """
    if bins_s.shape != bins_t.shape:
        raise ValueError(f"bin logits differ: student {tuple(bins_s.shape)} vs teacher {tuple(bins_t.shape)}")
    N, S, R = bins_s.shape
    per_side = kd_divergence(bins_s.reshape(N * S, R), bins_t.reshape(N * S, R), temperature)  # (N*4,)
    per_box = per_side.reshape(N, S).sum(-1) * temperature**2  # (N,)
    return _masked_mean(per_box, weight)


def iou_imitation(boxes_s: Tensor, boxes_t: Tensor, weight: Tensor | None = None) -> Tensor:
    """Prediction imitation of decoded boxes: ``1 - GIoU(box_s, box_t)`` (Rezatofighi et al. 2019), with the
    teacher's boxes as targets, as in PP-YOLOE+'s distillation (GIoU to teacher boxes).

    Args:
        boxes_s, boxes_t: (N, 4) xyxy decoded boxes (any unit, the same for both).
        weight: (N,) weights (e.g. the teacher's score per anchor).
    Returns:
        Scalar: weighted mean of ``1 - GIoU`` (0 when the boxes coincide).
    """
    if boxes_s.numel() == 0:
        return boxes_s.sum() * 0.0
    per_box = generalized_box_iou_loss(boxes_s.float(), boxes_t.detach().float(), reduction="none")  # (N,)
    return _masked_mean(per_box, weight)


def dfl_expectation(bins: Tensor) -> Tensor:
    """Expected distance per side from DFL bin logits: (..., 4, R) -> (..., 4), in bin units."""
    R = bins.shape[-1]
    proj = torch.arange(R, device=bins.device, dtype=torch.float32)
    return (bins.float().softmax(-1) * proj).sum(-1)
