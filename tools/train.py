#!/usr/bin/env python
"""Train a detector without distillation (a teacher, or a baseline student).

    python tools/train.py --config configs/cctv_student.yaml train.epochs=30 name=student_s0
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cvkd.engine.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(None, "Train a detector (no teacher). Writes config.yaml, results.csv/.png, last.pt, best.pt, "
                        "train.log into out/name.", require_teacher=False))
