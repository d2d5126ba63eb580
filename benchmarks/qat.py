#!/usr/bin/env python
"""INT8 that keeps the FP32 accuracy: PTQ vs QAT vs QAT + KD, per INT8 scheme, on CCTV val.

For a trained FP32 student, under each ``--schemes`` (per_channel: what ONNX Runtime runs; npu: per-tensor symmetric
int8 everywhere, as strict camera NPUs require), scores through ONNX Runtime (the deployed file, cvkd's evaluator):

* ``fp32``: the student's ONNX FP32 export;
* ``fp32_ft``: the control of the QAT rows: the same fine-tune (epochs, optimizer, labels only) without fake
  quantization, FP32 export, so that a QAT row's gain over ``fp32`` is not read as the extra epochs';
* ``ptq``: post-training quantization of it (``cvkd export --int8 --int8-scheme``, calibrated on train frames);
* ``qat``: a short QAT fine-tune on labels only (``train.qat``), exported as ONNX QDQ;
* ``qat_kd``: the same fine-tune distilled from the FP32 ``--teacher`` (``--kd`` terms);
* ``qat_self``: the same, distilled from the student's own FP32 weights (self-distillation).

    python benchmarks/qat.py --student runs/bench_cctv/ws_linear_s0_ul_e88/final.pt \\
        --teacher checkpoints/cctv_yolov8s_320_e88_fp16.pt.xz --teacher-classes '{"0": person, "1": person}' \\
        --epochs 3 --seeds 0 --threads 1

Writes benchmarks/results/qat.csv (one row per scheme, row and seed; re-running adds to it) and prints the table.

``--tune-split SEED`` chooses QAT settings (e.g. ``--range-lr``) without looking at val: the fine-tunes train on the
train split less a held-out ``--tune-fraction`` of its source frames (the split of benchmarks/kd_sweep.py) and are
scored on those frames, into benchmarks/results/qat_tune_s<SEED>.csv. The FP32 student did see the held-out frames in
its own training (all alike for every row), so these rows rank settings against each other; claims are measured on
val.

    python benchmarks/qat.py --student runs/bench_cctv/ws_rerun_s0_ul_e158/final.pt --schemes npu \
        --rows fp32 qat --ranges learned --range-lr 0.03 --tune-split 0
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("YOLO_OFFLINE", "1")
SHARED = ROOT.parent / "shared" / "datasets" / "cctv_people"
RESULTS = ROOT / "benchmarks" / "results" / "qat.csv"
COLUMNS = ["scheme", "row", "seed", "epochs", "lr", "kd", "placement", "ranges", "map", "ap50", "latency_ms", "size_mb",
           "student", "teacher", "file"]
# placement of the fake quantization in the QAT rows: "ort", every tensor once where ORT's own quantizer puts it (conv,
# SiLU, residual sum; cvkd since 2026-12-07); "conv", the convolutions' inputs and outputs only (the rows before, whose
# SiLUs ran float in the deployed file). Rows without the column are "conv" ones.
PLACEMENT = "ort"
ROWS = ["fp32", "fp32_ft", "ptq", "qat", "qat_kd", "qat_self"]
# (train json, val json, val images) of the fine-tunes and of the scores; --tune-split replaces them
SPLIT = (ROOT / "data/cctv_people/train.json", ROOT / "data/cctv_people/val.json", SHARED / "valid/images")
# KD terms of the qat_kd / qat_self rows (--kd):
# * box: LD on the DFL bins alone (w 0.25, T 10), the term the tuning split chose on top of a ws start
#   (benchmarks/kd_sweep.py, row box_only); it needs no adapter, so the 3-epoch fine-tune trains no fresh module;
# * logit_feature: the logit and feature terms of configs/cctv_distill.yaml with their MLP adapter (the first look);
# * cwd: channel-wise distillation of the neck features (T 4, w 2, the CCTV table's feature row) with no adapter, for
#   qat_self only: the QAT student keeps its own FP32 features, as YOLOv6's QAT distils its FP32 self channel-wise
#   (Li et al. 2022, "YOLOv6: A Single-Stage Object Detection Framework for Industrial Applications"); a teacher of
#   other channels is refused
KD_RECIPES = {
    "box": ["kd.logit=0", "kd.feature=0", "kd.box=0.25", "kd.box_loss=ld", "kd.box_t=10.0"],
    "logit_feature": ["kd.logit=4.0", "kd.logit_t=1.0", "kd.feature=6.0", "kd.feature_loss=hint",
                      "kd.feature_norm=joint", "kd.feature_mask=teacher_score", "kd.feature_adapter=mlp", "kd.box=0"],
    "cwd": ["kd.logit=0", "kd.box=0", "kd.feature=2.0", "kd.feature_loss=cwd", "kd.feature_t=4.0",
            "kd.feature_adapter=none"],
}


def score_onnx(path: Path, val, imgsz: int, threads: int, keep: str = "") -> dict:
    """mAP through ORT, and the mean latency of 50 single-image runs after 10 warm-up runs; ``keep``: the name under
    which the detections are kept (benchmarks/results/preds/qat/) for the paired gains."""
    import numpy as np

    from cctv_distill import keep_predictions
    from cvkd.deploy import OrtDetector
    from cvkd.deploy.ort_detector import model_size_mb
    from cvkd.deploy.pipeline import score

    det, preds = OrtDetector(path, threads), []
    m = score(det, val, imgsz, predictions_out=preds)
    if keep:
        keep_predictions(keep, preds, RESULTS)
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    for _ in range(10):
        det.session.run(None, {det.input_name: x})
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        det.session.run(None, {det.input_name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return {"map": m["map"], "ap50": m["ap50"], "latency_ms": statistics.mean(times), "size_mb": model_size_mb(path)}


def export(weights: Path, out: Path, imgsz: int, precision: str, **kw) -> Path:
    """The deployed ONNX file of ``weights`` at ``precision``: ``full`` (NMS outside), or for an end-to-end head
    (YOLO26) the NMS-free ``e2e`` file of its one-to-one branch."""
    from cvkd.deploy import ExportRequest, export_set
    from cvkd.deploy.pipeline import load_for_export

    adapter = load_for_export(weights)
    variant = "e2e" if getattr(adapter, "end2end", False) else "full"
    req = ExportRequest(imgsz=imgsz, out_dir=out, stem=weights.parent.name, variants=(variant,), **kw)
    return export_set(adapter, req)[f"{variant}_{precision}"]


def qat_command(args, row: str, scheme: str, seed: int) -> tuple[str, list[str]]:
    """(run name, command) of a QAT fine-tune of the student; ``fp32_ft``: the same without fake quantization."""
    recipe = KD_RECIPES[args.kd]
    kd = {"qat": [], "fp32_ft": [], "qat_kd": [f"kd.teacher={args.teacher}", *recipe, *args.teacher_kd],
          "qat_self": [f"kd.teacher={args.student}", *recipe]}[row]
    tag = f"{row}_{args.kd}" if kd and args.kd != "logit_feature" else row  # logit_feature: the first look's names
    sched = f"e{args.epochs}" + (f"_lr{args.lr:g}" if args.lr != 0.001 else "")  # 0.001: the first look's names
    ranges = f"_learned{args.range_lr:g}" if args.ranges == "learned" else ""  # minmax: the names before
    name = f"qat_{scheme}_{tag}_{sched}_s{seed}_{PLACEMENT}{ranges}" if row != "fp32_ft" else f"ft_{sched}_s{seed}"
    tool = "distill.py" if kd else "train.py"
    train_json, val_json, val_images = SPLIT
    data = [f"data.train_json={train_json}", f"data.train_images={SHARED / 'train/images'}",
            f"data.val_json={val_json}", f"data.val_images={val_images}", "data.class_map={'0': person, '1': person}"]
    if args.tune_split is not None:
        name += f"_tune{args.tune_split}"
    cmd = [sys.executable, str(ROOT / "tools" / tool), "-c", str(ROOT / "configs" / "cctv_student.yaml"), *data,
           f"out={args.out}", f"name={name}", f"model.name={args.student}",
           f"train.qat={'' if row == 'fp32_ft' else scheme}", f"train.epochs={args.epochs}", f"train.seed={seed}",
           f"train.threads={args.threads}", "train.optimizer=sgd", f"train.lr={args.lr}", "train.warmup_epochs=0",
           "data.close_mosaic=0", "data.mosaic=0", *kd]
    if args.ranges == "learned" and row != "fp32_ft":
        cmd += ["train.qat_ranges=learned", f"train.qat_range_lr={args.range_lr}"]
    return name, cmd


def qat_run(args, row: str, scheme: str, seed: int) -> Path:
    """Run :func:`qat_command` (resumable: a finished run is reused); its final weights."""
    name, cmd = qat_command(args, row, scheme, seed)
    run = Path(args.out) / name
    if (run / "final.pt").is_file():
        return run / "final.pt"
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run / "final.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="", help="trained FP32 student checkpoint (with --table-only: whose paired "
                                                  "gains to print; default every student's)")
    ap.add_argument("--teacher", default="", help="FP32 teacher checkpoint of the qat_kd row")
    ap.add_argument("--teacher-classes", default="", help="kd.teacher_classes for a teacher of other classes")
    ap.add_argument("--schemes", nargs="+", default=["per_channel", "npu"], choices=["per_channel", "npu"])
    ap.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the QAT rows")
    ap.add_argument("--epochs", type=int, default=3, help="QAT fine-tune epochs (default 3)")
    ap.add_argument("--kd", default="box", choices=sorted(KD_RECIPES),
                    help="KD terms of the qat_kd and qat_self rows (default box: LD alone, see KD_RECIPES)")
    ap.add_argument("--lr", type=float, default=0.0001,
                    help="QAT fine-tune SGD learning rate (default 0.0001: the student's own final rate, lr x lrf)")
    ap.add_argument("--ranges", default="minmax", choices=["minmax", "learned"],
                    help="activation ranges of the QAT rows (train.qat_ranges): moving min/max, or learned (LSQ)")
    ap.add_argument("--range-lr", type=float, default=0.01, help="Adam lr of learned ranges (train.qat_range_lr)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of training and of ORT timing (default 1)")
    ap.add_argument("--calib-frames", type=int, default=100, help="PTQ calibration frames from the train set")
    ap.add_argument("--tune-split", type=int, default=None, metavar="SEED",
                    help="fine-tune and score on this seed's tuning split of the train set (benchmarks/kd_sweep.py), "
                         "writing results/qat_tune_s<SEED>.csv: for choosing settings; val stays untouched")
    ap.add_argument("--tune-fraction", type=float, default=0.2, help="train frames held out by --tune-split")
    ap.add_argument("--out", default="", help="folder of the QAT runs and exports (default runs/bench_qat, "
                                              "runs/bench_qat_tune with --tune-split)")
    ap.add_argument("--table-only", action="store_true", help="print the table and the paired gains from the CSV")
    ap.add_argument("--rescore", action="store_true",
                    help="score and time again the CSV rows of --student from their ONNX files, keeping their "
                         "detections (run it on a quiet machine: the latency column)")
    args = ap.parse_args()
    if not args.student and not args.table_only:
        ap.error("--student is required (only --table-only goes without it)")
    args.teacher_kd = [f"kd.teacher_classes={args.teacher_classes}"] if args.teacher_classes else []
    args.out = args.out or str(ROOT / "runs" / ("bench_qat" if args.tune_split is None else "bench_qat_tune"))
    if args.tune_split is not None:
        use_tuning_split(args.tune_split, args.tune_fraction, Path(args.out))
    if args.rescore:
        rescore(args)
    elif not args.table_only:
        run_rows(args)
    print_table()
    for student in [rel(Path(args.student))] if args.student else sorted({r["student"] for r in read()}):
        print_gains(student)


def pred_name(rec: dict) -> str:
    """The name of a row's kept detections: one per student, scheme, row, fine-tune lr, KD recipe and seed."""
    placement = rec.get("placement") if rec.get("placement") not in ("", "conv", None) else ""  # conv: the first names
    parts = [Path(rec["student"]).parent.name, rec["scheme"], rec["row"], str(rec.get("lr") or ""),
             rec.get("kd") or "", f"s{rec['seed']}", placement, rec.get("ranges") or ""]
    return "_".join(p for p in parts if p)


def use_tuning_split(seed: int, fraction: float, out: Path) -> None:
    """Fine-tune on the train split less ``fraction`` of its frames and score on those (results/qat_tune_s<seed>.csv,
    detections under results/preds/qat_tune_s<seed>/)."""
    global SPLIT, RESULTS
    from kd_sweep import tuning_split

    tune_train, tune_val, _ = tuning_split(seed, fraction, out / f"split_s{seed}")
    SPLIT, RESULTS = (tune_train, tune_val, SHARED / "train/images"), RESULTS.with_name(f"qat_tune_s{seed}.csv")


def val_set():
    from cvkd.data import load_coco

    _, val_json, val_images = SPLIT
    return load_coco(val_json, val_images, {"0": "person", "1": "person"})


def rescore(args) -> None:
    """Score the CSV rows of ``--student`` again from their ONNX files: keeps their detections (for the paired gains)
    and re-times them, e.g. on a quiet machine after runs that shared it with trainings."""
    val, student = val_set(), rel(Path(args.student))
    for rec in [r for r in read() if r["student"] == student]:
        if not (ROOT / rec["file"]).is_file():
            print(f"{rec['file']}: not here, row left as it is")
            continue
        old = float(rec["map"])
        rec.update(score_onnx(ROOT / rec["file"], val, args.imgsz, args.threads, keep=pred_name(rec)))
        append(rec)
        print(f"{rec['scheme']} {rec['row']} s{rec['seed']}: map {old:.4f} -> {rec['map']:.4f}, "
              f"{rec['latency_ms']:.1f} ms", flush=True)


def run_rows(args) -> None:
    val, student = val_set(), Path(args.student)
    for scheme in args.schemes:
        for row in args.rows:
            for seed in (args.seeds if row.startswith("qat") or row == "fp32_ft" else [0]):
                if row.startswith("fp32") and scheme != args.schemes[0]:
                    continue  # one FP32 row serves every scheme
                t0 = time.time()
                if row == "fp32":
                    path = export(student, Path(args.out) / "fp32", args.imgsz, "fp32")
                elif row == "ptq":
                    path = export(student, Path(args.out) / f"ptq_{scheme}", args.imgsz, "int8", int8=True,
                                  calib=SHARED / "train/images", calib_frames=args.calib_frames,
                                  calib_method="percentile", int8_scheme=scheme)
                else:
                    weights = qat_run(args, row, scheme, seed)
                    path = export(weights, weights.parent / "export", args.imgsz,
                                  "fp32" if row == "fp32_ft" else "int8")
                rec = {"scheme": "fp32" if row.startswith("fp32") else scheme, "row": row, "seed": seed,
                       "epochs": 0 if row == "fp32" else args.epochs,
                       "lr": "" if row in ("fp32", "ptq") else f"{args.lr:g}", "student": rel(student),
                       "kd": args.kd if row in ("qat_kd", "qat_self") else "",
                       "placement": PLACEMENT if row.startswith("qat") else "",
                       "ranges": f"learned{args.range_lr:g}" if row.startswith("qat") and args.ranges == "learned"
                       else "",
                       "teacher": rel(Path(args.teacher)) if row == "qat_kd" else "", "file": rel(path)}
                rec.update(score_onnx(path, val, args.imgsz, args.threads, keep=pred_name(rec)))
                append(rec)
                print(f"{rec['scheme']} {row} s{seed}: map {rec['map']:.4f} ({time.time() - t0:.0f} s)", flush=True)


def rel(p: Path) -> str:
    try:
        return os.path.relpath(Path(p).resolve(), ROOT)
    except ValueError:
        return str(p)


def append(rec: dict) -> None:
    """Add (or replace) one row; locked, so two runs of this script (one per scheme) can share the CSV."""
    from cctv_distill import locked

    key = ("scheme", "row", "seed", "lr", "kd", "placement", "ranges", "student")
    rec = with_placement(rec)
    with locked(RESULTS):
        rows = [r for r in read() if tuple(str(r.get(k, "")) for k in key) != tuple(str(rec[k]) for k in key)]
        with RESULTS.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in [*rows, rec]:
                w.writerow({k: (f"{r[k]:.4f}" if isinstance(r.get(k), float) else r.get(k, "")) for k in COLUMNS})


def read() -> list[dict]:
    if not RESULTS.is_file():
        return []
    with RESULTS.open() as f:
        rows = list(csv.DictReader(f))
    return [with_placement(r) for r in rows]


def with_placement(rec: dict) -> dict:
    """A row written before the placement column is of the first placement ("conv"); before the ranges column,
    minmax ranges ("")."""
    return {**rec, "placement": rec.get("placement") or ("conv" if rec["row"].startswith("qat") else ""),
            "ranges": rec.get("ranges") or ""}


def print_table() -> None:
    groups: dict = {}
    for r in read():
        fake_quant = " ".join(x for x in (r["placement"], r["ranges"]) if x)
        groups.setdefault((r["student"], r["scheme"], r["row"], r.get("lr", ""), r.get("kd", ""), fake_quant),
                          []).append(r)
    print("\n| student | scheme | row | lr | KD | fake quant | seeds | mAP@[.5:.95] mean +- sd | AP50 | ORT latency (ms, 1 thread) | MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (student, scheme, row, lr, kd, placement), rs in groups.items():
        maps = [float(r["map"]) for r in rs]
        sd = statistics.stdev(maps) if len(maps) > 1 else 0.0
        print(f"| {Path(student).parent.name} | {scheme} | {row} | {lr or '-'} | {kd or '-'} | {placement or '-'} | {len(rs)} | {statistics.mean(maps):.4f} +- {sd:.4f} "
              f"| {statistics.mean(float(r['ap50']) for r in rs):.4f} | "
              f"{statistics.mean(float(r['latency_ms']) for r in rs):.1f} | {float(rs[0]['size_mb']):.2f} |")
    print(f"\nrows from {rel(RESULTS)}")


# (row, compared with) of the paired gains; FP32 and PTQ are one model each, paired with every seed of the other row
COMPARISONS = [("ptq", "fp32"), ("qat", "fp32"), ("qat", "fp32_ft"), ("qat_kd", "fp32"), ("qat_kd", "fp32_ft"),
               ("qat_kd", "ptq"), ("qat_kd", "qat"), ("qat_self", "fp32"), ("qat_self", "qat")]


def print_gains(student: str) -> None:
    """Paired gains of ``student``'s rows with kept detections, per scheme, fine-tune lr, KD recipe and fake-quant
    placement and ranges, with 95 % intervals over the QAT seeds and val-image resamples (cvkd.eval.bootstrap)."""
    from cctv_distill import preds_path
    from cvkd.data import to_coco_dict
    from cvkd.eval.bootstrap import file_matches, paired_gain
    from kd_sweep import frame_of

    recs = [r for r in read() if r["student"] == student and preds_path(pred_name(r), RESULTS).is_file()]
    if not recs:
        return
    data = val_set()
    gt, matched, lines = to_coco_dict(data), {}, []

    def matches(rec: dict):  # each file is matched once, though it enters several comparisons
        name = pred_name(rec)
        if name not in matched:
            matched[name] = file_matches(preds_path(name, RESULTS), data, gt)
        return matched[name]

    # the tuning split holds both augmented copies of each of its frames: the bootstrap draws them together
    frames = [frame_of(im["file_name"]) for im in sorted(gt["images"], key=lambda im: im["id"])]

    def add_line(scheme, lr, kd, fake_quant, a_row, b_row, pairs) -> None:
        g = paired_gain([(matches(x), matches(y)) for x, y in pairs], groups=frames)
        verdict = g.verdict(trained=a_row != "ptq")  # PTQ vs FP32: no training seed to vary
        lines.append(f"| {Path(student).parent.name} | {scheme} | {lr or '-'} | {kd or '-'} | {fake_quant or '-'} | "
                     f"{a_row} | {b_row} | {len(pairs)} | {g.gain:+.4f} | [{g.lo:+.4f}, {g.hi:+.4f}] | {verdict} |")

    for a_row, b_row in COMPARISONS:
        for key in sorted({(r["scheme"], r["lr"], r["kd"], r["placement"], r["ranges"]) for r in recs
                           if r["row"] == a_row}):
            scheme, lr, kd, placement, ranges = key
            a = {r["seed"]: r for r in recs
                 if (r["scheme"], r["lr"], r["kd"], r["placement"], r["ranges"], r["row"]) == (*key, a_row)}
            b = [r for r in recs if r["row"] == b_row
                 and r["scheme"] in (scheme, "fp32") and (b_row in ("fp32", "ptq") or r["lr"] == lr)
                 and (not b_row.startswith("qat") or (r["placement"], r["ranges"]) == (placement, ranges))]
            b_seed = {r["seed"]: r for r in b}
            pairs = [(a[s], b_seed[s] if b_row not in ("fp32", "ptq") else b[0]) for s in sorted(a)
                     if b and (b_row in ("fp32", "ptq") or s in b_seed)]
            if not pairs:
                continue
            add_line(scheme, lr, kd, " ".join(x for x in (placement, ranges) if x), a_row, b_row, pairs)
    # the same QAT row under other activation ranges (minmax, learned at each --range-lr), paired by seed
    variants: dict = {}
    for r in recs:
        if r["row"].startswith("qat"):
            key = (r["scheme"], r["lr"], r["kd"], r["placement"], r["row"])
            variants.setdefault(key, {}).setdefault(r["ranges"], {})[r["seed"]] = r
    for (scheme, lr, kd, placement, row), by_ranges in sorted(variants.items()):
        names = sorted(by_ranges)  # "" (minmax) first
        for i, a_name in enumerate(names):
            for b_name in names[:i]:
                a, b = by_ranges[a_name], by_ranges[b_name]
                pairs = [(a[s], b[s]) for s in sorted(set(a) & set(b))]
                if pairs:
                    add_line(scheme, lr, kd, f"{placement} {a_name}", row, f"{row}, {b_name or 'minmax'}", pairs)
    if lines:
        print("\n| student | scheme | lr | KD | fake quant | row | compared with | seeds | gain (mean paired) | 95 % interval "
              "| |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
