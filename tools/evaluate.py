#!/usr/bin/env python
"""COCO mAP of a model or a predictions json (same as `cvkd val`).

A thin script over ``cvkd.commands.val``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.val import main

if __name__ == "__main__":
    sys.exit(main())
