#!/usr/bin/env python
"""Camera deployment benchmark: ONNX Runtime CPU latency, model size and mAP of teacher FP32, student FP32/INT8.

Every model is exported at each ``--imgsz`` (static batch-1 ONNX, ``full`` variant; YOLO26: ``e2e``, the NMS-free
file it deploys), the student is also quantized
to INT8 (ORT static QDQ, calibrated on ``--calib`` frames), and all sessions are timed side by side in one process:
after ``--warmup`` runs each, the ``--runs`` timed runs are interleaved round-robin over the models, so background
load hits every model alike. mAP on the CCTV val split through the same evaluator as training (``--no-map`` skips it).

    python benchmarks/export_latency.py --teacher runs/bench_cctv/teacher_s0/final.pt \\
        --student runs/bench_cctv/all_s0/final.pt --baseline runs/bench_cctv/student_s0/final.pt \\
        --imgsz 320 640 --runs 200 --threads 1

Writes benchmarks/results/export.csv (``--out``) and prints a markdown table. Errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

from cvkd.checkpoint import CheckpointError  # noqa: E402
from cvkd.data import DataError, load_coco  # noqa: E402
from cvkd.deploy import (  # noqa: E402
    CALIB_METHODS,
    ExportError,
    ExportRequest,
    OrtDetector,
    export_set,
    load_for_export,
    markdown_table,
    model_size_mb,
    ort_session,
    score,
)
from cvkd.models import ModelError  # noqa: E402
from cvkd.models.class_map import map_teacher  # noqa: E402

VAL_JSON = ROOT / "data" / "cctv_people" / "val.json"
VAL_IMAGES = ROOT.parent / "shared" / "datasets" / "cctv_people" / "valid" / "images"
CALIB = ROOT.parent / "shared" / "datasets" / "cctv_people" / "train" / "images"
CLASS_MAP = {"0": "person", "1": "person"}
RESULTS = ROOT / "benchmarks" / "results" / "export.csv"
COLUMNS = ["model", "format", "precision", "imgsz", "map", "ap50", "latency_ms_median", "latency_ms_p90", "size_mb",
           "speedup_vs_teacher", "size_vs_teacher", "threads", "runs", "cpu", "onnxruntime", "file"]
TABLE = ["model", "precision", "imgsz", "map", "ap50", "latency_ms_median", "latency_ms_p90", "size_mb",
         "speedup_vs_teacher", "size_vs_teacher"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_side_by_side(files: list[Path], imgsz: int, runs: int, warmup: int, threads: int) -> list[list[float]]:
    """Per file, ``runs`` latencies in ms of one batch-1 inference, interleaved round-robin over the files."""
    sessions = [ort_session(f, threads) for f in files]
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)  # (1, 3, S, S)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for s, feed in zip(sessions, feeds):
        for _ in range(warmup):
            s.run(None, feed)
    times: list[list[float]] = [[] for _ in files]
    for _ in range(runs):
        for i, (s, feed) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, feed)
            times[i].append((time.perf_counter() - t0) * 1e3)
    return times


def export_models(args: argparse.Namespace, imgsz: int) -> list[dict]:
    """Export every given checkpoint at ``imgsz``; one row per ONNX file (model, precision, file)."""
    rows = []
    for role, label in zip(("teacher", "student", "baseline"), args.labels):
        ckpt = getattr(args, role)
        if not ckpt:
            continue
        int8 = role == "student" or (role == "baseline" and args.baseline_int8)
        adapter = load_for_export(ckpt)
        variant = "e2e" if getattr(adapter, "end2end", False) else "full"  # YOLO26: the NMS-free file it deploys
        req = ExportRequest(imgsz=imgsz, out_dir=Path(args.work), stem=label, variants=(variant,), int8=int8,
                            calib=Path(args.calib), calib_frames=args.calib_frames, calib_method=args.calib_method,
                            opset=args.opset)
        print(f"[{imgsz}] exporting {role} ({label}): {ckpt}", flush=True)
        written = export_set(adapter, req)
        for precision in ("fp32", "int8"):
            if f"{variant}_{precision}" in written:
                rows.append({"model": label, "format": "onnx" if variant == "full" else "onnx-e2e",
                             "precision": precision, "imgsz": imgsz, "file": written[f"{variant}_{precision}"]})
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        raise ExportError("--runs and --threads must be >= 1, --warmup >= 0")
    ExportRequest(int8=True, calib=Path(args.calib), calib_method=args.calib_method, opset=args.opset).check()
    data = None if args.no_map else load_coco(args.val_json, args.val_images, CLASS_MAP)
    try:
        teacher_classes = yaml.safe_load(args.teacher_classes) if args.teacher_classes else None
    except yaml.YAMLError:
        raise ExportError(f"--teacher-classes {args.teacher_classes!r} is not a YAML/JSON mapping") from None
    for role in ("teacher", "student", "baseline"):  # fail on a bad checkpoint before any slow work
        if getattr(args, role):
            load_for_export(getattr(args, role))
    all_rows: list[dict] = []
    for imgsz in args.imgsz:
        rows = export_models(args, imgsz)
        print(f"[{imgsz}] timing {len(rows)} models x {args.runs} runs ({args.threads} thread(s))", flush=True)
        times = time_side_by_side([r["file"] for r in rows], imgsz, args.runs, args.warmup, args.threads)
        for r, t in zip(rows, times):
            r.update(latency_ms_median=statistics.median(t), latency_ms_p90=float(np.percentile(t, 90)),
                     size_mb=model_size_mb(r["file"]), threads=args.threads, runs=args.runs)
            if data is not None:
                print(f"[{imgsz}] mAP of {r['model']} {r['precision']}", flush=True)
                detector = OrtDetector(r["file"], args.threads)
                if r["model"] == args.labels[0] and teacher_classes:  # scored on the data's classes
                    detector = map_teacher(detector, data.class_names, teacher_classes)
                m = score(detector, data, imgsz)
                r.update(map=m["map"], ap50=m["ap50"])
        teacher = next((r for r in rows if r["model"] == args.labels[0] and r["precision"] == "fp32"), None)
        for r in rows:
            if teacher is not None:
                r["speedup_vs_teacher"] = teacher["latency_ms_median"] / r["latency_ms_median"]
                r["size_vs_teacher"] = r["size_mb"] / teacher["size_mb"]
        all_rows += rows
    import onnxruntime

    for r in all_rows:
        path = Path(r["file"]).resolve()  # repo-relative when inside the repo, so the CSV is the same on every machine
        r.update(cpu=cpu_name(), onnxruntime=onnxruntime.__version__,
                 file=str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path))
    write_csv(all_rows, Path(args.out), args.append)
    print(f"\nONNX Runtime {onnxruntime.__version__} CPU ({cpu_name()}), batch 1, {args.threads} intra-op thread(s), "
          f"median/p90 of {args.runs} runs after {args.warmup} warm-up\n")
    print(markdown_table(all_rows, TABLE))
    print(f"\nwrote {args.out}")
    return all_rows


def write_csv(rows: list[dict], path: Path, append: bool = False) -> None:
    """Write ``rows``; with ``append``, keep the CSV's other rows (same model/format/precision/imgsz: replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if append and path.is_file():
        key = ("model", "format", "precision", "imgsz")
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
        new_keys = {tuple(str(r[k]) for k in key) for r in rows}
        rows = [r for r in old if tuple(r[k] for k in key) not in new_keys] + rows
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="teacher checkpoint (FP32 row; the reference of the ratio columns)")
    ap.add_argument("--teacher-classes", default="",
                    help="teacher class -> data class map, scored as kd.teacher_classes merges them (e.g. "
                         "'{\"0\": person, \"1\": person}' for the shipped two-class teacher)")
    ap.add_argument("--student", required=True, help="distilled student checkpoint (FP32 and INT8 rows)")
    ap.add_argument("--baseline", help="the same student trained without KD, for reference (FP32 row)")
    ap.add_argument("--baseline-int8", action="store_true", help="also quantize --baseline")
    ap.add_argument("--imgsz", type=int, nargs="+", default=[320, 640], help="input sizes (default 320 640)")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per model (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed runs per model first (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    ap.add_argument("--calib", default=str(CALIB), help="INT8 calibration images (default: CCTV train images)")
    ap.add_argument("--calib-frames", type=int, default=100, help="calibration images, evenly spaced (default 100)")
    ap.add_argument("--calib-method", choices=list(CALIB_METHODS), default="minmax", help="default minmax")
    ap.add_argument("--val-json", default=str(VAL_JSON), help="mAP ground truth (default data/cctv_people/val.json)")
    ap.add_argument("--val-images", default=str(VAL_IMAGES), help="its image folder")
    ap.add_argument("--no-map", action="store_true", help="latency and size only")
    ap.add_argument("--work", default=str(ROOT / "runs" / "export_bench"), help="where the ONNX files go")
    ap.add_argument("--out", default=str(RESULTS), help="CSV to write (default benchmarks/results/export.csv)")
    ap.add_argument("--append", action="store_true", help="keep the CSV's other rows (rows of the same model, format, "
                    "precision and imgsz are replaced)")
    ap.add_argument("--labels", nargs=3, default=["teacher", "student", "baseline"], metavar=("T", "S", "B"),
                    help="model names of the teacher, student and baseline rows (default teacher student baseline)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run(args)
    except (ExportError, ModelError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
