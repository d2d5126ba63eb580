"""Offline distillation: teacher outputs computed once over the fixed grid of training blocks and stored on disk.

Two layouts (file = a cvkd checkpoint of kind ``lm_teacher_cache``, so it is written atomically and checked on load):

- ``dense``: the raw teacher logits in fp16, ``2 * V`` bytes per token (130 B for a 65-char vocab). Temperature-free.
- ``topk``: per token the top-k log-probabilities at temperature ``T`` (fp16), their indices (int16 when V <= 32767,
  else int32) and a tail bucket log-probability (fp16): ``k * (2 + 2|4) + 2`` bytes per token, for large vocabularies.
  Tied to the ``T`` it was built with (the tail mass depends on T). See :mod:`cvkd.lm.distill` for the approximation.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import ConfigError
from .data import TextData

log = logging.getLogger("cvkd")
KIND = "lm_teacher_cache"


def bytes_per_token(vocab: int, topk: int) -> int:
    """Storage per cached token: dense fp16 logits, or top-k fp16 log-probs + indices + one fp16 tail bucket."""
    if topk <= 0:
        return 2 * vocab
    return topk * (2 + (2 if vocab <= 32767 else 4)) + 2


@torch.no_grad()
def teacher_targets(logits_t: Tensor, topk: int, temperature: float) -> dict[str, Tensor]:
    """(..., V) teacher logits -> the stored form: ``{"logits"}`` (fp16) or ``{"logp", "index", "tail"}``."""
    if topk <= 0 or topk >= logits_t.shape[-1]:
        return {"logits": logits_t.half()}
    logp = torch.log_softmax(logits_t.float() / temperature, dim=-1)  # (..., V)
    top, index = logp.topk(topk, dim=-1)  # (..., k) each
    rest = logp.scatter(-1, index, float("-inf"))  # (..., V)
    tail = torch.logsumexp(rest, dim=-1).clamp_min(-30.0)  # (...,) log of the remaining mass, exact when tiny
    idx_dtype = torch.int16 if logits_t.shape[-1] <= 32767 else torch.int32
    return {"logp": top.half(), "index": index.to(idx_dtype), "tail": tail.half()}


class TeacherCache:
    """Teacher targets of every fixed training block; ``lookup(index)`` gives the targets of a batch of blocks."""

    def __init__(self, tensors: dict[str, Tensor], meta: dict) -> None:
        self.tensors, self.meta = tensors, meta

    def lookup(self, index: Tensor) -> dict[str, Tensor]:
        if (index < 0).any():
            raise ConfigError("a teacher cache needs fixed blocks: set data.sampling=fixed")
        return {k: v[index] for k, v in self.tensors.items()}  # (B, T, ...) each

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.tensors.values())


def _expected_meta(data: TextData, teacher_id: str, topk: int, temperature: float) -> dict:
    return {"data": data.fingerprint(), "teacher": teacher_id, "topk": topk,
            "temperature": temperature if topk > 0 else None, "vocab": data.tokenizer.vocab_size}


@torch.no_grad()
def build_cache(teacher: torch.nn.Module, data: TextData, topk: int, temperature: float, batch: int,
                device: torch.device) -> dict[str, Tensor]:
    """Teacher forward over every fixed training block (padding positions are stored too, and masked later)."""
    x_all = data.train_fixed[0]  # (nb, T)
    parts: list[dict[str, Tensor]] = []
    for i in range(0, x_all.shape[0], batch):
        logits_t = teacher(x_all[i:i + batch].to(device)).float()  # (b, T, V)
        parts.append({k: v.cpu() for k, v in teacher_targets(logits_t, topk, temperature).items()})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def load_or_build(path: str | Path, teacher: torch.nn.Module, teacher_id: str, data: TextData, topk: int,
                  temperature: float, batch: int, device: torch.device) -> TeacherCache:
    """Reuse the cache at ``path`` if it matches this data/teacher/top-k/T, else build and save it there."""
    path = Path(path)
    want = _expected_meta(data, teacher_id, topk, temperature)
    V = data.tokenizer.vocab_size
    n_tok = data.train_fixed[0].numel()
    bpt = bytes_per_token(V, topk)
    if path.is_file():
        ck = load_checkpoint(path, kind=KIND)
        diff = [k for k in want if ck["meta"].get(k) != want[k]]
        if diff:
            raise ConfigError(f"kd.cache={path} was built for another {'/'.join(diff)}; delete it or use another path")
        log.info(f"teacher cache {path}: {n_tok} tokens, {bpt} bytes/token ({n_tok * bpt / 1e6:.1f} MB)")
        return TeacherCache(ck["tensors"], ck["meta"])
    layout = f"top-{topk} + tail bucket at T={temperature}" if topk > 0 else "dense fp16 logits"
    log.info(f"building teacher cache {path} ({layout}): {n_tok} tokens x {bpt} bytes/token "
             f"= {n_tok * bpt / 1e6:.1f} MB")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = build_cache(teacher, data, topk, temperature, batch, device)
    save_checkpoint(path, KIND, {}, want, tensors=tensors)
    return TeacherCache(tensors, want)
