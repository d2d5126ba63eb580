#!/usr/bin/env python
"""Export a detector to ONNX FP32/INT8, OpenVINO IR (same as `cvkd export`).

A thin script over ``cvkd.commands.export``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.export import main

if __name__ == "__main__":
    sys.exit(main())
