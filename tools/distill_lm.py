#!/usr/bin/env python
"""Distil a char-level student LM from a teacher checkpoint (online teacher, or an offline logit cache).

    python tools/distill_lm.py --config configs/lm_distill.yaml kd.teacher=runs/lm/teacher/best.pt kd.temperature=2
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cvkd.lm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(None, "Distil a char-level GPT student from a teacher LM checkpoint. Writes config.yaml, "
                        "results.csv/.png, last.pt, best.pt, train.log into out/name.", require_teacher=True))
