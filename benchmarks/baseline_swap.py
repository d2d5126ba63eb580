#!/usr/bin/env python
"""Diagnostic for the baseline gap to ultralytics: cvkd's training loop fed by ultralytics' own data pipeline.

Runs ``tools/train.py``'s trainer unchanged (optimizer, warm-up, EMA, loss, evaluation) but replaces its training
loader with ultralytics 8.4's ``YOLODataset`` (cache=ram, mosaic + RandomPerspective + HSV + flip, close_mosaic) on
the same CCTV images, so the result isolates the data pipeline from the loop:

    python benchmarks/baseline_swap.py out=runs/bench_cctv name=swap_s0 train.seed=0 train.threads=1

Compare with the cvkd student rows of benchmarks/cctv_distill.py (same config, cvkd's own pipeline) and the
ultralytics_none rows (ultralytics' loop and pipeline). Arguments are config overrides of configs/cctv_student.yaml.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

SRC = ROOT.parent / "shared" / "datasets" / "cctv_people"


class UltralyticsLoader:
    """One epoch of ultralytics batches in cvkd's batch format (img float [0, 1], xyxy pixel boxes)."""

    def __init__(self, loader, imgsz: int):
        self.loader, self.imgsz = loader, imgsz

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        import torch

        for b in self.loader:
            xywh = b["bboxes"] * self.imgsz  # (M, 4) normalised xywh -> pixels
            xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)  # (M, 4)
            yield {"img": b["img"].float() / 255.0, "batch_idx": b["batch_idx"].float(), "cls": b["cls"].view(-1),
                   "bboxes": xyxy}


def main() -> None:
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset

    from cvkd.engine import trainer
    from cvkd.runs import console_logging

    console_logging()
    cfg = trainer.resolve_config(str(ROOT / "configs" / "cctv_student.yaml"), sys.argv[1:])
    hyp = get_cfg(overrides={"imgsz": cfg.data.imgsz, "cache": "ram", "single_cls": True, "seed": cfg.train.seed,
                             "close_mosaic": cfg.data.close_mosaic, "batch": cfg.train.batch})
    data = {"names": {0: "person"}, "nc": 1, "channels": 3}
    ds = build_yolo_dataset(hyp, str(SRC / "train" / "images"), cfg.train.batch, data, mode="train")
    state = {"closed": False, "loader": None}

    def ul_train_loader(cfg_, d, train_data, epoch, batch=0):
        if epoch >= cfg_.train.epochs - cfg_.data.close_mosaic and not state["closed"]:
            ds.close_mosaic(hyp)  # as ultralytics' trainer does for the last close_mosaic epochs
            state["closed"], state["loader"] = True, None
        if state["loader"] is None:
            state["loader"] = build_dataloader(ds, cfg_.train.batch, cfg_.data.workers, shuffle=True, device="cpu")
        return UltralyticsLoader(state["loader"], cfg_.data.imgsz)

    trainer._train_loader = ul_train_loader
    result = trainer.train(cfg)
    print(f"run folder: {result['run_dir']}\nmap={result.get('map', float('nan')):.4f}")


if __name__ == "__main__":
    main()
