#!/usr/bin/env python
"""Convert YOLO txt / VOC / Penn-Fudan to COCO json and back (same as `cvkd convert`).

A thin script over ``cvkd.commands.convert``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.convert import main

if __name__ == "__main__":
    sys.exit(main())
