#!/usr/bin/env python
"""Shrink a cvkd detector checkpoint for shipping (same as `cvkd slim`).

A thin script over ``cvkd.commands.slim``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.slim import main

if __name__ == "__main__":
    sys.exit(main())
