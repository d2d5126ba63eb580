"""``cvkd train|distill|train-lm|distill-lm``: a YAML config plus ``key=value`` overrides, every key in ``--help``."""
from __future__ import annotations

from ..runs import tool_main

DET_TRAIN = ("Train a detector without a teacher (a teacher, or a baseline student). Writes config.yaml, "
             "results.csv/.png, last.pt, best.pt, final.pt, train.log into out/name.")
DET_DISTILL = ("Distil a student detector from a teacher (kd.teacher=...). Writes config.yaml, results.csv/.png, "
               "last.pt, best.pt, final.pt, train.log into out/name.")
LM_TRAIN = "Train a char-level GPT (teacher or baseline student). Writes config.yaml, results.csv/.png, last.pt, " \
           "best.pt, train.log into out/name."
LM_DISTILL = "Distil a char-level GPT student from a teacher LM checkpoint. Writes config.yaml, results.csv/.png, " \
             "last.pt, best.pt, train.log into out/name."


def _detector(argv: list[str] | None, description: str, require_teacher: bool) -> int:
    from ..engine.config import RunConfig
    from ..engine.trainer import resolve_config, train

    return tool_main(argv, description, RunConfig, resolve_config, train, require_teacher,
                     ("cvkd train", "cvkd distill"), ("map", "ap50", "ap75"))


def _lm(argv: list[str] | None, description: str, require_teacher: bool) -> int:
    from ..lm.config import LMRunConfig
    from ..lm.train import resolve_config, train

    return tool_main(argv, description, LMRunConfig, resolve_config, train, require_teacher,
                     ("cvkd train-lm", "cvkd distill-lm"), ("val_loss", "val_ppl", "val_bpc"))


def train_main(argv: list[str] | None = None) -> int:
    return _detector(argv, DET_TRAIN, require_teacher=False)


def distill_main(argv: list[str] | None = None) -> int:
    return _detector(argv, DET_DISTILL, require_teacher=True)


def train_lm_main(argv: list[str] | None = None) -> int:
    return _lm(argv, LM_TRAIN, require_teacher=False)


def distill_lm_main(argv: list[str] | None = None) -> int:
    return _lm(argv, LM_DISTILL, require_teacher=True)
