"""Shared command line of tools/train.py and tools/distill.py: a YAML config plus ``key=value`` overrides."""
from __future__ import annotations

from ..checkpoint import CheckpointError
from ..models import ModelError
from ..runs import tool_main
from .config import RunConfig


def main(argv: list[str] | None, description: str, require_teacher: bool) -> int:
    from ..data import DataError
    from .trainer import TrainingError, resolve_config, train

    return tool_main(argv, description, RunConfig, resolve_config, train,
                     (DataError, ModelError, CheckpointError, TrainingError), require_teacher,
                     ("tools/train.py", "tools/distill.py"), ("map", "ap50", "ap75"))
