#!/usr/bin/env python
"""KD tuning sweep on a held-out part of the CCTV *train* split, so that the val split stays untouched for reporting.

A seed picks ``--tune-fraction`` of the train source frames (both augmented copies of a frame on the same side) as
the tuning-val set; the student trains on the rest. One factor at a time around the default recipe (``all_joint`` of
benchmarks/cctv_distill.py, configs/cctv_distill.yaml): temperature, loss weights, feature mask, which levels, the KD
weight schedule; and, around the earlier ``all_sw`` recipe, each term switched off. The teacher is the benchmark's
(trained on all train frames: it has seen the tuning-val frames, the student never does; its outputs on the student's
own training frames are what KD uses).

``--start ws`` starts every row from the teacher's weights (``model.init_from=teacher``; ``baseline`` is then ``ws``
alone, no KD term): which KD terms add on top of the best start. Those rows inherit what the teacher learnt of the
tuning-val frames, all alike, so they rank settings against each other, not against the random-start rows; the claim
itself is measured on val (benchmarks/cctv_distill.py).

    python benchmarks/kd_sweep.py --epochs 30 --threads 1                 # every setting
    python benchmarks/kd_sweep.py --settings baseline all_sw logit_t2     # some of them
    python benchmarks/kd_sweep.py --start ws --teacher checkpoints/cctv_yolov8s_320_e218_fp16.pt.xz \\
        --teacher-classes '{"0": person, "1": person}' --settings baseline feature_joint logit_only --threads 1

Writes benchmarks/results/kd_sweep.csv (setting,overrides,start,seed,train_seed,teacher,epochs,tune_frames,map,ap50,
run) and prints a table, then each setting's paired gain over its baseline (same split, teacher and start; paired by
training seed) with a 95 % interval over training seeds and tuning-val frames (a frame's two copies are drawn
together), from the runs' final detections kept under benchmarks/results/preds/kd_sweep/. ``--table-only`` prints
the tables without running anything.
Resumable: finished runs are reused, unfinished ones resume from their last checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from cctv_distill import ALL_SW, DS, ensure_data, keep_predictions, preds_path
from unlabeled import (  # the same frame-level split rule and run check
    finished,
    frame_of,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

SRC = ROOT.parent / "shared" / "datasets" / "cctv_people"
DATA = ROOT / "data" / "cctv_people"
RESULTS = ROOT / "benchmarks" / "results" / "kd_sweep.csv"
COLUMNS = ["setting", "overrides", "start", "seed", "train_seed", "teacher", "student", "epochs", "tune_frames", "map",
           "ap50", "run", "map_o2m"]  # map_o2m: end-to-end students (YOLO26), the one-to-many branch + NMS
# seed: the tuning split; train_seed: the training run's seed (the same unless --train-seed says otherwise, which
# measures the seed noise of one setting on one split); teacher: the KD rows' teacher checkpoint (rows of different
# teachers are different rows, in different run folders); start: the student's initial weights, random or ws (the
# teacher's, by weight selection); student: "" for the YOLOv8n of configs/cctv_student.yaml, else --student (its
# model.name) and the --extra overrides of its KD rows, e.g. "yolo26n.yaml kd.box_loss=iou kd.box=7.5"
DEFAULT_TEACHER = "runs/bench_cctv/teacher_linear_s0/final.pt"  # the teacher of the first rows
# One factor at a time around the default recipe, all_joint (kd.* of configs/cctv_distill.yaml, the "feature_joint"
# row; every row starts from random weights, see main()). The first rows (all_sw and its term ablations) were
# measured around the earlier recipe, all_sw, which is the yaml with the feature term as the mean of three per-level
# means (ALL_SW pins it). "baseline" has no teacher.
SETTINGS = {
    "baseline": None,
    "all_sw": ALL_SW,
    "no_logit": [*ALL_SW, "kd.logit=0"],
    "no_feature": [*ALL_SW, "kd.feature=0"],
    "no_box": [*ALL_SW, "kd.box=0"],
    # one score-weighted mean over the cells of all levels instead of the mean of per-level means (P4/P5, where the
    # teacher is confident nowhere, stop taking 2/3 of the term); weight 6 keeps the P3 term's weight (18 / 3). This is
    # the yaml as it is; the overrides are spelled out so that the row reads the same as when it was measured.
    "feature_joint": ["kd.feature_norm=joint", "kd.feature=6.0"],
    "feature_w2": ["kd.feature=2.0"],
    "feature_w18": ["kd.feature=18.0"],
    "feature_mask_gt": ["kd.feature_mask=gt"],  # FGD's foreground: the GT boxes instead of the teacher's scores
    "feature_mask_all": ["kd.feature_mask=all"],  # no mask: every cell alike (FitNets)
    "feature_p3_only": ["kd.feature_levels=[0]"],
    # scale-free feature term: PKD's per-channel standardised maps under the same teacher-score mask
    "feature_pkd": ["kd.feature_loss=pkd"],
    "logit_t2": ["kd.logit_t=2.0"],
    "logit_w1": ["kd.logit=1.0"],
    "box_t4": ["kd.box_t=4.0"],
    "decay_cosine": ["kd.decay=cosine"],  # KD weights cosine-decayed to 1 % by the end (YOLOv6)
    # one term alone (around all_joint): which of them carries a gain, on top of ws in particular
    "logit_only": ["kd.feature=0", "kd.box=0"],
    "feature_only": ["kd.logit=0", "kd.box=0"],
    "box_only": ["kd.logit=0", "kd.feature=0"],
    "logit_w16": ["kd.logit=16.0"],
    # without the logit term: the teacher scores every anchor near a person high, the student's class targets (TAL)
    # only the few whose own boxes align best, so logit KD decouples the student's scores from its box quality; the
    # box terms teach the localisation itself
    "feature_box": ["kd.logit=0"],
    "box_w1": ["kd.logit=0", "kd.feature=0", "kd.box=1.0"],
    # PP-YOLOE+'s GIoU to the teacher's boxes, at the gain of the student's own box loss to the labels (7.5)
    "box_giou": ["kd.logit=0", "kd.feature=0", "kd.box_loss=iou", "kd.box=7.5"],
    # label assignment distillation (Nguyen et al., WACV 2022): the teacher's predictions, not the student's own,
    # pick the student's positives and their target scores; alone and with LD
    "lad": ["kd.logit=0", "kd.feature=0", "kd.box=0", "kd.assign=teacher"],
    "lad_box": ["kd.logit=0", "kd.feature=0", "kd.assign=teacher"],
}


def overrides_of(setting: str) -> str:
    extra = SETTINGS[setting]
    return "(no KD)" if extra is None else " ".join(extra) or "(configs/cctv_distill.yaml as is)"


def load_table() -> dict:
    """Rows already in the CSV, keyed by (setting, split seed, train seed); re-read before each write so that two
    sweep processes running at once do not drop each other's rows."""
    if not RESULTS.is_file():
        return {}
    with RESULTS.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["train_seed"] = r.get("train_seed") or r["seed"]
        r["teacher"] = r.get("teacher") or ("" if r["setting"] == "baseline" else DEFAULT_TEACHER)
        r["start"] = r.get("start") or "random"  # rows written before --start
        r["student"] = r.get("student") or ""  # rows written before --student: YOLOv8n
    return {(r["setting"], int(r["seed"]), int(r["train_seed"]), r["teacher"], r["start"], r["student"]): r
            for r in rows}


def run_name(setting: str, seed: int, train_seed: int, teacher: str, start: str = "random", student: str = "") -> str:
    """``all_sw_s0``; ``_t1`` for a training seed other than the split's, ``_<checkpoint stem>`` for a row whose
    teacher is not the default one (``feature_w18_s0_cctv_yolov8s_teacher_fp16``), ``_ws`` for a row started from the
    teacher's weights; another student first (``yolo26n_box_loss-iou_box-7.5_feature_only_s0_...``)."""
    prefix = ""
    if student:
        words = [w.split("/")[-1].replace(".yaml", "").replace("kd.", "").replace("=", "-") for w in student.split()]
        prefix = "_".join(w.replace(":", "-") for w in words) + "_"
    name = prefix + f"{setting}_s{seed}" + ("" if train_seed == seed else f"_t{train_seed}")
    name += "" if teacher in ("", DEFAULT_TEACHER) else "_" + Path(teacher).name.split(".")[0]
    return name + ("_ws" if start == "ws" else "")


def row_command(extra: list[str] | None, start: str, teacher: Path, teacher_classes: str, student: str = "",
                student_kd: list[str] | tuple = ()) -> tuple[str, list[str]]:
    """The tool and the overrides of one row. Random start: every row from random weights (the yaml's
    ``model.init_from`` cleared), the teacher has seen the tuning-val frames and a student started from its weights
    would be scored on frames it inherited; ``ws``: every row from the teacher's weights, ``baseline`` with no KD
    term (what benchmarks/cctv_distill.py calls ``ws``). ``student``: its model.name; ``student_kd``: overrides of
    its KD rows (--extra), before the setting's own, so that a setting turning a term off keeps it off."""
    model = [f"model.name={student}"] if student else []
    mapped = [f"kd.teacher_classes={teacher_classes}"] if teacher_classes else []
    if start == "ws":
        kd = ["kd.logit=0", "kd.feature=0", "kd.box=0"] if extra is None else extra
        return "distill.py", [*model, f"kd.teacher={teacher}", "model.init_from=teacher", *mapped, *student_kd, *kd]
    if extra is None:
        return "train.py", model
    return "distill.py", [*model, f"kd.teacher={teacher}", "model.init_from=", *mapped, *student_kd, *extra]


def tuning_split(seed: int, fraction: float, out: Path) -> tuple[Path, Path, int]:
    """(tune-train json, tune-val json, tune-val frames): the train split cut by source frame."""
    d = json.loads((DATA / "train.json").read_text())
    frames = sorted({frame_of(im["file_name"]) for im in d["images"]})
    random.Random(seed).shuffle(frames)
    held = set(frames[: round(fraction * len(frames))])
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, keep in (("tune_train", False), ("tune_val", True)):
        images = [im for im in d["images"] if (frame_of(im["file_name"]) in held) == keep]
        ids = {im["id"] for im in images}
        path = out / f"{name}.json"
        path.write_text(json.dumps({**d, "images": images,
                                    "annotations": [a for a in d["annotations"] if a["image_id"] in ids]}))
        paths.append(path)
    return paths[0], paths[1], len(held)


def print_gains(table: dict, fraction: float, out: Path) -> None:
    """Each setting against the baseline of its split, teacher and start, paired by training seed, with a 95 %
    interval (cvkd.eval.bootstrap) over training seeds and tuning-val frames; rows without kept detections are left
    out. With one training seed the interval holds the frames' variation only (the column says so)."""
    from cvkd.data import load_coco, to_coco_dict
    from cvkd.eval.bootstrap import file_matches, paired_gain

    for r in table.values():  # runs of sweeps before the detections were kept
        kept, written = preds_path(r["run"], RESULTS), ROOT / r["run"] / "val_predictions.json"
        if not kept.is_file() and written.is_file():
            keep_predictions(r["run"], written, RESULTS)
    by_setting: dict = {}
    for (setting, seed, train_seed, teacher, start, student), r in table.items():
        if preds_path(r["run"], RESULTS).is_file():
            by_setting.setdefault((student, seed, teacher, start, setting), {})[train_seed] = r
    lines, splits = [], {}
    for (student, seed, teacher, start, setting), runs in sorted(by_setting.items()):
        # a random-start baseline has no teacher; a ws one is the teacher's weights alone
        base = by_setting.get((student, seed, teacher if start == "ws" else "", start, "baseline"), {})
        paired = sorted(set(runs) & set(base))
        if setting == "baseline" or not paired:
            continue
        if seed not in splits:
            _, tune_val, _ = tuning_split(seed, fraction, out / f"split_s{seed}")
            data = load_coco(tune_val, SRC / "train" / "images", DS["class_map"])
            gt = to_coco_dict(data)
            frames = [frame_of(im["file_name"]) for im in sorted(gt["images"], key=lambda im: im["id"])]
            splits[seed] = (data, gt, frames)
        data, gt, frames = splits[seed]

        def matches(run: str):
            return file_matches(preds_path(run, RESULTS), data, gt)

        g = paired_gain([(matches(runs[t]["run"]), matches(base[t]["run"])) for t in paired], groups=frames)
        verdict = g.verdict(units="frames")  # one training seed: ranks, makes no claim
        lines.append(f"| {student or 'yolov8n'} | {setting} | {start} | {seed} | {Path(teacher).name or '-'} | {len(paired)} | "
                     f"{' / '.join(f'{x:+.4f}' for x in g.per_seed)} | {g.gain:+.4f} | [{g.lo:+.4f}, {g.hi:+.4f}] | "
                     f"{verdict} |")
    if lines:
        print("\n| student | setting | start | split seed | teacher | training seeds | gain per seed | mean gain over "
              "baseline | 95 % interval | |\n|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(lines))


def main() -> None:
    from cvkd.engine.report import read_rows

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="rows to run")
    ap.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    ap.add_argument("--train-seed", type=int, default=None,
                    help="training seed, when it should differ from the split's (--seed): the seed noise of a setting")
    ap.add_argument("--tune-fraction", type=float, default=0.2, help="train frames held out for tuning (default 0.2)")
    ap.add_argument("--epochs", type=int, default=30, help="epochs of every run (default 30)")
    ap.add_argument("--teacher", default=DEFAULT_TEACHER,
                    help=f"teacher checkpoint, relative to the repo (default {DEFAULT_TEACHER}, the teacher of the first "
                         "rows; checkpoints/cctv_yolov8s_320_e218_fp16.pt.xz is the shipped one). KD rows of another "
                         "teacher get their own run folders and rows")
    ap.add_argument("--start", choices=["random", "ws"], default="random",
                    help="student's initial weights in every row: random (default) or ws, the teacher's by weight "
                         "selection (then baseline = ws alone)")
    ap.add_argument("--teacher-classes", default="",
                    help="kd.teacher_classes for a teacher of other classes, e.g. '{\"0\": person, \"1\": person}' "
                         "for the two-class strong teachers of checkpoints/")
    ap.add_argument("--student", default="",
                    help="model.name of every row's student (default: YOLOv8n, configs/cctv_student.yaml), e.g. "
                         "yolo26n.yaml; its rows are their own rows, compared with its own baseline")
    ap.add_argument("--extra", nargs="*", default=[],
                    help="overrides added to every KD row of this --student, e.g. kd.box_loss=iou kd.box=7.5 for a "
                         "head without DFL bins (YOLO26: LD is refused); part of the rows' student column")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per run (0 = torch default)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "kd_sweep"), help="folder of the runs")
    ap.add_argument("--table-only", action="store_true",
                    help="print the tables of the rows already in the CSV (with the paired gains), run nothing")
    args = ap.parse_args()
    if args.table_only:
        table = load_table()
        print_table(table)
        print_gains(table, args.tune_fraction, Path(args.out))
        return
    ensure_data()  # the CCTV set as COCO json, converted once (benchmarks/cctv_distill.py)
    teacher = os.path.relpath(Path(args.teacher).resolve(), ROOT)
    if (args.start == "ws" or any(SETTINGS[s] is not None for s in args.settings)) and not (ROOT / teacher).is_file():
        sys.exit(f"error: {args.teacher}: teacher checkpoint not found (run benchmarks/cctv_distill.py --rows teacher)")
    tune_train, tune_val, n_held = tuning_split(args.seed, args.tune_fraction, Path(args.out) / f"split_s{args.seed}")
    images = str(SRC / "train" / "images")
    data = [f"data.train_json={tune_train}", f"data.train_images={images}", f"data.val_json={tune_val}",
            f"data.val_images={images}"]
    train_seed = args.seed if args.train_seed is None else args.train_seed
    if args.extra and not args.student:
        sys.exit("error: --extra needs --student (the YOLOv8n rows are the yaml's recipe as it is)")
    student = " ".join([args.student, *args.extra]) if args.student else ""
    table = load_table()
    for setting in args.settings:
        extra = SETTINGS[setting]
        row_teacher = "" if extra is None and args.start == "random" else teacher
        run = Path(args.out) / run_name(setting, args.seed, train_seed, row_teacher, args.start, student)
        if not finished(run, args.epochs):
            tool, overrides = row_command(extra, args.start, ROOT / teacher, args.teacher_classes, args.student,
                                          args.extra)
            config = "cctv_student.yaml" if tool == "train.py" else "cctv_distill.yaml"
            cmd = [sys.executable, str(ROOT / "tools" / tool), "-c", str(ROOT / "configs" / config)]
            if (run / "config.yaml").is_file():
                cmd.append(f"resume={run}")
            else:
                cmd += [f"out={args.out}", f"name={run.name}", f"train.epochs={args.epochs}",
                        f"train.seed={train_seed}", f"train.threads={args.threads}", *data, *overrides]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        r = read_rows(run / "results.csv")[-1]
        if (run / "val_predictions.json").is_file():  # the final detections, for the paired intervals
            keep_predictions(run, run / "val_predictions.json", RESULTS)
        table = {**table, **load_table()}
        table[(setting, args.seed, train_seed, row_teacher, args.start, student)] = {
            "setting": setting, "overrides": overrides_of(setting), "start": args.start, "seed": args.seed,
            "train_seed": train_seed, "teacher": row_teacher, "student": student,
            "epochs": args.epochs, "tune_frames": n_held, "map": r["map"], "ap50": r["ap50"],
            "run": os.path.relpath(run, ROOT), "map_o2m": r.get("map_o2m", "")}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for key in sorted(table, key=lambda k: (k[5], k[4], k[1], k[3], list(SETTINGS).index(k[0])
                                                    if k[0] in SETTINGS else 99, k[2])):
                if key[0] in SETTINGS:  # rows of earlier invocations say what their setting overrides today
                    table[key]["overrides"] = overrides_of(key[0])
                w.writerow({c: table[key].get(c, "") for c in COLUMNS})
    print_table(table)
    print_gains(table, args.tune_fraction, Path(args.out))
    print(f"\nwritten {RESULTS}")


def print_table(table: dict) -> None:
    print("| student | setting | overrides | start | split seed | train seed | teacher | mAP@[.5:.95] (tuning split) | "
          "AP50 |\n|---|---|---|---|---|---|---|---|---|")
    for r in table.values():
        print(f"| {r.get('student') or 'yolov8n'} | {r['setting']} | {r['overrides']} | {r['start']} | {r['seed']} | {r['train_seed']} | "
              f"{r['teacher']} | {float(r['map']):.4f} | {float(r['ap50']):.4f} |")


if __name__ == "__main__":
    main()
