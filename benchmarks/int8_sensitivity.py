#!/usr/bin/env python
"""Where an INT8 scheme loses accuracy: a trained student scored with fake quantization switched on in parts.

    python benchmarks/int8_sensitivity.py runs/student/final.pt --scheme npu --threads 1

The student is prepared as QAT prepares it (``cvkd.deploy.qat``: BatchNorm folded, every convolution, SiLU and residual
sum fake-quantized), its activation ranges set on ``--calib-frames`` train frames, then scored on CCTV val by cvkd's
evaluator in PyTorch (no ONNX file, no training) with quantization on in parts: weights only, activations only, the
detection head's activations only, every activation but the head's. The last rows set the ranges from percentiles of
the calibration activations instead of their min/max (what PTQ's percentile calibration does). Prints a table and
writes ``benchmarks/results/int8_sensitivity.csv`` (one row per student, scheme and variant; a rerun replaces its rows).
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "datasets" / "cctv_people"
RESULTS = ROOT / "benchmarks" / "results" / "int8_sensitivity.csv"
COLUMNS = ["student", "scheme", "variant", "ranges", "map", "vs_fp32"]
QUANTILES = (0.9999, 0.999)


def observers(model: torch.nn.Module) -> dict:
    from cvkd.deploy.qat import RangeObserver

    return {n: m for n, m in model.named_modules() if isinstance(m, RangeObserver)}


def head_prefix(model: torch.nn.Module) -> str:
    """``model.<i>.``: the last module of an ultralytics model, its detection head."""
    return f"model.{len(model.model) - 1}."


def set_quantized(model: torch.nn.Module, weights: bool, acts) -> None:
    """Fake quantization on in parts: the weights of every convolution or none, and the activations whose observer
    name ``acts(name)`` accepts (an observer switched off passes its tensor through, as before calibration)."""
    from cvkd.deploy.qat import FakeQuantConv

    for m in model.modules():
        if isinstance(m, FakeQuantConv):
            m.quantized_weight = (types.MethodType(FakeQuantConv.quantized_weight, m) if weights
                                  else (lambda scale, m=m: m.conv.weight))
    for name, obs in observers(model).items():
        on = bool(acts(name))
        obs.seen.fill_(on)
        obs._calibrated = on


def quantile_ranges(model: torch.nn.Module, batches, q: float, sample: int = 1_000_000) -> None:
    """Set every observer's range to the ``1-q`` / ``q`` quantiles of what it sees (a random sample of at most
    ``sample`` values per batch), averaged over the batches, instead of the moving min/max."""
    gen = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def update(self, x):
        v = x.detach().flatten().float()
        if v.numel() > sample:
            v = v[torch.randint(0, v.numel(), (sample,), generator=gen)]
        lo, hi = torch.quantile(v, 1 - q), torch.quantile(v, q)
        self._q_sum = self._q_sum + torch.stack([lo, hi]) if hasattr(self, "_q_sum") else torch.stack([lo, hi])
        self._q_n = getattr(self, "_q_n", 0) + 1
        self.lo.copy_(self._q_sum[0] / self._q_n), self.hi.copy_(self._q_sum[1] / self._q_n)
        self.seen.fill_(True)
        self._calibrated = True

    obs = list(observers(model).values())
    for o in obs:
        o.update = types.MethodType(update, o)
    from cvkd.deploy.qat import calibrate

    calibrate(model, batches)
    for o in obs:  # back to the class's min/max update
        for a in ("update", "_q_sum", "_q_n"):
            o.__dict__.pop(a, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("student", help="trained FP32 student checkpoint (e.g. runs/bench_cctv/ws_..._s0_ul_e158/final.pt)")
    ap.add_argument("--scheme", default="npu", choices=["per_channel", "npu"])
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--calib-frames", type=int, default=96, help="train frames that set the ranges (default 96)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from cvkd.data import load_coco
    from cvkd.data.dataset import CocoDataset
    from cvkd.deploy.qat import calibrate, freeze_ranges, prepare_qat
    from cvkd.eval import evaluate
    from cvkd.models import load_detector

    class_map = {"0": "person", "1": "person"}
    val = CocoDataset(load_coco(ROOT / "data/cctv_people/val.json", SHARED / "valid/images", class_map), args.imgsz,
                      train=False, progress=False)
    train = CocoDataset(load_coco(ROOT / "data/cctv_people/train.json", SHARED / "train/images", class_map),
                        args.imgsz, train=False, progress=False)
    batch = 16
    calib = [torch.stack([train[i]["img"] for i in range(j, min(j + batch, args.calib_frames))]).float() / 255
             for j in range(0, args.calib_frames, batch)]  # (B, 3, S, S)
    fp32 = load_detector(args.student)

    def score(adapter) -> float:
        return evaluate(adapter.eval().predict, val, args.imgsz, batch, "cpu", quiet=True)["map"]

    def prepared(ranges: str):
        adapter = copy.deepcopy(fp32)
        prepare_qat(adapter.model, args.scheme)
        if ranges == "minmax":
            calibrate(adapter.model, iter(calib))
        else:
            quantile_ranges(adapter.model, iter(calib), float(ranges.split()[1]))
        freeze_ranges(adapter.model)
        return adapter

    base = score(fp32)
    rows = [{"variant": "FP32", "ranges": "", "map": base}]
    print(f"FP32 {base:.4f}", flush=True)
    adapter = prepared("minmax")
    head = head_prefix(adapter.model)
    variants = [("weights and activations", True, lambda n: True), ("weights only", True, lambda n: False),
                ("activations only", False, lambda n: True),
                ("head activations only", False, lambda n: n.startswith(head)),
                ("activations but the head's", False, lambda n: not n.startswith(head))]
    for label, weights, acts in variants:
        set_quantized(adapter.model, weights, acts)
        rows.append({"variant": label, "ranges": "minmax", "map": score(adapter)})
        print(f"{label} (min/max) {rows[-1]['map']:.4f}", flush=True)
    for q in QUANTILES:
        adapter = prepared(f"quantile {q}")
        for label, weights, acts in variants[:1] + variants[2:3]:
            set_quantized(adapter.model, weights, acts)
            rows.append({"variant": label, "ranges": f"quantile {q}", "map": score(adapter)})
            print(f"{label} (quantile {q}) {rows[-1]['map']:.4f}", flush=True)
    student = os.path.relpath(Path(args.student).resolve(), ROOT)
    for r in rows:
        r.update(student=student, scheme=args.scheme, vs_fp32=r["map"] - base)
    write(rows)
    print(f"\n{student}, scheme {args.scheme}, ranges on {args.calib_frames} train frames, CCTV val\n")
    print("| quantized | ranges | mAP@[.5:.95] | vs FP32 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['ranges'] or '-'} | {r['map']:.4f} | {r['vs_fp32']:+.4f} |")


def write(rows: list[dict]) -> None:
    old = []
    if RESULTS.is_file():
        with RESULTS.open() as f:
            key = {(r["student"], r["scheme"]) for r in rows}
            old = [r for r in csv.DictReader(f) if (r["student"], r["scheme"]) not in key]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in [*old, *rows]:
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})


if __name__ == "__main__":
    main()
