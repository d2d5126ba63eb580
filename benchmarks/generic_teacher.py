#!/usr/bin/env python
"""The generic-teacher flow end to end: a teacher of many classes distils a person-only student through a class map.

On ``../shared/datasets/coco128`` (the first 128 COCO train2017 images; its val json is an identical copy, so the
"val" numbers are on the training images: this checks that the flow runs and what it scores, it is not a tuned or
held-out number):

1. a YOLOv8n teacher trained on all 80 COCO classes;
2. a person-only YOLOv8n student (``data.class_map``: person kept, every other category dropped) trained alone;
3. the same student distilled from the 80-class teacher, its person column found by name (``kd.teacher_classes``
   left empty: the student's classes are among the teacher's, the other 79 are ignored).

    python benchmarks/generic_teacher.py --epochs 30 --imgsz 320 --threads 1

Writes benchmarks/results/generic_teacher.csv and prints the table; finished runs are reused.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("YOLO_OFFLINE", "1")
COCO = ROOT.parent / "shared" / "datasets" / "coco128"
RESULTS = ROOT / "benchmarks" / "results" / "generic_teacher.csv"


def person_only_map() -> str:
    """data.class_map keeping person and dropping the other 79 categories (mapped to null)."""
    cats = json.loads((COCO / "annotations" / "instances_train2017.json").read_text())["categories"]
    return json.dumps({c["name"]: ("person" if c["name"] == "person" else None) for c in cats})


def run(args, tool: str, name: str, extra: list[str]) -> dict:
    out = Path(args.out) / name
    if not (out / "final.pt").is_file():
        js, images = COCO / "annotations" / "instances_train2017.json", COCO / "train2017"
        cmd = [sys.executable, str(ROOT / "tools" / tool), f"out={args.out}", f"name={name}",
               f"data.train_json={js}", f"data.train_images={images}", f"data.val_json={js}",
               f"data.val_images={images}", f"data.imgsz={args.imgsz}", f"train.epochs={args.epochs}",
               f"train.threads={args.threads}", "train.seed=0", "model.name=yolov8n.yaml", *extra]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    with (out / "results.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    return {"run": os.path.relpath(out, ROOT), "map": float(last["map"]), "ap50": float(last["ap50"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_generic"))
    args = ap.parse_args()
    if not COCO.is_dir():
        sys.exit(f"error: {COCO} not found")
    person = f"data.class_map={person_only_map()}"
    rows = [("teacher", "80 COCO classes", run(args, "train.py", "teacher80", []))]
    teacher = ROOT / rows[0][2]["run"] / "final.pt"
    rows.append(("student", "person only", run(args, "train.py", "person_student", [person])))
    rows.append(("distilled", "person only, KD from the 80-class teacher (person column by name)",
                 run(args, "distill.py", "person_kd", [person, f"kd.teacher={teacher}", "kd.logit=4.0",
                                                        "kd.feature=6.0", "kd.feature_loss=hint",
                                                        "kd.feature_norm=joint", "kd.feature_mask=teacher_score",
                                                        "kd.feature_adapter=mlp", "kd.box=0.25", "kd.box_loss=ld"])))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["role", "classes", "epochs", "imgsz", "map", "ap50", "run"])
        for role, classes, r in rows:
            w.writerow([role, classes, args.epochs, args.imgsz, f"{r['map']:.4f}", f"{r['ap50']:.4f}", r["run"]])
    print("\n| role | classes | mAP@[.5:.95] (coco128, = train images) | AP50 |\n|---|---|---|---|")
    for role, classes, r in rows:
        print(f"| {role} | {classes} | {r['map']:.4f} | {r['ap50']:.4f} |")
    print(f"\nwritten {RESULTS}")


if __name__ == "__main__":
    main()
