"""Shared command line of tools/train_lm.py and tools/distill_lm.py: a YAML config plus ``key=value`` overrides."""
from __future__ import annotations

from ..checkpoint import CheckpointError
from ..runs import tool_main
from .config import LMRunConfig
from .data import DataError
from .distill import TrainingError


def main(argv: list[str] | None, description: str, require_teacher: bool) -> int:
    from .train import resolve_config, train

    return tool_main(argv, description, LMRunConfig, resolve_config, train, (DataError, CheckpointError, TrainingError),
                     require_teacher, ("tools/train_lm.py", "tools/distill_lm.py"), ("val_loss", "val_ppl", "val_bpc"))
