#!/usr/bin/env python
"""Distil a char-level GPT student (same as `cvkd distill-lm`).

    python tools/distill_lm.py --config configs/lm_distill.yaml kd.teacher=runs/lm/teacher/best.pt

A thin script over ``cvkd.commands.train``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.train import distill_lm_main as main

if __name__ == "__main__":
    sys.exit(main())
