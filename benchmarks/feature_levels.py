#!/usr/bin/env python
"""Trace the feature-hint term per pyramid level during the first steps of a distillation run.

A diagnostic for a diverging feature term: it runs a distillation (the arguments of `cvkd distill`) in this process,
records every level of the hint term (`kd.feature_loss=hint`) through the trainer's `kd_term` callback for `--steps`
training steps, then stops and prints, per level: the mask
weight per image, the median and largest per-level loss, the teacher's largest |feature|, and the largest share of
one cell in the level's loss. A level whose mask is ~0 everywhere but whose loss is as large as the others' is what
`kd.feature_norm=joint` is for (docs/pseudo_labels.md).

    python benchmarks/feature_levels.py --steps 40 --csv runs/trace.csv -- -c configs/cctv_distill.yaml \\
        kd.teacher=runs/bench_unlabeled/teacher_labeled_s1/final.pt out=runs/trace name=soft_s1 ...

Each step of a run with `data.unlabeled` traces each level twice (labelled and unlabelled batch).
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

from cvkd.engine.trainer import resolve_config, train  # noqa: E402
from cvkd.errors import CvkdError  # noqa: E402

COLUMNS = ["call", "level", "loss", "mask_per_image", "teacher_max", "top_cell_share"]


class StopTrace(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="training steps to trace (labelled batches)")
    ap.add_argument("--csv", default="", help="also write every traced call to this CSV")
    ap.add_argument("distill_args", nargs=argparse.REMAINDER, help="arguments of cvkd distill, after --")
    args = ap.parse_args()
    distill_args = args.distill_args[1:] if args.distill_args[:1] == ["--"] else args.distill_args
    config = None
    if distill_args[:1] in (["-c"], ["--config"]):
        config, distill_args = distill_args[1], distill_args[2:]
    overrides = distill_args
    rows: list[dict] = []
    steps = {"n": 0}

    def trace(info: dict) -> None:
        if info["loss"] != "hint":
            return
        num, den, f_s, f_t, mask = info["num"], info["den"], info["f_s"], info["f_t"], info["mask"]
        with torch.no_grad():
            sq = (f_s.float() - f_t.float()).pow(2).mean(1)  # (B, H, W)
            w = torch.ones_like(sq) if mask is None else mask.float()  # (B, H, W)
            rows.append({"call": len(rows), "level": info["level"], "loss": (num / den.clamp_min(1e-12)).item(),
                         "mask_per_image": den.item() / f_t.shape[0], "teacher_max": f_t.float().abs().max().item(),
                         "top_cell_share": ((sq * w).max() / (sq * w).sum().clamp_min(1e-12)).item()})

    def count_step(info: dict) -> None:
        steps["n"] += 1
        if steps["n"] >= args.steps:
            raise StopTrace

    try:
        train(resolve_config(config, overrides), callbacks={"kd_term": [trace], "batch_end": [count_step]})
    except StopTrace:
        pass
    except CvkdError as e:
        sys.exit(f"error: {e}")
    if not rows:
        sys.exit("error: no feature hint term was computed (needs kd.feature > 0 and kd.feature_loss=hint)")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    print(f"\n{len(rows)} calls traced\n\n| level | mask weight per image | loss median | loss max | teacher max |feature| "
          "| largest one-cell share |\n|---|---|---|---|---|---|")
    for level in sorted({x["level"] for x in rows}):
        r = [x for x in rows if x["level"] == level]
        losses = [x["loss"] for x in r]
        print(f"| {level} | {statistics.mean(x['mask_per_image'] for x in r):.3f} | {statistics.median(losses):.3f} "
              f"| {max(losses):.2f} | {max(x['teacher_max'] for x in r):.1f} "
              f"| {max(x['top_cell_share'] for x in r):.3f} |")


if __name__ == "__main__":
    main()
