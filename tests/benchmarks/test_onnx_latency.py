"""benchmarks/onnx_latency.py: files timed side by side, with what ORT runs of each, as a subprocess."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "onnx_latency.py"


def test_times_two_files_and_counts_their_float_ops(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.SiLU()).eval()
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for path in (a, b):
        torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(path), dynamo=False, opset_version=13)
    out = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--runs", "3", "--warmup", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert "3 interleaved runs per file, imgsz 32, 1 thread(s)" in out
    # float files: no INT8 kernel, one float conv
    rows = [line for line in out.splitlines() if line.startswith(("| a.onnx", "| b.onnx"))]
    assert len(rows) == 2 and all(r.split("|")[4].strip() == "0" for r in rows)
    assert all(r.split("|")[5].strip().startswith("1 / ") for r in rows)
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing.onnx")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip() == f"error: {tmp_path / 'missing.onnx'}: no such ONNX file"
