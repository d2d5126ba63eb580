"""The benchmark scripts are imported as their runs import them: a fresh module from benchmarks/ on sys.path."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def import_benchmark(monkeypatch):
    """``import_benchmark("qat")``: benchmarks/qat.py, imported anew (a test's monkeypatching never leaks)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str):
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load
