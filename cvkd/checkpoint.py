"""Checkpoints: a torch file holding plain data only (loadable with ``weights_only=True``) under a kind/version header.

``{"format": "cvkd", "kind": "detector" | "lm", "version": 1, "meta": {...}, "model": state_dict, ...}``.
Written atomically (temp file + rename) so a run killed mid-save never leaves a broken ``last.pt``.
"""
from __future__ import annotations

import io
import lzma
import os
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint problem, reported as one line."""


def save_checkpoint(path: str | Path, kind: str, model_state: dict, meta: dict, **extra: Any) -> None:
    path = Path(path)
    data = {"format": "cvkd", "kind": kind, "version": FORMAT_VERSION, "meta": meta, "model": model_state, **extra}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".xz":  # xz-compressed (shipped checkpoints: fp16 weights compress by ~10 %)
        buf = io.BytesIO()
        torch.save(data, buf)
        tmp.write_bytes(lzma.compress(buf.getvalue(), preset=6))
    else:
        torch.save(data, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load a cvkd checkpoint, checking its header; one-line errors for missing, corrupt or wrong-kind files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        src = io.BytesIO(lzma.decompress(path.read_bytes())) if path.suffix == ".xz" else path
        data = torch.load(src, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a cvkd checkpoint or corrupt ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(data, dict) or data.get("format") != "cvkd":
        raise CheckpointError(f"{path}: not a cvkd checkpoint (no cvkd header)")
    if data.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format v{data['version']} is newer than this cvkd (v{FORMAT_VERSION})")
    if kind is not None and data.get("kind") != kind:
        raise CheckpointError(f"{path}: is a '{data.get('kind')}' checkpoint, expected a '{kind}' checkpoint")
    return data


def is_cvkd_checkpoint(path: str | Path) -> bool:
    try:
        load_checkpoint(path)
        return True
    except CheckpointError:
        return False
