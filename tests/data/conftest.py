"""Fixtures of tests/data (helpers live in tinydata.py, shared with tests/eval)."""
from tinydata import tiny  # noqa: F401  (fixture)
