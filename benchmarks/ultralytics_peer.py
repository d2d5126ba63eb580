"""The peer rows of the distillation benchmarks: ultralytics' own trainer, without and with its built-in distillation.

Used by benchmarks/cctv_distill.py (``ultralytics_none`` and ``ultralytics_kd`` rows). Kept apart so that the
benchmark itself stays about cvkd; everything here is plain `yolo detect train` plus scoring with cvkd's evaluator.
"""
from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
from pathlib import Path


def model_stats(model, imgsz: int) -> tuple[float, float]:
    """(parameters in millions, GFLOPs of one forward pass at imgsz x imgsz)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters()) / 1e6
    model = model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 3, imgsz, imgsz))
    return params, fc.get_total_flops() / 1e9


def ultralytics_data_yaml(ds: dict, src: Path, data: Path) -> Path:
    """A data yaml for ultralytics: the source as it is when it is in YOLO format, else YOLO labels written from the
    converted COCO json under ``data/yolo`` with the images linked beside them (the layout ultralytics expects)."""
    path = data / "ultralytics.yaml"
    if ds["convert"][0] == "yolo":
        path.write_text(f"path: {src}\ntrain: {ds['train_images']}\nval: {ds['val_images']}\n"
                        "names:\n  0: '0'\n  1: '1'\n")
        return path
    from cvkd.data.convert import coco_to_yolo

    root = data / "yolo"
    for split, images in (("train", ds["train_images"]), ("val", ds["val_images"])):
        names = coco_to_yolo(data / f"{split}.json", root / "labels" / split)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for label in (root / "labels" / split).rglob("*.txt"):
            rel = label.relative_to(root / "labels" / split).with_suffix("")
            image = next((src / images).glob(f"{rel}.*"))
            link = root / "images" / split / rel.with_suffix(image.suffix)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(image)
    lines = "".join(f"  {i}: '{n}'\n" for i, n in enumerate(names))
    path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{lines}")
    return path


def run_ultralytics(args, name: str, seed: int, teacher_pt: Path | None, data_yaml: Path) -> Path:
    """Plain `yolo detect train` of the student (``args.student``: yolov8n, yolo26n.yaml, ...; single_cls merges the
    classes into one, like cvkd's class_map); with ``teacher_pt``, ultralytics' built-in distillation
    (``distill_model=<teacher> dis=6.0``). Resumes a killed run."""
    student = getattr(args, "student", "yolov8n")
    if not student.startswith("yolo"):
        sys.exit(f"error: the ultralytics rows train a YOLO student, not {student}")
    project = Path(args.out).resolve() / "ultralytics"
    run = project / name
    if (run / "weights" / "last.pt").is_file() and (run / "results.csv").is_file():
        with (run / "results.csv").open() as f:
            if len(list(csv.DictReader(f))) >= args.epochs:
                return run
    model = student if student.endswith(".yaml") else f"{student}.yaml"
    cmd = ["yolo", "detect", "train", f"model={model}", f"data={data_yaml}", f"epochs={args.epochs}",
           f"imgsz={args.imgsz}", f"batch={args.batch}", "workers=2", f"device={args.device}", "pretrained=False",
           "amp=False", "cache=ram", "plots=False", f"seed={seed}", "single_cls=True", f"project={project}",
           f"name={name}", "exist_ok=True", "val=True"]
    if teacher_pt is not None:
        cmd += [f"distill_model={teacher_pt}", "dis=6.0"]
    if (run / "weights" / "last.pt").is_file():
        # model= is needed: without it the CLI first builds its default model (a download, offline failure)
        cmd = ["yolo", "detect", "train", f"model={run / 'weights' / 'last.pt'}", "resume=True"]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "YOLO_OFFLINE": "1", **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    subprocess.run(cmd, check=True, env=env)
    return run


def score_ultralytics(run: Path, args, val) -> dict:
    """mAP/AP50 of the run's last weights on ``val`` (a CocoData) through cvkd's evaluator, size and s/epoch, and the
    scored detections (``preds``)."""
    from cvkd.eval import evaluate
    from cvkd.models import load_detector

    model = load_detector(run / "weights" / "last.pt")
    model.class_names = ["person"]  # single_cls: ultralytics keeps one class under the source's first name
    preds: list = []
    metrics = evaluate(model.eval().predict, val, args.imgsz, 16, "cpu", quiet=True, predictions_out=preds)
    with (run / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    times = [float(r["time"]) for r in rows]  # seconds since the (last) start: a resumed run counts from 0 again
    per_epoch = [t - prev if t > prev else t for prev, t in zip([0.0, *times], times)]
    params, gflops = model_stats(model, args.imgsz)
    return {"map": metrics["map"], "ap50": metrics["ap50"], "params_m": params, "gflops": gflops,
            "sec_per_epoch": statistics.mean(per_epoch), "preds": preds}
