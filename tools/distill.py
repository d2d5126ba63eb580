#!/usr/bin/env python
"""Distil a student detector from a teacher: the student's own loss plus the KD terms chosen in the config.

    python tools/distill.py --config configs/cctv_distill.yaml kd.teacher=runs/teacher/best.pt
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cvkd.engine.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(None, "Distil a student from a teacher (kd.teacher). Same loop, data and schedule as "
                        "tools/train.py, plus the logit/feature/box KD terms.", require_teacher=True))
