#!/usr/bin/env python
"""Diagnostics behind docs/cctv.md's baseline-gap section (CCTV people set, imgsz 320). Each prints one line per model:

    python benchmarks/baseline_diagnostics.py eval-interp WEIGHTS...   # val mAP with frames shrunk by area / linear
    python benchmarks/baseline_diagnostics.py loss WEIGHTS...          # un-augmented box/cls/dfl loss, val and train
    python benchmarks/baseline_diagnostics.py raw-vs-ema RUN...        # val mAP of last.pt's raw and EMA weights
    python benchmarks/baseline_diagnostics.py aug-stats [--n 300]      # training-sample statistics, cvkd vs ultralytics

WEIGHTS: cvkd checkpoints or ultralytics .pt files; RUN: cvkd run folders.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

SRC = ROOT.parent / "shared" / "datasets" / "cctv_people"
DATA = ROOT / "data" / "cctv_people"
CLASS_MAP = {"0": "person", "1": "person"}


def _split(name: str):
    from cvkd.data import load_coco

    return load_coco(DATA / f"{name}.json", SRC / ("valid" if name == "val" else "train") / "images", CLASS_MAP)


def _model(path: str):
    from cvkd.models import load_detector

    m = load_detector(path)
    m.class_names = ["person"]  # ultralytics single_cls checkpoints name the class '0'
    return m


def eval_interp(paths: list[str]) -> None:
    from cvkd.data import CocoDataset
    from cvkd.eval import evaluate

    val = _split("val")
    for interp in ("area", "linear"):
        ds = CocoDataset(val, 320, cache=False, interp=interp)  # eval letterbox from frames shrunk this way
        for p in paths:
            r = evaluate(_model(p).eval().predict, ds, 320, 16, "cpu", quiet=True)
            print(f"{interp:6s} {p}: map {r['map']:.4f} ap50 {r['ap50']:.4f}", flush=True)


def loss(paths: list[str]) -> None:
    import torch
    from torch.utils.data import DataLoader

    from cvkd.data import CocoDataset, collate_fn

    loaders = {k: DataLoader(CocoDataset(_split(k), 320, cache=False), batch_size=16, collate_fn=collate_fn)
               for k in ("val", "train")}
    for p in paths:
        m = _model(p).train()  # training-mode outputs feed the loss; BatchNorm uses its running statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
        parts = []
        for k, dl in loaders.items():
            tot, n = np.zeros(3), 0
            with torch.no_grad():
                for i, b in enumerate(dl):
                    if k == "train" and i >= 8:  # 128 train images are enough
                        break
                    items = m.loss(m(b["img"]), b)[1]
                    tot, n = tot + [items["box"], items["cls"], items["dfl"]], n + 1
            parts.append(f"{k} box/cls/dfl " + "/".join(f"{x:.3f}" for x in tot / n))
        print(f"{p}: " + " | ".join(parts), flush=True)


def raw_vs_ema(runs: list[str]) -> None:
    from cvkd.checkpoint import load_checkpoint
    from cvkd.eval import evaluate

    val = _split("val")
    for run in runs:
        m = _model(f"{run}/final.pt")
        ck = load_checkpoint(f"{run}/last.pt", kind="detector")
        for key in ("model", "ema"):
            m.model.load_state_dict(ck[key])
            r = evaluate(m.eval().predict, val, 320, 16, "cpu", quiet=True)
            print(f"{run} {key}: map {r['map']:.4f} (EMA updates {ck.get('ema_updates')})", flush=True)


def _stats(img: np.ndarray, boxes: np.ndarray) -> dict:
    import cv2

    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    edge = (boxes[:, :2].min(1) <= 0.5) | (boxes[:, 2:].max(1) >= img.shape[0] - 0.5)
    return {"boxes": len(boxes), "box_w": np.median(w) if len(w) else np.nan,
            "box_h": np.median(h) if len(h) else np.nan, "edge_boxes": edge.mean() if len(w) else np.nan,
            "gray": np.all(img == 114, -1).mean(), "hue": hsv[..., 0].mean(), "sat": hsv[..., 1].mean(),
            "val": hsv[..., 2].mean(), "sharpness": cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()}


def aug_stats(n: int) -> None:
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset

    from cvkd.data import CocoDataset

    train = _split("train")
    hyp = get_cfg(overrides={"imgsz": 320, "cache": "ram", "single_cls": True, "seed": 0})
    uds = build_yolo_dataset(hyp, str(SRC / "train" / "images"), 16, {"names": {0: "person"}, "nc": 1, "channels": 3})
    for phase in ("mosaic", "no-mosaic"):
        if phase == "no-mosaic":
            uds.close_mosaic(hyp)
        for interp in ("area", "linear"):
            ds = CocoDataset(train, 320, train=True, mosaic=1.0 if phase == "mosaic" else 0.0, interp=interp,
                             progress=False)
            rows = [_stats(ds[i % len(ds)]["img"].numpy().transpose(1, 2, 0), ds[i % len(ds)]["boxes"].numpy())
                    for i in range(n)]
            _print(f"cvkd {interp:6s} {phase}", rows)
        rows = []
        for i in range(n):
            it = uds[i % len(uds)]
            b = it["bboxes"].numpy() * 320  # (n, 4) normalised xywh -> pixels
            xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
            rows.append(_stats(np.ascontiguousarray(it["img"].numpy().transpose(1, 2, 0)), xyxy))
        _print(f"ultralytics {phase}", rows)


def _print(name: str, rows: list[dict]) -> None:
    print(f"{name:22s} " + " ".join(f"{k}={np.nanmean([r[k] for r in rows]):.3f}" for k in rows[0]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["eval-interp", "loss", "raw-vs-ema", "aug-stats"])
    ap.add_argument("paths", nargs="*", help="checkpoints (eval-interp, loss) or run folders (raw-vs-ema)")
    ap.add_argument("--n", type=int, default=300, help="samples per pipeline for aug-stats (default 300)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    {"eval-interp": lambda: eval_interp(args.paths), "loss": lambda: loss(args.paths),
     "raw-vs-ema": lambda: raw_vs_ema(args.paths), "aug-stats": lambda: aug_stats(args.n)}[args.what]()


if __name__ == "__main__":
    main()
