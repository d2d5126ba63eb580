#!/usr/bin/env python
"""Has a training converged? The strong-teacher issue's rule on a run's per-epoch val mAP: the mean over the last 10 %
of epochs within 0.005 of the mean over the 10 % before.

    python benchmarks/converged.py checkpoints/cctv_yolov8s_320_e128_ultralytics.results.csv
    python benchmarks/converged.py stage3.csv stage4.csv      # stages in order, read as one run
    python benchmarks/converged.py runs/bench_cctv_e60/student_linear_s0/results.csv --fraction 0.2
    python benchmarks/converged.py --stages e128.csv e158.csv e188.csv   # restarted stages: their ends compared

A training in restarted stages (each a fresh schedule from the last one's weights, as the CPU teachers are trained)
cannot be read as one run: every restart's warm-up dips the curve, so the window before always lies lower. With
``--stages`` the rule compares the ends of the stages instead: the mean over the last ``--fraction`` of the last
stage's epochs against the same window of the stage before; converged when a whole further stage raised it by at most
``--tol``.

Reads cvkd's ``results.csv`` (``map``) and ultralytics' (``metrics/mAP50-95(B)``, its own val). Prints one line per
file set and exits 1 when not converged (2 on bad input), so that a staged training script can loop on it.
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def epoch_maps(path: Path) -> list[float]:
    """Val mAP@[.5:.95] per epoch, in order (epochs without an evaluation skipped)."""
    if not path.is_file():
        fail(f"{path}: not found")
    with path.open() as f:
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(f)]
    key = next((k for k in ("map", "metrics/mAP50-95(B)") if rows and k in rows[0]), None)
    if key is None:
        fail(f"{path}: no 'map' or 'metrics/mAP50-95(B)' column (not a results.csv of cvkd or ultralytics)")
    return [float(r[key]) for r in rows if r[key] not in ("", "nan")]


def judge(maps: list[float], fraction: float = 0.1, tol: float = 0.005) -> tuple[bool, float, float, int]:
    """(converged, mean of the last window, mean of the window before, window length in epochs)."""
    n = max(1, math.ceil(len(maps) * fraction))
    if len(maps) < 2 * n:
        raise ValueError(f"{len(maps)} evaluated epochs: need at least {2 * n} for two windows of {n}")
    last, before = statistics.mean(maps[-n:]), statistics.mean(maps[-2 * n:-n])
    return last - before <= tol, last, before, n


def judge_stages(stages: list[list[float]], fraction: float = 0.1, tol: float = 0.005) -> tuple[bool, list[float], int]:
    """(converged, mean of each stage's last window, window length): the window is ``fraction`` of the last stage's
    epochs, taken at the end of every stage."""
    if len(stages) < 2:
        raise ValueError(f"{len(stages)} stage: --stages needs at least two")
    n = max(1, math.ceil(len(stages[-1]) * fraction))
    if any(len(maps) < n for maps in stages):
        raise ValueError(f"a stage has fewer than {n} evaluated epochs")
    ends = [statistics.mean(maps[-n:]) for maps in stages]
    return ends[-1] - ends[-2] <= tol, ends, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+", type=Path, help="results.csv of the run (several: its stages, in order)")
    ap.add_argument("--fraction", type=float, default=0.1, help="window, as a fraction of all epochs (default 0.1)")
    ap.add_argument("--tol", type=float, default=0.005, help="largest rise of the last window that counts as "
                    "converged (default 0.005)")
    ap.add_argument("--stages", action="store_true", help="each csv is a restarted stage: compare the stages' ends")
    args = ap.parse_args()
    if args.stages:
        try:
            ok, ends, n = judge_stages([epoch_maps(p) for p in args.csv], args.fraction, args.tol)
        except ValueError as e:
            fail(str(e))
        print(f"{len(ends)} stages, mean of each stage's last {n} epochs: {' -> '.join(f'{e:.4f}' for e in ends)}; "
              f"last stage rise {ends[-1] - ends[-2]:+.4f} -> {'converged' if ok else 'not converged'} "
              f"(tolerance {args.tol})")
        sys.exit(0 if ok else 1)
    maps = [m for p in args.csv for m in epoch_maps(p)]
    try:
        ok, last, before, n = judge(maps, args.fraction, args.tol)
    except ValueError as e:
        fail(str(e))
    print(f"{len(maps)} epochs: last {n} mean {last:.4f}, the {n} before {before:.4f}, rise {last - before:+.4f} "
          f"-> {'converged' if ok else 'not converged'} (tolerance {args.tol})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
