#!/usr/bin/env python
"""Pseudo-label images or a video with a teacher (same as `cvkd pseudo-label`).

A thin script over ``cvkd.commands.pseudo_label``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.pseudo_label import main

if __name__ == "__main__":
    sys.exit(main())
