#!/usr/bin/env python
"""Train a char-level GPT (same as `cvkd train-lm`).

    python tools/train_lm.py --config configs/lm_teacher.yaml

A thin script over ``cvkd.commands.train``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.train import train_lm_main as main

if __name__ == "__main__":
    sys.exit(main())
