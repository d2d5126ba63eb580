#!/usr/bin/env python
"""Time exported ONNX files side by side, and show what ONNX Runtime runs of each (INT8 kernels or float ops).

Every file gets ``--warmup`` untimed runs, then ``--runs`` timed batch-1 runs interleaved round-robin over the files
(benchmarks/export_latency.py's timing), so background load hits every file alike: the ratios hold on a busy machine,
the milliseconds only on an idle one. Per file it also counts the ops of the graph ORT optimised from it: how many
run as INT8 kernels (``QLinear*``), how many float ops remain between a dequantize and a quantize.

    python benchmarks/onnx_latency.py runs/export/a_320_full_int8.onnx runs/export/b_320_full_int8_qat.onnx \\
        --runs 200 --threads 1

Prints a markdown table; a missing file or a dynamic input size without --imgsz is one error line.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_latency import time_side_by_side  # noqa: E402

FLOAT_OPS = ("Conv", "Sigmoid", "Mul", "Add", "Concat")  # float in an INT8 file: a dequantize -> op -> quantize


def ort_ops(path: Path) -> collections.Counter:
    """Op counts of the graph ORT's CPU provider optimises ``path`` into."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # fusions, no CPU layouts
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="ONNX files of one input size")
    ap.add_argument("--imgsz", type=int, default=0, help="input size (default: read from the first file)")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per file (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed runs per file first (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    args = ap.parse_args()
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        sys.exit(f"error: {missing[0]}: no such ONNX file")
    if not args.imgsz:
        import onnx

        dims = onnx.load(str(args.files[0]), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        args.imgsz = dims[-1].dim_value
        if not args.imgsz:
            sys.exit(f"error: {args.files[0]}: dynamic input size; give --imgsz")
    times = time_side_by_side(args.files, args.imgsz, args.runs, args.warmup, args.threads)
    print(f"\n{args.runs} interleaved runs per file, imgsz {args.imgsz}, {args.threads} thread(s)\n")
    print("| file | median ms | p90 ms | INT8 kernels (QLinear*) | float " + " / ".join(FLOAT_OPS) + " |")
    print("|---|---|---|---|---|")
    for f, ts in zip(args.files, times):
        ops = ort_ops(f)
        int8 = sum(n for op, n in ops.items() if op.startswith("QLinear"))
        p90 = statistics.quantiles(ts, n=10)[-1]
        print(f"| {f.name} | {statistics.median(ts):.2f} | {p90:.2f} | {int8} | "
              + " / ".join(str(ops[op]) for op in FLOAT_OPS) + " |")


if __name__ == "__main__":
    main()
