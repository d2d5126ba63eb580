#!/usr/bin/env python
"""Distil a student detector from a teacher (same as `cvkd distill`).

    python tools/distill.py --config configs/cctv_distill.yaml kd.teacher=checkpoints/teacher.pt

A thin script over ``cvkd.commands.train``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.train import distill_main as main

if __name__ == "__main__":
    sys.exit(main())
