"""Character-level text data: tokenizer, corpus loading (plain file or a Project Gutenberg folder), train/val split,
training blocks (random contiguous, or a fixed grid of blocks for offline teacher caches) and a deterministic val set.

Blocks are ``x = ids[s : s+T]``, ``y = ids[s+1 : s+T+1]`` with a ``(T,)`` bool ``mask`` of valid target positions;
a block that runs past the end of the split is right-padded (pad id 0, mask False).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError  # noqa: F401 (re-exported)

GUTENBERG_START, GUTENBERG_END = "*** START OF", "*** END OF"


class CharTokenizer:
    """One token per character; the vocabulary (sorted characters) is saved in checkpoints as a string."""

    def __init__(self, chars: str) -> None:
        if not chars:
            raise DataError("empty vocabulary (no text?)")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            shown = "".join(unknown[:20])
            raise DataError(f"{len(unknown)} character(s) not in the tokenizer's vocabulary: {shown!r}")
        return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)  # (N,)

    def decode(self, ids: list[int] | Tensor) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def strip_gutenberg(text: str) -> str:
    """The text between the ``*** START OF ...`` and ``*** END OF ...`` lines (Gutenberg licence header/footer)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith(GUTENBERG_START)), None)
    end = next((i for i, ln in enumerate(lines) if ln.startswith(GUTENBERG_END)), None)
    if start is None and end is None:
        return text
    body = lines[(start + 1 if start is not None else 0):(end if end is not None else len(lines))]
    return "\n".join(body).strip("\n") + "\n"


def read_corpus(path: str | Path) -> str:
    """A text file, or every ``*.txt`` of a folder (sorted by name, Gutenberg-stripped, joined by a blank line)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DataError(f"{path}: no .txt files in this folder")
    else:
        raise DataError(f"{path}: text corpus not found")
    parts = []
    for f in files:
        try:
            parts.append(strip_gutenberg(f.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            raise DataError(f"{f}: not UTF-8 text") from None
    return "\n".join(parts)


def fixed_blocks(ids: Tensor, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """Non-overlapping blocks covering every next-token prediction of ``ids`` once; the last one right-padded.

    Returns ``x, y, mask``, each (num_blocks, block): inputs, targets, valid-target mask.
    """
    n_pred = ids.numel() - 1
    if n_pred < 1:
        raise DataError("a split needs at least 2 tokens")
    nb = math.ceil(n_pred / block)
    x = torch.zeros(nb * block, dtype=torch.long)  # (nb*T,)
    y = torch.zeros(nb * block, dtype=torch.long)
    mask = torch.zeros(nb * block, dtype=torch.bool)
    x[:n_pred], y[:n_pred], mask[:n_pred] = ids[:-1], ids[1:], True
    return x.view(nb, block), y.view(nb, block), mask.view(nb, block)


class TextData:
    """A corpus split into train (first ``1 - val_fraction``) and val (the rest) token ids."""

    def __init__(self, text: str, tokenizer: CharTokenizer, val_fraction: float, block: int) -> None:
        ids = tokenizer.encode(text)  # (N,)
        n_val = int(round(ids.numel() * val_fraction))
        if ids.numel() - n_val < block + 1 or n_val < 2:
            raise DataError(f"corpus of {ids.numel()} tokens is too small for block_size {block} and "
                            f"val_fraction {val_fraction}")
        self.tokenizer, self.block = tokenizer, block
        self.train_ids, self.val_ids = ids[: ids.numel() - n_val], ids[ids.numel() - n_val:]  # (N_train,), (N_val,)
        self.train_fixed = fixed_blocks(self.train_ids, block)  # x, y, mask: (nb, T) each
        self.val_fixed = fixed_blocks(self.val_ids, block)

    def fingerprint(self) -> str:
        """Identifies the exact training blocks (for teacher caches)."""
        h = hashlib.md5(self.train_ids.numpy().tobytes())
        h.update(f"{self.block}:{self.tokenizer.chars}".encode())
        return h.hexdigest()

    def val_batches(self, batch: int, max_blocks: int = 0):
        """Deterministic val batches ``(x, y, mask)`` of (B, T) each; ``max_blocks`` > 0 keeps the first ones."""
        x, y, mask = self.val_fixed
        nb = x.shape[0] if max_blocks <= 0 else min(max_blocks, x.shape[0])
        for i in range(0, nb, batch):
            j = min(i + batch, nb)
            yield x[i:j], y[i:j], mask[i:j]


class BlockSampler:
    """Training batches: ``random`` contiguous blocks anywhere in the train split, or a shuffled ``fixed`` grid of
    blocks (every epoch a new permutation; needed for offline teacher caches, which are indexed by block).

    Its state (generator + blocks drawn) goes into ``last.pt`` so a resumed run sees the same batches.
    """

    def __init__(self, data: TextData, batch: int, mode: str, seed: int) -> None:
        self.data, self.batch, self.mode, self.seed = data, batch, mode, seed
        self.gen = torch.Generator().manual_seed(seed)
        self.drawn = 0  # blocks drawn so far (fixed mode)
        self._perm: Tensor | None = None
        self._perm_epoch = -1

    def _fixed_index(self, n: int) -> Tensor:
        nb = self.data.train_fixed[0].shape[0]
        out = []
        for k in range(self.drawn, self.drawn + n):
            epoch = k // nb
            if epoch != self._perm_epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm, self._perm_epoch = torch.randperm(nb, generator=g), epoch
            out.append(int(self._perm[k % nb]))
        self.drawn += n
        return torch.tensor(out, dtype=torch.long)  # (B,)

    def next(self) -> dict[str, Tensor]:
        """One batch: ``x, y, mask`` (B, T) and ``index`` (B,) block ids (-1 for random blocks)."""
        T = self.data.block
        if self.mode == "fixed":
            index = self._fixed_index(self.batch)  # (B,)
            x, y, mask = (t[index] for t in self.data.train_fixed)  # (B, T) each
            return {"x": x, "y": y, "mask": mask, "index": index}
        ids = self.data.train_ids
        starts = torch.randint(0, ids.numel() - T, (self.batch,), generator=self.gen)  # (B,)
        offs = starts[:, None] + torch.arange(T)[None, :]  # (B, T)
        x, y = ids[offs], ids[offs + 1]  # (B, T)
        return {"x": x, "y": y, "mask": torch.ones_like(x, dtype=torch.bool), "index": torch.full_like(starts, -1)}

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.drawn = int(state["drawn"])
