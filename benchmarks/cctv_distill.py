#!/usr/bin/env python
"""The headline benchmark: distillation gain on the CCTV people set (real security-camera frames).

Trains (or reuses finished runs of) a teacher, a baseline student, the student distilled with each KD family and all
together, and the same student with ultralytics' own trainer, without and with ultralytics' built-in distillation
(same teacher weights, data, imgsz, epochs, seeds). Every model is scored by the cvkd evaluator on the val split at
the final epoch (no best-epoch picking on val). Prints a markdown table and writes benchmarks/results/cctv_distill.csv.

    python benchmarks/cctv_distill.py --epochs 30 --imgsz 320 --seeds 0          # one seed of every row
    python benchmarks/cctv_distill.py --rows student all --seeds 1 2              # more seeds of two rows
    python benchmarks/cctv_distill.py --student timm:mobilenetv3_small_100 --rows student all_sw  # cross-family

Runs are resumable: a killed benchmark continues each unfinished run from its last checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ultralytics_peer import (
    model_stats,
    run_ultralytics,
    score_ultralytics,
    ultralytics_data_yaml,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

SHARED = ROOT.parent / "shared" / "datasets"
# the real sets this benchmark runs on: converted COCO json under data/, images read in place from ../shared
DATASETS = {
    "cctv": {"src": SHARED / "cctv_people", "data": ROOT / "data" / "cctv_people", "train_images": "train/images",
             "val_images": "valid/images", "class_map": {"0": "person", "1": "person"}, "convert": ["yolo"],
             "results": "cctv_distill.csv", "out": "bench_cctv"},
    "pennfudan": {"src": SHARED / "pennfudan", "data": ROOT / "data" / "pennfudan", "train_images": "PNGImages",
                  "val_images": "PNGImages", "class_map": None,
                  "convert": ["pennfudan", "--val-fraction", "0.2", "--seed", "0"],
                  "results": "pennfudan_distill.csv", "out": "bench_pennfudan"},
}
DS = DATASETS["cctv"]
SRC, DATA = DS["src"], DS["data"]
RESULTS = ROOT / "benchmarks" / "results" / DS["results"]


def select_dataset(name: str) -> None:
    global DS, SRC, DATA, RESULTS
    DS = DATASETS[name]
    SRC, DATA = DS["src"], DS["data"]
    RESULTS = ROOT / "benchmarks" / "results" / DS["results"]
COLUMNS = ["model", "role", "method", "seed", "imgsz", "epochs", "params_m", "gflops", "map", "ap50", "gap_closed",
           "sec_per_epoch", "interp", "pipeline", "teacher", "run", "map_last5"]
# interp: how training images were shrunk to imgsz (cvkd's data.train_interp; ultralytics always uses linear).
# pipeline: whose training-data pipeline fed the run: cvkd's own or ultralytics' (cvkd's data.pipeline=ultralytics;
# always so for the ultralytics rows). cvkd_v1 is cvkd's own before 2026-12-06, whose mosaic translation was twice
# ultralytics' (+-10 % of the 2S canvas instead of the S output, docs/cctv.md); runs of the fixed one ("cvkd") end in
# _v2_s<seed>, so that their kept predictions do not replace those of the v1 runs of the same row and seed.
# map_last5: mean val mAP of the run's last 5 epochs (its per-epoch log), a steadier check than the final epoch; for
# the ultralytics rows that log is ultralytics' own val, which scores ~0.02 lower than cvkd's: compare within a tool.
# teacher: the teacher run of a distilled row. gap_closed compares a row with its own tool's baseline trained with
# the same interp and pipeline, and with that teacher.
# KD settings of the cvkd rows (docs/cctv.md says where each comes from), on top of configs/cctv_distill.yaml with
# every term off, the feature term normalised per level and unmasked (CWD takes no mask) and a random student init
# (KD_RESET), so that a row does not change when the yaml's default recipe does
KD_RESET = ["kd.logit=0", "kd.feature=0", "kd.box=0", "kd.feature_norm=level", "kd.feature_mask=all", "model.init_from="]
KD_ROWS = {
    "logit": ["kd.logit=4.0", "kd.logit_t=1.0"],
    "feature": ["kd.feature=2.0", "kd.feature_loss=cwd", "kd.feature_t=4.0"],
    "box": ["kd.box=0.25", "kd.box_loss=ld", "kd.box_t=10.0"],
    "all": ["kd.logit=4.0", "kd.logit_t=1.0", "kd.feature=2.0", "kd.feature_loss=cwd", "kd.feature_t=4.0",
            "kd.box=0.25", "kd.box_loss=ld", "kd.box_t=10.0"],
    # score-weighted feature imitation: the teacher's max class probability weights each cell's squared error after
    # a 1x1-ReLU-1x1 projector (ultralytics' built-in recipe; weight 18 = its dis=6 summed over three levels, cvkd
    # averages the levels), alone and with the logit and box terms of "all"
    "feature_sw": ["kd.feature=18.0", "kd.feature_loss=hint", "kd.feature_mask=teacher_score",
                   "kd.feature_adapter=mlp"],
    "all_sw": ["kd.logit=4.0", "kd.logit_t=1.0", "kd.feature=18.0", "kd.feature_loss=hint",
               "kd.feature_mask=teacher_score", "kd.feature_adapter=mlp", "kd.box=0.25", "kd.box_loss=ld",
               "kd.box_t=10.0"],
    # all_sw with the feature term normalised once over all levels (kd.feature_norm=joint): the per-level mean gave
    # P4/P5, where the teacher's score mask is ~0 on this set, 2/3 of the term (docs/cctv.md); 6 = 18 / 3 keeps P3's
    "all_joint": ["kd.logit=4.0", "kd.logit_t=1.0", "kd.feature=6.0", "kd.feature_loss=hint", "kd.feature_norm=joint",
                  "kd.feature_mask=teacher_score", "kd.feature_adapter=mlp", "kd.box=0.25", "kd.box_loss=ld",
                  "kd.box_t=10.0"],
}
# weight selection (Xu et al. 2024): the student starts from every second channel of the teacher's tensors instead of
# random weights, alone (no KD term, no teacher pass) and under all_joint
KD_ROWS["ws"] = ["model.init_from=teacher"]
KD_ROWS["all_joint_ws"] = [*KD_ROWS["all_joint"], "model.init_from=teacher"]
# LD alone on top of weight selection: the logit term decouples the student's scores from its own box quality
# (benchmarks/kd_sweep.py, the feature_box / box_* settings), the box term teaches the localisation itself
KD_ROWS["box_ws"] = [*KD_ROWS["box"], "model.init_from=teacher"]
KD_ROWS["feature_box_ws"] = [*KD_ROWS["all_joint_ws"], "kd.logit=0"]  # all_joint_ws without its logit term
# all_joint for heads without DFL bins (YOLO26: l/t/r/b distances, where LD is refused): the box term is GIoU to the
# teacher's boxes at the gain of the student's own box loss to the labels (7.5, as PP-YOLOE+ distils its boxes)
KD_ROWS["all_joint_iou"] = [*KD_ROWS["all_joint"], "kd.box_loss=iou", "kd.box=7.5"]
ALL_ROWS = ["teacher", "student", *KD_ROWS, "ultralytics_none", "ultralytics_kd"]
# configs/cctv_distill.yaml holds all_joint_ws; these overrides turn it back into all_sw (the yaml before all_joint),
# for the runs of the other benchmarks that were measured with it
ALL_SW = ["kd.feature_norm=level", "kd.feature=18.0", "model.init_from="]
DEFAULT_STUDENT = "yolov8n"  # the student of configs/cctv_student.yaml; --student names another cvkd model.name


def ensure_data() -> None:
    if (DATA / "train.json").is_file() and (DATA / "val.json").is_file():
        return
    if not SRC.is_dir():
        sys.exit(f"error: {SRC} not found (the benchmark reads its data from ../shared/datasets)")
    cmd, *opts = DS["convert"]
    subprocess.run([sys.executable, str(ROOT / "tools" / "convert.py"), cmd, str(SRC), "--out", str(DATA), *opts],
                   check=True)


def data_overrides() -> list[str]:
    """Point the CCTV configs at the selected set."""
    import json

    return [f"data.train_json={DATA / 'train.json'}", f"data.train_images={SRC / DS['train_images']}",
            f"data.val_json={DATA / 'val.json'}", f"data.val_images={SRC / DS['val_images']}",
            f"data.class_map={json.dumps(DS['class_map'])}"]


def common(args, name: str, seed: int) -> list[str]:
    return [f"out={args.out}", f"name={name}", f"train.epochs={args.epochs}", f"data.imgsz={args.imgsz}",
            f"train.seed={seed}", f"train.device={args.device}", f"train.batch={args.batch}",
            f"train.threads={args.threads}", *data_overrides()]


def run_cvkd(args, tool: str, config: str, name: str, seed: int, extra: list[str]) -> Path:
    run = Path(args.out) / name
    if _finished(run, args.epochs):
        return run
    cmd = [sys.executable, str(ROOT / "tools" / tool), "-c", str(ROOT / "configs" / config)]
    # a resumed run keeps its saved config except where it runs: this invocation's --threads and --device
    resume = [f"resume={run}", f"train.threads={args.threads}", f"train.device={args.device}"]
    cmd += resume if (run / "config.yaml").is_file() else common(args, name, seed) + extra
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run


def _finished(run: Path, epochs: int) -> bool:
    from cvkd.engine.report import read_rows

    rows = read_rows(run / "results.csv")
    return bool(rows) and int(rows[-1]["epoch"]) >= epochs and rows[-1].get("map", "") != ""


def add_teacher_row(table: dict, weights: Path, rel: str, args) -> dict:
    """Score teacher weights that have no run folder here (through ``--teacher-classes``, as the KD rows see them) and
    write their row: role teacher, the weights file as its run."""
    import yaml

    from cvkd.data import load_coco
    from cvkd.eval import evaluate
    from cvkd.models import load_detector
    from cvkd.models.class_map import map_teacher

    val = load_coco(DATA / "val.json", SRC / DS["val_images"], DS["class_map"])
    model = load_detector(weights)
    mapped = map_teacher(model, val.class_names, yaml.safe_load(args.teacher_classes) if args.teacher_classes else None)
    preds: list = []
    m = evaluate(mapped.eval().predict, val, args.imgsz, 16, "cpu", quiet=True, predictions_out=preds)
    keep_predictions(rel, preds)
    params, gflops = model_stats(model, args.imgsz)
    rec = {"model": Path(model.arch_spec()["name"]).stem, "role": "teacher", "method": "none", "seed": 0,
           "imgsz": args.imgsz, "epochs": args.teacher_epochs, "interp": "linear", "pipeline": "ultralytics",
           "teacher": "", "run": rel, "map": m["map"], "ap50": m["ap50"], "params_m": params, "gflops": gflops,
           "sec_per_epoch": ""}
    with locked(RESULTS):
        table = {**table, **load_records(), record_key(rec): rec}
        write_table(table)
    print(f"teacher {rel}: map {m['map']:.4f}", flush=True)
    return table


def preds_path(run: str | Path, results: Path | None = None) -> Path:
    """Where a run's final val detections are kept in the repo (xz json), for paired intervals in --table-only; one
    folder per benchmark CSV (``results``, this benchmark's by default)."""
    results = results or RESULTS
    return results.parent / "preds" / results.stem / f"{Path(run).name}.json.xz"


@contextmanager
def locked(results: Path):
    """Hold the lock of one results CSV: benchmark processes run side by side (one per seed or scheme), and each
    rewrites the whole file from what it read, so a read-merge-write outside the lock drops the other's rows."""
    import fcntl

    results.parent.mkdir(parents=True, exist_ok=True)
    with (results.parent / f".{results.stem}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def keep_predictions(run: str | Path, preds: list | Path, results: Path | None = None) -> None:
    import json
    import lzma

    data = json.loads(preds.read_text()) if isinstance(preds, Path) else preds
    # 0.01 px and 5 decimals of score keep a run's mAP exactly; 0.1 px moved one run's by +0.0011 (IoUs crossed
    # the 0.5:0.95 thresholds), a third of the gains these files are kept to compare
    per_image: dict = {}
    for d in data:
        d["bbox"], d["score"] = [round(float(v), 2) for v in d["bbox"]], round(float(d["score"]), 5)
        per_image.setdefault((d["image_id"], d["category_id"]), []).append(d)
    # COCOeval scores the 100 most confident detections of each image and category (maxDets 100, a stable sort):
    # the others never count, and leaving them out keeps the files within the tracked-file budget
    data = [d for ds in per_image.values() for d in sorted(ds, key=lambda d: -d["score"])[:100]]
    path = preds_path(run, results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))


def score_cvkd(run: Path, args) -> dict:
    from cvkd.engine.report import read_rows
    from cvkd.models import load_detector

    if (run / "val_predictions.json").is_file():  # runs of cvkd >= 2026-12-04 write their final detections
        keep_predictions(run, run / "val_predictions.json")
    rows = read_rows(run / "results.csv")
    model = load_detector(run / "final.pt")
    params, gflops = model_stats(model, args.imgsz)
    sec = statistics.mean(float(r["sec_train"]) for r in rows)
    return {"map": float(rows[-1]["map"]), "ap50": float(rows[-1]["ap50"]), "params_m": params, "gflops": gflops,
            "sec_per_epoch": sec, "model": model}


def run_name(row: str, seed: int, interp: str, student: str = DEFAULT_STUDENT, pipeline: str = "cvkd") -> str:
    """Run folder of a cvkd row; area runs keep the names they had before linear became the default; other students
    than YOLOv8n get their model name in front (``timm_mobilenetv3_small_100_all_sw_area_s0``); runs on ultralytics'
    data pipeline end in ``_ulpipe_s<seed>``, those on cvkd's pipeline as fixed on 2026-12-06 in ``_v2_s<seed>``."""
    pipe = {"ultralytics": "_ulpipe", "cvkd": "_v2"}.get(pipeline, "")
    if student != DEFAULT_STUDENT:
        return f"{student.replace(':', '_').replace('/', '_').replace('+', '_')}_{row}_{interp}{pipe}_s{seed}"
    return f"{row}{pipe}_s{seed}" if interp == "area" else f"{row}_{interp}{pipe}_s{seed}"


def pipeline_of(r: dict) -> str:
    """Rows written before the pipeline column existed: the ultralytics rows ran on ultralytics' pipeline, the
    others on cvkd's first one."""
    return r.get("pipeline") or ("ultralytics" if r["method"].startswith("ultralytics") else "cvkd_v1")


def rel_run(run: str) -> str:
    return os.path.relpath(run, ROOT) if os.path.isabs(run) else run


def teacher_of(r: dict) -> str:
    """The teacher column: the teacher run a distilled row learned from; a teacher row's own run (two teachers of
    one config, e.g. a retrained one, are two rows)."""
    return rel_run(str(r.get("run", ""))) if r["role"] == "teacher" else r.get("teacher") or ""


def record_key(r: dict) -> tuple:
    return (r["model"], r["role"], r["method"], r["seed"], r.get("interp") or "area", teacher_of(r),
            int(r["epochs"]), int(r["imgsz"]), pipeline_of(r))


def schedule(r: dict) -> tuple:
    """Rows are compared (baseline, teacher, mean over seeds) only within one schedule: epochs and imgsz."""
    return int(r["epochs"]), int(r["imgsz"])


def load_records() -> dict:
    """Rows already in the CSV, keyed by :func:`record_key`, so that a partial invocation adds to the table."""
    if not RESULTS.is_file():
        return {}
    out = {}
    with RESULTS.open() as f:
        for r in csv.DictReader(f):
            for k in ("params_m", "gflops", "map", "ap50", "sec_per_epoch", "gap_closed", "map_last5"):
                r[k] = float(r[k]) if r.get(k) not in (None, "") else ""
            r["seed"] = int(r["seed"])
            r["pipeline"] = pipeline_of(r)
            out[record_key(r)] = r
    return out


def last_epochs_map(run: str, n: int) -> float | None:
    """Mean val mAP@[.5:.95] over a run's last ``n`` epochs, from its per-epoch log: cvkd's evaluator for cvkd runs,
    ultralytics' own val (``metrics/mAP50-95(B)``) for ultralytics runs. A noise check, not the table's metric."""
    path = (ROOT / run if not os.path.isabs(run) else Path(run)) / "results.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    values = [float(r.get("map") or r.get("metrics/mAP50-95(B)") or "nan") for r in rows[-n:]]
    return statistics.mean(values) if len(values) == n else None


def print_last_epochs(records: list[dict], n: int) -> None:
    print(f"\n| epochs | model | role | method | interp | pipeline | teacher | seeds | mean val mAP of the last {n} "
          "epochs, per seed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (epochs, _, model, role, method, interp, pipe, teacher), rs in group_rows(records).items():
        values = [last_epochs_map(str(r.get("run", "")), n) for r in rs]
        shown = " / ".join("n/a" if v is None else f"{v:.4f}" for v in values)
        print(f"| {epochs} | {model} | {role} | {method} | {interp} | {pipe} | {Path(teacher).name} | {len(rs)} | "
              f"{shown} |")


def group_rows(records: list[dict]) -> dict:
    """Seeds of one table row: same schedule, model, role, method, interp, pipeline and teacher."""
    groups: dict = {}
    for r in records:
        key = (*schedule(r), r["model"], r["role"], r["method"], r.get("interp", ""), pipeline_of(r), teacher_of(r))
        groups.setdefault(key, []).append(r)
    return groups


def write_table(table: dict, last: int = 0, gains: set[str] | None = None) -> None:
    """Write the CSV and print the table; the paired gains of every comparison (``gains`` None) or of those with a
    row of one of the ``gains`` runs (a benchmark run prints those of its own rows once, at its end)."""
    def other_student(r: dict) -> str:  # cross-family rows (--student) after the YOLOv8n rows, grouped by model
        return r["model"] if r["model"] != DEFAULT_STUDENT and r["role"] != "teacher" else ""

    def order(r: dict) -> tuple:
        method = ALL_ROWS.index(r["method"]) if r["method"] in ALL_ROWS else 0
        return (schedule(r), other_student(r), r.get("teacher") or "", 0 if r["role"] == "teacher" else 1,
                r.get("interp") or "", pipeline_of(r), method, r["seed"])

    for r in table.values():  # the CSV's precision: a freshly scored row gives what it will give once read back
        r["map"], r["ap50"] = round(float(r["map"]), 4), round(float(r["ap50"]), 4)
    records = sorted(table.values(), key=order)
    by_base: dict = {}
    # keyed by the run folder relative to the repo, as the KD rows name their teacher (a row added by this process
    # still holds an absolute path)
    teachers = {rel_run(str(r["run"])): r for r in records if r["role"] == "teacher"}
    for r in records:
        if r["role"] == "student":  # each tool's own baseline: cvkd (none) or ultralytics (ultralytics_none)
            by_base.setdefault((schedule(r), r["model"], r["method"], r.get("interp"), pipeline_of(r)),
                               []).append(r["map"])
    for r in records:
        own_base = ("ultralytics_none", "linear", "ultralytics") if r["method"].startswith("ultralytics") \
            else ("none", r.get("interp"), pipeline_of(r))
        base = by_base.get((schedule(r), r["model"], *own_base))
        teacher = teachers.get(r.get("teacher", ""))
        r["gap_closed"] = ""
        # undefined (left empty) where the teacher is no better than the baseline: a 60-epoch student can beat
        # the 30-epoch teacher, and a gap of zero or less has no fraction to close
        if teacher and base and r["role"] == "distilled" and teacher["map"] > statistics.mean(base):
            b = statistics.mean(base)
            r["gap_closed"] = (r["map"] - b) / (teacher["map"] - b)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in records:
            r["pipeline"] = pipeline_of(r)
            last5 = last_epochs_map(str(r.get("run", "")), 5)  # None where the run folder is not on this machine
            r["map_last5"] = last5 if last5 is not None else r.get("map_last5", "")
            r["run"] = rel_run(str(r.get("run", "")))
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r.get(k), float) else r.get(k, "")) for k in COLUMNS})
    print("\n| epochs | model | role | method | interp | pipeline | teacher | seeds | mAP@[.5:.95] mean +- sd | AP50 | "
          "gap closed | last-5 mean | params (M) | GFLOPs | s/epoch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (epochs, _, model, role, method, interp, pipe, teacher), rs in group_rows(records).items():
        maps = [r["map"] for r in rs]
        sd = statistics.stdev(maps) if len(maps) > 1 else 0.0
        gap = [r["gap_closed"] for r in rs if isinstance(r.get("gap_closed"), float)]
        last5 = [r["map_last5"] for r in rs if isinstance(r.get("map_last5"), float)]
        print(f"| {epochs} | {model} | {role} | {method} | {interp} | {pipe} | {Path(teacher).name} | {len(rs)} | "
              f"{statistics.mean(maps):.4f} +- {sd:.4f} | "
              f"{statistics.mean(r['ap50'] for r in rs):.4f} | {statistics.mean(gap) if gap else float('nan'):.2f} | "
              f"{statistics.mean(last5) if len(last5) == len(rs) else float('nan'):.4f} | {rs[0]['params_m']:.2f} | "
              f"{rs[0]['gflops']:.2f} | {seconds(rs)} |")
    if last:
        print_last_epochs(records, last)
    if gains is None or gains:
        print_gains(records, gains)
    print_tool_baselines(records)
    print(f"\nwritten {RESULTS}")


def seconds(rs: list[dict]) -> str:
    secs = [r["sec_per_epoch"] for r in rs if isinstance(r.get("sec_per_epoch"), float)]
    return f"{statistics.mean(secs):.0f}" if secs else "n/a"


def comparisons(records: list[dict]) -> list[tuple[tuple, tuple]]:
    """(row group, reference group) pairs: each distilled row against its tool's baseline, and the KD rows on top of
    weight selection (``*_ws``) against ``ws`` alone."""
    groups = group_rows(records)
    out = []
    for key in groups:
        epochs, imgsz, model, role, method, interp, pipe, teacher = key
        if role != "distilled":
            continue
        if method.startswith("ultralytics"):
            base = (epochs, imgsz, model, "student", "ultralytics_none", "linear", "ultralytics", "")
        else:
            base = (epochs, imgsz, model, "student", "none", interp, pipe, "")
        out.append((key, base))
        if method.endswith("_ws"):
            out.append((key, (epochs, imgsz, model, "distilled", "ws", interp, pipe, teacher)))
    return [(a, b) for a, b in out if b in groups]


def print_gains(records: list[dict], runs: set[str] | None = None) -> None:
    """Paired gains over the seeds both rows have, with 95 % intervals (cvkd.eval.bootstrap: training seeds and
    val-image resamples), from the kept predictions; rows without them are left out. ``runs``: only the comparisons
    with a row of one of these runs."""
    from cvkd.data import load_coco, to_coco_dict
    from cvkd.eval.bootstrap import file_matches, paired_gain

    groups, rows, data, matched = group_rows(records), [], None, {}

    def matches(path: Path):  # each file is matched once, though it enters several comparisons
        if path not in matched:
            matched[path] = file_matches(path, data, gt)
        return matched[path]

    for key, ref in comparisons(records):
        seeds = {r["seed"]: r for r in groups[key]}
        pairs = [(seeds[r["seed"]], r) for r in groups[ref] if r["seed"] in seeds]
        if runs is not None and not any(rel_run(str(r["run"])) in runs for pair in pairs for r in pair):
            continue
        files = [(preds_path(a["run"]), preds_path(b["run"])) for a, b in pairs]
        files = [f for f in files if f[0].is_file() and f[1].is_file()]
        if not files:
            continue
        if data is None:
            data = load_coco(DATA / "val.json", SRC / DS["val_images"], DS["class_map"])
            gt = to_coco_dict(data)

        g = paired_gain([(matches(a), matches(b)) for a, b in files])
        rows.append((key, ref, g))
    if not rows:
        return
    print("\n| epochs | model | teacher | row | compared with | seeds | gain (mean paired) | 95 % interval | |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, ref, g in rows:
        print(f"| {key[0]} | {key[2]} | {Path(key[7]).name} | {key[4]} | {ref[4]} | {len(g.per_seed)} | "
              f"{g.gain:+.4f} | "
              f"[{g.lo:+.4f}, {g.hi:+.4f}] | {g.verdict()} |")


def print_tool_baselines(records: list[dict]) -> None:
    """cvkd's baseline against ultralytics' (``yolo detect train``) at each schedule: the two tools' runs share no
    seed, so Welch's interval over their runs (training seeds only; the val images are the same for both)."""
    from cvkd.eval.bootstrap import unpaired_difference

    groups, out = group_rows(records), []
    for (epochs, imgsz, model, role, method, interp, pipe, teacher), rs in groups.items():
        ul = groups.get((epochs, imgsz, model, "student", "ultralytics_none", "linear", "ultralytics", ""))
        if role == "student" and method == "none" and ul and len(rs) > 1 and len(ul) > 1:
            d, lo, hi = unpaired_difference([r["map"] for r in rs], [r["map"] for r in ul])
            verdict = "cvkd below" if hi < 0 else "cvkd above" if lo > 0 else "not significant"
            out.append(f"| {epochs} | {model} | {interp} | {pipe} | {len(rs)} vs {len(ul)} | {d:+.4f} | "
                       f"[{lo:+.4f}, {hi:+.4f}] | {verdict} |")
    if out:
        print("\n| epochs | model | cvkd interp | cvkd pipeline | runs (cvkd vs ultralytics) | cvkd - ultralytics | "
              "95 % interval (Welch, seeds) | |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30, help="epochs of every run (default 30)")
    ap.add_argument("--imgsz", type=int, default=320, help="input size of every run (default 320)")
    ap.add_argument("--batch", type=int, default=16, help="batch size of every run (default 16)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the student rows (teacher: seed 0)")
    ap.add_argument("--rows", nargs="+", default=ALL_ROWS, choices=ALL_ROWS, help="which rows to run")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads per run, both tools (0 = their default); a resumed cvkd run takes this value "
                         "and --device, not the ones it started with")
    ap.add_argument("--dataset", default="cctv", choices=list(DATASETS),
                    help="cctv (default; results/cctv_distill.csv) or pennfudan (results/pennfudan_distill.csv)")
    ap.add_argument("--out", default=None, help="folder of the benchmark's runs (default runs/bench_<dataset>; "
                    "runs/bench_<dataset>_e<N> when --epochs N is not 30)")
    ap.add_argument("--interp", default="linear", choices=["linear", "area"],
                    help="how cvkd runs shrink training images (data.train_interp; default linear, as ultralytics); "
                         "also picks the teacher (trained the same way) of the KD rows")
    ap.add_argument("--pipeline", default="cvkd", choices=["cvkd", "ultralytics"],
                    help="training-data pipeline of the cvkd student and KD rows (data.pipeline; default cvkd's own); "
                         "the teacher stays the one trained on cvkd's pipeline")
    ap.add_argument("--student", default=DEFAULT_STUDENT,
                    help="student of the student and KD rows: yolov8n (default) or any cvkd model.name, e.g. "
                         "timm:mobilenetv3_small_100 or tv:fcos_mobilenet_v3 (cross-family rows; the teacher stays "
                         "YOLOv8s; ultralytics rows train the same YOLO student, e.g. yolo26n.yaml)")
    ap.add_argument("--pretrained", default="",
                    help="model.pretrained of the student and KD rows (an ImageNet backbone for a timm student, e.g. "
                         "efficientnet-lite0 with --student timm:tf_efficientnet_lite0); the rows' model becomes "
                         "<student>+<pretrained>")
    ap.add_argument("--teacher", default="teacher",
                    help="name of the teacher run (default teacher: folder teacher_<interp>_s0); another name trains "
                         "or reuses another teacher of the same config (e.g. teacher_rerun: the same seed retrained), "
                         "and the KD rows from it get their own run folders (..._s0_teacher_rerun) and table rows")
    ap.add_argument("--teacher-weights", default="",
                    help="distil the KD rows from this copy of the teacher run's weights instead of training the "
                         "teacher (e.g. checkpoints/cctv_yolov8s_320_e218_fp16.pt.xz, the ultralytics-trained "
                         "teacher, with --teacher ul_e218 --teacher-epochs 218); the rows still name the "
                         "teacher run, whose row must be in the CSV (for another --epochs, the row of the run of that "
                         "name from any schedule)")
    ap.add_argument("--teacher-epochs", type=int, default=0,
                    help="with --teacher-weights: weights trained elsewhere (no run of this benchmark), after this "
                         "many epochs; they get their own teacher row, scored by cvkd's evaluator (merged classes), "
                         "once; `--rows teacher` then scores them alone and trains nothing")
    ap.add_argument("--teacher-classes", default="",
                    help="kd.teacher_classes of the KD rows, for a teacher of other classes than the student's, e.g. "
                         "'{\"0\": person, \"1\": person}' (the two-class e88 teacher)")
    ap.add_argument("--table-only", action="store_true", help="recompute gap_closed and print the table from the CSV")
    ap.add_argument("--last", type=int, default=0,
                    help="with --table-only: also print each run's mean val mAP over its last N epochs (noise check)")
    args = ap.parse_args()
    if not args.student.startswith("yolo") and any(r.startswith("ultralytics") for r in args.rows):
        ap.error("ultralytics rows train a YOLO student: leave them out of --rows with --student " + args.student)
    if args.pretrained and any(r.startswith("ultralytics") for r in args.rows):
        ap.error("--pretrained applies to cvkd's rows: leave the ultralytics rows out of --rows")
    select_dataset(args.dataset)
    # the 30-epoch runs keep their folder; another schedule gets its own (runs/bench_cctv_e100)
    args.out = args.out or str(ROOT / "runs" / (DS["out"] + ("" if args.epochs == 30 else f"_e{args.epochs}")))
    if args.table_only:
        ensure_data()  # the paired gains score the kept predictions against the val json
        write_table(load_records(), args.last)
        return
    ensure_data()
    table = load_records()
    interp_args = [f"data.train_interp={args.interp}"]
    pipe_args = [f"data.pipeline={args.pipeline}"]
    student_args = [] if args.student == DEFAULT_STUDENT else [f"model.name={args.student}"]
    student = args.student  # the rows' model: a pretrained backbone is another student than the same from scratch
    if args.pretrained:
        student_args.append(f"model.pretrained={args.pretrained}")
        student += f"+{args.pretrained}"
    teacher_classes = [f"kd.teacher_classes={args.teacher_classes}"] if args.teacher_classes else []
    teacher_run = Path(args.out) / run_name(args.teacher, 0, args.interp)
    # KD rows from another teacher than the default one get its name in their run folder
    from_teacher = "" if args.teacher == "teacher" else f"_{args.teacher}"
    teacher_pt, teacher_rel = teacher_run / "final.pt", os.path.relpath(teacher_run, ROOT)
    if args.teacher_weights:
        if not Path(args.teacher_weights).is_file():
            sys.exit(f"error: {args.teacher_weights}: teacher weights not found")
        # the teacher run of this schedule's folder, or of another schedule's (a 60-epoch student from the teacher
        # trained for the 30-epoch table)
        # (teachers trained on cvkd's first pipeline keep their names: teacher_rerun_linear_s0)
        names = {teacher_run.name, run_name(args.teacher, 0, args.interp, pipeline="cvkd_v1")}
        named = sorted(r["run"] for r in table.values() if r["role"] == "teacher" and Path(r["run"]).name in names)
        teacher_pt = Path(args.teacher_weights)
        if args.teacher_epochs:  # a teacher trained elsewhere (e.g. by ultralytics' trainer): its own row, once
            teacher_rel = rel_run(str(teacher_pt.resolve()))
            if not any(r["role"] == "teacher" and r["run"] == teacher_rel for r in table.values()):
                table = add_teacher_row(table, teacher_pt, teacher_rel, args)
        elif not named:
            sys.exit(f"error: --teacher-weights: no row of {teacher_rel} in {RESULTS} to name as the teacher "
                     "(give --teacher-epochs to score these weights as their own teacher row)")
        else:
            teacher_rel = teacher_rel if teacher_rel in named else named[0]
    # the baselines need no teacher: `--rows student ultralytics_none` runs beside a process training it; with
    # --teacher-weights the teacher is those weights (scored above), so nothing trains one
    needs_teacher = not args.teacher_weights and ("teacher" in args.rows or any(
        r in KD_ROWS or r == "ultralytics_kd" for r in args.rows))

    def add(rec: dict) -> None:
        nonlocal table
        with locked(RESULTS):
            table = {**table, **load_records()}  # another benchmark process may have added rows meanwhile
            table[record_key(rec)] = rec
            write_table(table, gains=set())  # the gains once, at the end

    if needs_teacher:
        run_cvkd(args, "train.py", "cctv_teacher.yaml", teacher_run.name, 0, interp_args)
        t = score_cvkd(teacher_run, args)
        add({"model": "yolov8s", "role": "teacher", "method": "none", "seed": 0, "imgsz": args.imgsz,
             "epochs": args.epochs, "interp": args.interp, "pipeline": "cvkd", "teacher": "", "run": str(teacher_run),
             **{k: v for k, v in t.items() if k != "model"}})
    ran: set[str] = set()
    for seed in args.seeds:
        for row in args.rows:
            t0 = time.time()
            if row == "teacher":
                continue
            interp, teacher, pipeline = args.interp, "", args.pipeline
            if row == "student":
                run = run_cvkd(args, "train.py", "cctv_student.yaml",
                               run_name("student", seed, interp, student, pipeline),
                               seed, interp_args + pipe_args + student_args)
                rec = score_cvkd(run, args)
                role, method = "student", "none"
            elif row in KD_ROWS:
                run = run_cvkd(args, "distill.py", "cctv_distill.yaml",
                               run_name(row, seed, interp, student, pipeline) + from_teacher,
                               seed, [*interp_args, *pipe_args, *student_args, f"kd.teacher={teacher_pt}", *KD_RESET,
                                      *KD_ROWS[row], *teacher_classes])
                rec = score_cvkd(run, args)
                role, method, teacher = "distilled", row, teacher_rel
            else:
                from cvkd.data import load_coco
                from cvkd.models.export_ultralytics import to_ultralytics_checkpoint

                prefix = "" if args.student == DEFAULT_STUDENT else args.student.replace(".yaml", "") + "_"
                ul_teacher, interp, name, pipeline = None, "linear", f"{prefix}{row}_s{seed}", "ultralytics"
                if row == "ultralytics_kd":
                    suffix = "" if args.interp == "area" else f"_{args.interp}"
                    ul_teacher = Path(args.out) / f"{args.teacher}{suffix}_ultralytics.pt"
                    to_ultralytics_checkpoint(teacher_pt, ul_teacher, args.imgsz)
                    name = f"{prefix}{row}{'_t' + args.interp if suffix else ''}_s{seed}{from_teacher}"
                    teacher = teacher_rel
                run = run_ultralytics(args, name, seed, ul_teacher, ultralytics_data_yaml(DS, SRC, DATA))
                rec = score_ultralytics(run, args, load_coco(DATA / "val.json", SRC / DS["val_images"],
                                                             DS["class_map"]))
                role, method = ("distilled" if row == "ultralytics_kd" else "student"), row
            rec.pop("model", None)
            if "preds" in rec:
                keep_predictions(run, rec.pop("preds"))
            add({"model": student, "role": role, "method": method, "seed": seed, "imgsz": args.imgsz,
                 "epochs": args.epochs, "interp": interp, "pipeline": pipeline, "teacher": teacher, "run": str(run),
                 **rec})
            print(f"{row} seed {seed}: map {rec['map']:.4f} ({time.time() - t0:.0f} s)", flush=True)
            ran.add(rel_run(str(run)))
    if ran:
        with locked(RESULTS):
            write_table({**table, **load_records()}, gains=ran)

if __name__ == "__main__":
    main()
