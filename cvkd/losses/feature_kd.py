"""Feature-map distillation: FitNets hints with masks, FGD attention, CWD and PKD.

Pure functions on (B, C, H, W) feature maps plus one thin module (:class:`HintAdapter`, the learnable 1x1 conv that
maps student channels to teacher channels). Nothing here knows which detector produced the maps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .logit_kd import kd_divergence


class HintAdapter(nn.Module):
    """FitNets regressor: a 1x1 conv from student to teacher channels (Romero et al. 2015, "FitNets: Hints for Thin
    Deep Nets"); ``kind="mlp"`` makes it 1x1 conv -> ReLU -> 1x1 conv (a non-linear projector, as in ultralytics'
    own distillation); ``kind="none"`` passes the student's features as they are, for a teacher of equal channels
    (self-distillation: the QAT student against its own FP32 weights, whose features it should keep). Resizes to the
    teacher's spatial size when the two strides differ."""

    def __init__(self, channels_s: int, channels_t: int, kind: str = "conv"):
        super().__init__()
        if kind == "none":
            if channels_s != channels_t:
                raise ValueError(f"no adapter between {channels_s} student and {channels_t} teacher channels")
            self.proj = nn.Identity()
            return
        first = nn.Conv2d(channels_s, channels_t, kernel_size=1, bias=True)
        nn.init.kaiming_uniform_(first.weight, a=1.0)
        nn.init.zeros_(first.bias)
        self.proj = nn.Sequential(first, nn.ReLU(), nn.Conv2d(channels_t, channels_t, 1)) if kind == "mlp" else first

    def forward(self, f_s: Tensor, size_t: tuple[int, int] | None = None) -> Tensor:
        out = self.proj(f_s)  # (B, C_t, H_s, W_s)
        return resize_to(out, size_t) if size_t is not None else out


def resize_to(f: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, C, H, W) to ``size`` (no-op when already that size)."""
    if tuple(f.shape[-2:]) == tuple(size):
        return f
    return F.interpolate(f, size=size, mode="bilinear", align_corners=False)


def box_mask(
    boxes: Tensor, batch_idx: Tensor, batch_size: int, size: tuple[int, int], stride: float, area_norm: bool = False
) -> Tensor:
    """Foreground mask of ground-truth (or teacher) boxes on a feature grid.

    Args:
        boxes: (M, 4) xyxy boxes in input-image pixels.
        batch_idx: (M,) image index of each box.
        size: (H, W) of the feature map; ``stride`` = input pixels per cell.
        area_norm: FGD's scale mask (Yang et al. 2022): a cell inside a box gets ``1 / (h*w)`` of that box in cells
            (the smallest box wins where boxes overlap), so large objects do not dominate; else 1 inside boxes.
    Returns:
        (B, H, W) float mask, 0 on background.
    """
    H, W = size
    mask = torch.zeros(batch_size, H, W, device=boxes.device)
    if boxes.numel() == 0:
        return mask
    ys = (torch.arange(H, device=boxes.device, dtype=torch.float32) + 0.5) * stride  # (H,) cell centres
    xs = (torch.arange(W, device=boxes.device, dtype=torch.float32) + 0.5) * stride  # (W,)
    b = boxes.float()
    inside_y = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] <= b[:, 3:4])  # (M, H)
    inside_x = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] <= b[:, 2:3])  # (M, W)
    inside = inside_y[:, :, None] & inside_x[:, None, :]  # (M, H, W)
    cells = inside.flatten(1).sum(1).clamp_min(1).float()  # (M,) box area in cells
    value = (1.0 / cells) if area_norm else torch.ones_like(cells)  # (M,)
    per_box = inside.float() * value[:, None, None]  # (M, H, W)
    for i in range(batch_size):
        sel = batch_idx.long() == i
        if sel.any():
            mask[i] = per_box[sel].amax(0)
    return mask


def attention_masks(f_t: Tensor, temperature: float = 0.5, detach: bool = True) -> tuple[Tensor, Tensor]:
    """FGD spatial and channel attention of a teacher feature map (Yang et al. 2022, "Focal and Global Knowledge
    Distillation for Detectors"): ``A_S = H*W*softmax(mean_c |F| / T)``, ``A_C = C*softmax(mean_hw |F| / T)``.

    Args:
        f_t: (B, C, H, W) teacher features (or student features with ``detach=False`` for FGD's attention loss).
    Returns:
        spatial (B, H, W) and channel (B, C) attention, each averaging to 1.
    """
    B, C, H, W = f_t.shape
    a = (f_t.detach() if detach else f_t).float().abs()
    spatial = (H * W) * F.softmax(a.mean(1).reshape(B, -1) / temperature, dim=1).reshape(B, H, W)  # (B, H, W)
    channel = C * F.softmax(a.mean((2, 3)) / temperature, dim=1)  # (B, C)
    return spatial, channel


def hint_parts(
    f_s: Tensor, f_t: Tensor, mask: Tensor | None = None, fg_mask: Tensor | None = None, bg_weight: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Numerator and denominator of :func:`feature_hint`: ``sum w * mean_c (f_s - f_t)^2`` and ``sum w``, so that
    several pyramid levels can share one normalisation (:func:`feature_hint_levels`). Arguments as there."""
    if f_s.shape != f_t.shape:
        raise ValueError(f"feature shapes differ: student {tuple(f_s.shape)} vs teacher {tuple(f_t.shape)}")
    sq = (f_s.float() - f_t.detach().float()).pow(2).mean(1)  # (B, H, W) mean over channels
    w = torch.ones_like(sq) if mask is None else mask.detach().float()  # (B, H, W)
    if fg_mask is not None:
        fg = fg_mask.detach().float()
        w = w * (fg + bg_weight * (1.0 - fg))
    return (sq * w).sum(), w.sum()


def feature_hint(
    f_s: Tensor, f_t: Tensor, mask: Tensor | None = None, fg_mask: Tensor | None = None, bg_weight: float = 1.0
) -> Tensor:
    """FitNets hint loss: masked mean squared error between adapted student and teacher features.

    ``L = sum_{b,c,h,w} w_{bhw} (f_s - f_t)^2 / (C * sum w)`` with ``w = mask * (fg + bg_weight * (1 - fg))``.

    Args:
        f_s: (B, C, H, W) student features already mapped to teacher channels/size (see :class:`HintAdapter`).
        f_t: (B, C, H, W) teacher features (detached here).
        mask: (B, H, W) non-negative spatial weights (e.g. FGD spatial attention); None = all ones.
        fg_mask: (B, H, W) foreground in [0, 1] (e.g. :func:`box_mask`); None = no split.
    Returns:
        Scalar loss (fp32).
    """
    num, den = hint_parts(f_s, f_t, mask, fg_mask, bg_weight)
    return num / den.clamp_min(1e-12)


def feature_hint_levels(parts: list[tuple[Tensor, Tensor]]) -> Tensor:
    """One weighted mean over the cells of all levels: ``sum_l num_l / sum_l den_l`` from :func:`hint_parts`.

    With a teacher-score mask this weighs each cell by the teacher's confidence whatever its level, so a level where
    the teacher is confident nowhere weighs (almost) nothing. Averaging per-level means instead gives such a level a
    full share, spent on a handful of near-zero-weight cells: one outlier cell of the teacher then dominates the term.
    """
    num = torch.stack([p[0] for p in parts]).sum()
    den = torch.stack([p[1] for p in parts]).sum()
    return num / den.clamp_min(1e-12)


def fgd_loss(
    f_s: Tensor,
    f_t: Tensor,
    fg_mask: Tensor,
    temperature: float = 0.5,
    alpha_fg: float = 1.0,
    beta_bg: float = 0.5,
    gamma_attn: float = 0.0,
) -> Tensor:
    """Focal part of FGD (Yang et al. 2022): attention-weighted MSE, foreground and background separated.

    ``L = alpha * sum M*A_S*A_C*(f_s - f_t)^2 + beta * sum (1-M)*A_S*A_C*(f_s - f_t)^2 + gamma * L_at``, with ``M``
    the (area-normalised) foreground mask, ``A_S, A_C`` the teacher's spatial/channel attention, and the paper's
    attention term ``L_at = sum|A_S^s - A_S^t| / B + sum|A_C^s - A_C^t| / B`` (L1 summed, per image). Normalised by
    the batch size, as in the paper. The global (GcBlock)
    relation term of FGD is not included.

    Args:
        f_s: (B, C, H, W) adapted student features; f_t: (B, C, H, W) teacher features.
        fg_mask: (B, H, W) foreground weights (e.g. ``box_mask(..., area_norm=True)``).
    """
    B = f_s.shape[0]
    sp_t, ch_t = attention_masks(f_t, temperature)  # (B, H, W), (B, C)
    diff = (f_s.float() - f_t.detach().float()).pow(2)  # (B, C, H, W)
    weighted = diff * sp_t[:, None] * ch_t[:, :, None, None]  # (B, C, H, W)
    fg = fg_mask.detach().float()[:, None]  # (B, 1, H, W)
    bg = (fg == 0).float()
    bg = bg / bg.flatten(1).sum(1).clamp_min(1.0)[:, None, None, None]  # FGD normalises background by its area
    loss = (alpha_fg * (weighted * fg).sum() + beta_bg * (weighted * bg).sum()) / B
    if gamma_attn > 0:
        sp_s, ch_s = attention_masks(f_s, temperature, detach=False)
        loss = loss + gamma_attn * ((sp_s - sp_t).abs().sum() + (ch_s - ch_t).abs().sum()) / B
    return loss


def cwd_loss(f_s: Tensor, f_t: Tensor, temperature: float = 4.0) -> Tensor:
    """Channel-wise distillation (Shu et al. 2021, "Channel-wise Knowledge Distillation for Dense Prediction").

    Each channel's H*W activations become a distribution ``softmax(f / T)``; the loss is
    ``T^2 * mean_{b,c} KL(softmax(f_t/T) || softmax(f_s/T))`` (the same :func:`kd_divergence` as class logits, with
    spatial positions as the categories).

    Args:
        f_s: (B, C, H, W) adapted student features; f_t: (B, C, H, W) teacher features.
    """
    if f_s.shape != f_t.shape:
        raise ValueError(f"feature shapes differ: student {tuple(f_s.shape)} vs teacher {tuple(f_t.shape)}")
    B, C = f_s.shape[:2]
    rows_s = f_s.reshape(B * C, -1)  # (B*C, H*W)
    rows_t = f_t.reshape(B * C, -1)  # (B*C, H*W)
    return temperature**2 * kd_divergence(rows_s, rows_t, temperature, "forward").mean()


def pkd_normalize(f: Tensor, stats: str = "channel", eps: float = 1e-6) -> Tensor:
    """PKD's standardisation of a (B, C, H, W) feature map to zero mean and unit variance.

    ``stats="channel"`` (the paper's form, Cao et al. 2022): each channel's mean and unbiased std over the whole
    batch, i.e. over (N, H, W), so images keep their relative strength. ``stats="image"``: per image and channel over
    (H, W) (biased std), which removes each image's scale as well.
    """
    if stats == "channel":
        flat = f.transpose(0, 1).reshape(f.shape[1], -1)  # (C, N*H*W)
        mean = flat.mean(1)[None, :, None, None]  # (1, C, 1, 1)
        std = flat.std(1, unbiased=True)[None, :, None, None]  # (1, C, 1, 1)
    elif stats == "image":
        mean = f.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        std = f.std((2, 3), keepdim=True, unbiased=False)  # (B, C, 1, 1)
    else:
        raise ValueError(f"pkd stats must be 'channel' or 'image', got {stats!r}")
    return (f - mean) / (std + eps)


def pkd_loss(f_s: Tensor, f_t: Tensor, mask: Tensor | None = None, stats: str = "channel") -> Tensor:
    """PKD (Cao et al. 2022, "PKD: General Distillation Framework for Object Detectors via Pearson Correlation
    Coefficient"): MSE between standardised feature maps, ``0.5 * mean (norm(f_s) - norm(f_t))^2``, i.e.
    ``1 - Pearson r`` per channel. Insensitive to the teacher's feature scale, so it works across detector families.

    Args:
        f_s, f_t: (B, C, H, W). mask: optional (B, H, W) spatial weights. stats: see :func:`pkd_normalize`.
    """
    return 0.5 * feature_hint(pkd_normalize(f_s.float(), stats), pkd_normalize(f_t.detach().float(), stats), mask)


def pkd_parts(f_s: Tensor, f_t: Tensor, mask: Tensor | None = None, stats: str = "channel") -> tuple[Tensor, Tensor]:
    """:func:`pkd_loss` as numerator and denominator, for :func:`feature_hint_levels`."""
    num, den = hint_parts(pkd_normalize(f_s.float(), stats), pkd_normalize(f_t.detach().float(), stats), mask)
    return 0.5 * num, den
