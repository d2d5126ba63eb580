"""The LM training loss: hard-label CE and token-level KD, both through the shared :func:`cvkd.losses.logit_kd`.

``L = alpha * CE + (1 - alpha) * T^2 * D(p_t^T || p_s^T)`` averaged over valid (non-pad) tokens, with ``D`` forward KL
(Hinton et al. 2015), reverse KL (MiniLLM, Gu et al. 2024), JSD (GKD, Agarwal et al. 2024) or skew KL (DistiLLM,
Ko et al. 2024). Logits are flattened to ``(B*T, V)`` rows with a ``(B*T,)`` mask; this file never re-implements the
divergences.

Teacher targets come in three forms:

- ``dense``: full teacher logits (online, or an fp16 cache);
- ``topk``: a cache holding, per token, the teacher's top-k log-probabilities at temperature ``T``, their indices and
  one *tail bucket* ``log(1 - sum top-k)``. Both distributions are then coarse-grained to the same ``k + 1`` buckets
  (student: its probabilities at the k indices plus the summed rest) and the divergence is taken between the bucketed
  distributions. This is exact when the teacher puts no mass outside its top-k, and otherwise never larger than the
  full divergence (data-processing inequality): the student is not told how to spread the tail mass.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..errors import TrainingError  # noqa: F401 (re-exported)
from ..losses.logit_kd import logit_kd


def topk_buckets(logits_s: Tensor, logp_t: Tensor, index_t: Tensor, tail_t: Tensor, temperature: float
                 ) -> tuple[Tensor, Tensor]:
    """(k+1)-bucket "logits" of student and teacher whose ``softmax(z / T)`` is the bucketed tempered distribution.

    Args:
        logits_s: (N, V) student logits.
        logp_t: (N, k) teacher log-probabilities at temperature T of its top-k tokens.
        index_t: (N, k) their vocabulary indices.
        tail_t: (N,) teacher log-probability of all other tokens together.
    Returns:
        ``(z_s, z_t)``, (N, k+1) each; passing them to ``logit_kd(..., temperature=T)`` gives the bucketed divergence.
    """
    z = logits_s.float() / temperature  # (N, V)
    top_s = z.gather(1, index_t.long())  # (N, k)
    rest = z.scatter(1, index_t.long(), float("-inf"))  # (N, V): top-k removed
    tail_s = torch.logsumexp(rest, dim=1, keepdim=True)  # (N, 1)
    z_s = torch.cat([top_s, tail_s], dim=1) * temperature  # (N, k+1)
    z_t = torch.cat([logp_t.float(), tail_t.float()[:, None]], dim=1) * temperature  # (N, k+1), already normalised
    return z_s, z_t


def lm_loss(logits_s: Tensor, y: Tensor, mask: Tensor, teacher: dict | None = None, alpha: float = 0.0,
            temperature: float = 1.0, kind: str = "forward", beta: float = 0.5) -> dict[str, Tensor]:
    """Loss terms of one (micro-)batch, each a mean over its valid tokens.

    Args:
        logits_s: (B, T, V) student logits.
        y: (B, T) next-token targets.
        mask: (B, T) bool, False at padding.
        teacher: None (plain training), ``{"logits": (B, T, V)}`` or
            ``{"logp": (B, T, k), "index": (B, T, k), "tail": (B, T)}`` (top-k cache).
    Returns:
        ``{"ce", "total"}`` and, with a teacher, ``"kd"`` (unweighted, T^2-scaled); ``total`` carries the gradient.
    """
    V = logits_s.shape[-1]
    flat_s = logits_s.reshape(-1, V)  # (B*T, V)
    flat_m = mask.reshape(-1)  # (B*T,)
    ce = logit_kd(flat_s, flat_s, y.reshape(-1), alpha=1.0, mask=flat_m)  # hard-label CE only
    if teacher is None:
        return {"ce": ce, "total": ce}
    if "logits" in teacher:
        z_s, z_t = flat_s, teacher["logits"].reshape(-1, V)  # (B*T, V)
    else:
        k = teacher["logp"].shape[-1]
        z_s, z_t = topk_buckets(flat_s, teacher["logp"].reshape(-1, k), teacher["index"].reshape(-1, k),
                                teacher["tail"].reshape(-1), temperature)  # (B*T, k+1)
    kd = logit_kd(z_s, z_t, alpha=0.0, temperature=temperature, kind=kind, beta=beta, mask=flat_m)
    total = kd if alpha == 0.0 else alpha * ce + (1.0 - alpha) * kd
    return {"ce": ce, "kd": kd, "total": total}


def accumulate(micro_batches: list[dict], loss_fn: Callable[[dict], dict[str, Tensor]], step: int,
               total_valid: int | None = None, scale: float = 1.0) -> dict[str, float]:
    """Backward through every micro-batch with weight = its share of the valid tokens of the whole step.

    Each micro-batch loss is a mean over its own valid tokens, so weighting by ``n_valid_i / sum n_valid`` makes the
    accumulated gradient equal to that of one big batch averaged over all its valid tokens, whatever the padding.
    Returns the token-weighted mean of each term; a non-finite term raises :class:`TrainingError` naming it.
    Under DDP, ``total_valid`` is the valid-token count of the global step (all processes) and ``scale`` the number of
    processes (DDP averages gradients): each process then contributes its exact share of the global mean.
    """
    counts = [int(b["mask"].sum()) for b in micro_batches]
    total_valid = sum(counts) if total_valid is None else total_valid
    if total_valid == 0:
        raise TrainingError(f"step {step}: the batch has no valid tokens")
    sums: dict[str, float] = {}
    for b, n in zip(micro_batches, counts, strict=True):
        if n == 0:
            continue
        terms = loss_fn(b)
        for name, v in terms.items():
            if not torch.isfinite(v):
                bad = next((k for k, t in terms.items() if k != "total" and not torch.isfinite(t)), name)
                raise TrainingError(f"non-finite loss term '{bad}' at step {step}: run stopped")
        w = n / total_valid
        (terms["total"] * w * scale).backward()
        for name, v in terms.items():
            sums[name] = sums.get(name, 0.0) + float(v.detach()) * w
    return sums


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def bits_per_char(loss: float) -> float:
    """Bits per character of a char-level model: mean NLL in nats / ln 2."""
    return loss / math.log(2.0)
