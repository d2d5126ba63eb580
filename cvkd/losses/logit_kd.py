"""Logit distillation: softmax KD over the last dim (classifiers, LM tokens) and the sigmoid form of dense detector heads.

Everything here is a pure function on tensors. Rows are whatever the caller flattens into the first dim: anchors of a
detector, tokens of a language model. Teacher tensors are always detached: gradients reach the student only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

DIVERGENCES = ("forward", "reverse", "jsd", "skew")


def _masked_mean(per_row: Tensor, weight: Tensor | None) -> Tensor:
    """Weighted mean of per-row values; rows with weight 0 neither count nor receive gradient."""
    if weight is None:
        return per_row.mean()
    weight = weight.to(per_row.dtype)
    # where() rather than multiply so that an inf/nan in a masked row cannot leak into the sum or the gradient
    per_row = torch.where(weight > 0, per_row, per_row.new_zeros(()))
    return (per_row * weight).sum() / weight.sum().clamp_min(1e-12)


def _kl_rows(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities, with 0*log(0) = 0 (handles -inf masked entries)."""
    diff = logp - logq  # (N, K)
    diff = torch.where(torch.isfinite(logp), diff, diff.new_zeros(()))  # p = 0 there: term is 0
    return (logp.exp() * diff).sum(-1)  # (N,)


def _log_mix(logp: Tensor, logq: Tensor, beta: float) -> Tensor:
    """log(beta*p + (1-beta)*q) from log-probabilities, with a finite gradient where both are -inf."""
    both_zero = torch.isneginf(logp) & torch.isneginf(logq)  # (N, K)
    zero = logp.new_zeros(())
    mix = torch.logaddexp(torch.where(both_zero, zero, logp) + math.log(beta),
                          torch.where(both_zero, zero, logq) + math.log(1.0 - beta))  # (N, K)
    return torch.where(both_zero, logp, mix)


def kd_divergence(
    logits_s: Tensor,
    logits_t: Tensor,
    temperature: float = 1.0,
    kind: str = "forward",
    beta: float = 0.5,
) -> Tensor:
    """Per-row divergence between temperature-softened teacher and student softmax distributions.

    With ``p = softmax(z_t / T)`` and ``q = softmax(z_s / T)`` over the last dim:

    - ``forward``: ``KL(p || q)``, Hinton et al. 2015 "Distilling the Knowledge in a Neural Network" (mode covering).
    - ``reverse``: ``KL(q || p)`` (mode seeking; MiniLLM, Gu et al. 2024).
    - ``jsd``: generalised Jensen-Shannon ``beta*KL(p || m) + (1-beta)*KL(q || m)``, ``m = beta*p + (1-beta)*q``
      (GKD, Agarwal et al. 2024), ``0 < beta < 1``.
    - ``skew``: skew KL ``KL(p || beta*p + (1-beta)*q)`` (DistiLLM, Ko et al. 2024), ``0 <= beta < 1``.

    Computed in fp32 whatever the input dtype. No ``T^2`` factor here: see :func:`logit_kd`.

    Args:
        logits_s: (N, K) student logits.
        logits_t: (N, K) teacher logits (detached here).
    Returns:
        (N,) divergence per row, >= 0, and 0 where the two distributions are equal.
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown KD divergence '{kind}': choose one of {', '.join(DIVERGENCES)}")
    if logits_s.shape != logits_t.shape:
        raise ValueError(f"student logits {tuple(logits_s.shape)} and teacher logits {tuple(logits_t.shape)} differ")
    logq = F.log_softmax(logits_s.float() / temperature, dim=-1)  # (N, K) student
    logp = F.log_softmax(logits_t.detach().float() / temperature, dim=-1)  # (N, K) teacher
    if kind == "forward":
        return _kl_rows(logp, logq)
    if kind == "reverse":
        return _kl_rows(logq, logp)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
        logm = _log_mix(logp, logq, beta)  # (N, K) log of the mixture
        return beta * _kl_rows(logp, logm) + (1.0 - beta) * _kl_rows(logq, logm)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"skew KL needs 0 <= beta < 1, got {beta}")
    logm = _log_mix(logp, logq, beta) if beta > 0 else logq
    return _kl_rows(logp, logm)


def logit_kd(
    logits_s: Tensor,
    logits_t: Tensor,
    target: Tensor | None = None,
    alpha: float = 0.0,
    temperature: float = 1.0,
    kind: str = "forward",
    beta: float = 0.5,
    mask: Tensor | None = None,
) -> Tensor:
    """Hinton knowledge distillation with an optional hard-label term (Hinton, Vinyals, Dean 2015).

    ``L = alpha * CE(y, z_s) + (1 - alpha) * T^2 * D(softmax(z_t/T), softmax(z_s/T))``, with ``D`` chosen by ``kind``
    (see :func:`kd_divergence`). Both terms are averaged over the valid rows only (``mask``), so padding tokens or
    ignored anchors have no effect and get no gradient, and the value does not depend on how many rows are padding
    (unlike ``batchmean`` over an unflattened ``(B, T, V)`` tensor, which divides by B only).

    Args:
        logits_s: (N, K) student logits, e.g. (B*T, V) for a language model.
        logits_t: (N, K) teacher logits (detached here).
        target: (N,) hard class indices for the CE term; needed only when ``alpha > 0``.
        alpha: weight of the hard-label CE term in [0, 1].
        temperature: softening temperature ``T``; the KD term is scaled by ``T^2`` to keep gradient sizes comparable.
        mask: (N,) bool or float row weights; 0 = ignored row.
    Returns:
        Scalar loss (fp32).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    loss = logits_s.new_zeros((), dtype=torch.float32)
    if alpha < 1.0:
        per_row = kd_divergence(logits_s, logits_t, temperature, kind, beta)  # (N,)
        loss = loss + (1.0 - alpha) * temperature**2 * _masked_mean(per_row, mask)
    if alpha > 0.0:
        if target is None:
            raise ValueError("logit_kd with alpha > 0 needs the hard targets")
        ce = F.cross_entropy(logits_s.float(), target.long(), reduction="none")  # (N,)
        loss = loss + alpha * _masked_mean(ce, mask)
    return loss


def teacher_score_weights(logits_t: Tensor) -> Tensor:
    """Per-anchor weight = the teacher's highest class probability (sigmoid). (..., K) -> (...)."""
    return logits_t.detach().float().sigmoid().amax(-1)


def sigmoid_kd(
    logits_s: Tensor,
    logits_t: Tensor,
    temperature: float = 1.0,
    weight: Tensor | None = None,
    fg_mask: Tensor | None = None,
    bg_weight: float = 1.0,
) -> Tensor:
    """Dense-head logit KD with independent per-class Bernoulli outputs (YOLO, FCOS, RetinaNet, GFL heads).

    Sigmoid heads have no softmax over classes, so Hinton's KD becomes a sum over classes of Bernoulli KLs:
    ``T^2 * sum_k KL(Bern(sigmoid(z_t/T)) || Bern(sigmoid(z_s/T)))``: the binary-KL form of dense-head KD (as in
    the sigmoid-output variants of LD/GFL-style distillation). Not YOLOv6's self-distillation, which applies a
    softmax KL over the class scores (use :func:`kd_divergence` for that). Written as
    ``BCE(z_s/T, p_t) - BCE(z_t/T, p_t)`` so it is exactly 0 when student equals teacher.

    Anchor weighting: ``w = weight * (fg + bg_weight * (1 - fg))``, e.g. ``weight = teacher_score_weights(z_t)`` to
    focus on anchors the teacher is confident about, and ``fg_mask`` marking anchors assigned to objects.

    Args:
        logits_s: (N, K) student class logits (N anchors, flattened over the batch).
        logits_t: (N, K) teacher class logits.
        weight: (N,) non-negative anchor weights; None = 1.
        fg_mask: (N,) bool foreground anchors; None = no split.
        bg_weight: weight of background anchors relative to foreground ones.
    Returns:
        Scalar: weighted mean over anchors of the per-anchor KL summed over classes (fp32).
    """
    z_s = logits_s.float() / temperature  # (N, K)
    z_t = logits_t.detach().float() / temperature  # (N, K)
    p_t = z_t.sigmoid()
    kl = F.binary_cross_entropy_with_logits(z_s, p_t, reduction="none") - F.binary_cross_entropy_with_logits(
        z_t, p_t, reduction="none"
    )  # (N, K)
    per_anchor = kl.sum(-1) * temperature**2  # (N,)
    w = torch.ones_like(per_anchor) if weight is None else weight.detach().float()
    if fg_mask is not None:
        fg = fg_mask.float()
        w = w * (fg + bg_weight * (1.0 - fg))
    return _masked_mean(per_anchor, w)


def merge_class_logits(logits: Tensor, groups: Tensor) -> Tensor:
    """Sigmoid class logits of a teacher mapped onto fewer (merged) classes: class ``j`` of the result is "any of the
    teacher classes of group ``j``", ``p_j = 1 - prod_{i in j} (1 - sigmoid(z_i))`` (the members treated as
    independent detections of the same object), returned as a logit.

    Computed in log space: with ``S_j = sum_{i in j} softplus(z_i) = -log(1 - p_j)``, ``logit(p_j) = log(expm1(S_j))``,
    stable for large and small ``S_j``; a one-member group gives back its logit exactly (``log(expm1(softplus(z)))
    = z``). A group with no member has ``p_j = 0`` (logit -inf clamped to -30).

    Args:
        logits: (..., K_t) teacher class logits.
        groups: (K_s, K_t) 0/1 membership: ``groups[j, i] = 1`` when teacher class ``i`` maps to class ``j``.
    Returns:
        (..., K_s) fp32 logits.
    """
    s = F.softplus(logits.float()) @ groups.float().t()  # (..., K_s) = -log(1 - p_j)
    # log(expm1(s)) = s + log(1 - exp(-s)); for small s, log(expm1(s)) ~ log(s): expm1 keeps precision there
    big = s > 20
    out = torch.where(big, s + torch.log1p(-torch.exp(-s.clamp_min(20))), torch.log(torch.expm1(s.clamp(1e-30, 20))))
    return out.clamp_min(-30.0)
