#!/usr/bin/env python
"""Sample text from a cvkd LM checkpoint (same as `cvkd generate`).

A thin script over ``cvkd.commands.generate``; needs ``pip install -e .`` (see the README).
"""
import sys

from cvkd.commands.generate import main

if __name__ == "__main__":
    sys.exit(main())
