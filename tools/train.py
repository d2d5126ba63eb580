#!/usr/bin/env python
"""Train a detector without a teacher (same as `cvkd train`).

    python tools/train.py --config configs/cctv_student.yaml train.epochs=30 name=student_s0

A thin script over ``cvkd.commands.train``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.train import train_main as main

if __name__ == "__main__":
    sys.exit(main())
