#!/usr/bin/env python
"""Train a char-level LM without distillation (a teacher, or a from-scratch student).

    python tools/train_lm.py --config configs/lm_teacher.yaml train.steps=3000 name=teacher
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cvkd.lm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(None, "Train a char-level GPT (no teacher). Writes config.yaml, results.csv/.png, last.pt, best.pt, "
                        "train.log into out/name.", require_teacher=False))
