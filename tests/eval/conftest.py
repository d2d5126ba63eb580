"""Fixtures of tests/eval: the tiny-data helpers of tests/data."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from tinydata import tiny  # noqa: E402, F401  (fixture)
