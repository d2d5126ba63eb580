#!/usr/bin/env python
"""Detect on images, folders, videos and camera streams (same as `cvkd predict`).

A thin script over ``cvkd.commands.predict``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
