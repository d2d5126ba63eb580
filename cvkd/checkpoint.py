"""Checkpoints: a torch file holding plain data only (loadable with ``weights_only=True``) under a kind/version header.

``{"format": "cvkd", "kind": "detector" | "lm", "version": 1, "meta": {...}, "model": state_dict, ...}``.
Written atomically (temp file + rename) so a run killed mid-save never leaves a broken ``last.pt``.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import io
import lzma
import os
import pkgutil
import re
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError  # noqa: F401 (re-exported)

FORMAT_VERSION = 1
TRUST_ENV = "CVKD_TRUST_CHECKPOINTS"  # =1: unpickle anything (runs code from the file): only for files you trust


def save_checkpoint(path: str | Path, kind: str, model_state: dict, meta: dict, **extra: Any) -> None:
    """Write atomically: a temp file, then a rename. A full disk or a read-only folder is one ``CheckpointError``
    naming the folder; the temp file is removed and the previous checkpoint at ``path`` is left intact."""
    path = Path(path)
    data = {"format": "cvkd", "kind": kind, "version": FORMAT_VERSION, "meta": meta, "model": model_state, **extra}
    tmp = path.with_name(path.name + ".tmp")
    try:
        if path.suffix == ".xz":  # xz-compressed (shipped checkpoints: fp16 weights compress by ~10 %)
            buf = io.BytesIO()
            torch.save(data, buf)
            tmp.write_bytes(lzma.compress(buf.getvalue(), preset=6))
        else:
            torch.save(data, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:100]
        kept = "; the previous one is intact" if path.exists() else ""
        raise CheckpointError(f"{path.parent}: cannot write {path.name} ({reason}){kept}") from None


def _submodules(pkg_name: str) -> list[str]:
    pkg = importlib.import_module(pkg_name)
    return [pkg_name] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> tuple:
    """Classes a detector checkpoint may name: torch and ultralytics network layers, namespaces. Nothing callable
    beyond constructing these classes, so a pickle asking for ``os.system`` or ``builtins.eval`` is refused."""
    names = _submodules("torch.nn.modules")
    try:  # optional: only ultralytics checkpoints need it (not ultralytics.nn.text_model: it tries to pip-install CLIP)
        names += _submodules("ultralytics.nn.modules") + ["ultralytics.nn.tasks"]
    except ImportError:
        pass
    allowed: set = {types.SimpleNamespace}
    for name in names:
        try:
            mod = importlib.import_module(name)
        except Exception:  # an optional submodule whose own dependency is missing
            continue
        for obj in vars(mod).values():
            if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == name:
                allowed.add(obj)
    try:
        from ultralytics.utils import IterableSimpleNamespace

        allowed.add(IterableSimpleNamespace)
    except ImportError:
        pass
    return tuple(sorted(allowed, key=lambda c: f"{c.__module__}.{c.__qualname__}"))


def torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` that never runs code from the file: ``weights_only=True`` plus an allowlist of network-layer
    classes (``_allowed_globals``). ``.xz`` files are decompressed first. Setting ``CVKD_TRUST_CHECKPOINTS=1``
    unpickles anything, for files you trust. Raises ``CheckpointError`` (one line naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    trusted = os.environ.get(TRUST_ENV, "") == "1"
    try:
        src = io.BytesIO(lzma.decompress(path.read_bytes())) if path.suffix == ".xz" else path
        if trusted:
            return torch.load(src, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(list(_allowed_globals())):
            return torch.load(src, map_location=map_location, weights_only=True)
    except Exception as e:
        msg = str(e)
        refused = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", msg)
        if refused and not trusted:
            raise CheckpointError(
                f"{path}: refused to unpickle '{refused.group(1)}' (not a network layer on cvkd's allowlist); "
                f"set {TRUST_ENV}=1 only if you trust this file"
            ) from None
        raise CheckpointError(f"{path}: not a checkpoint or corrupt ({type(e).__name__}: {msg.splitlines()[0][:80] if msg else ''})") from None


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load a cvkd checkpoint, checking its header; one-line errors for missing, corrupt or wrong-kind files."""
    path = Path(path)
    data = torch_load(path, map_location)
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
