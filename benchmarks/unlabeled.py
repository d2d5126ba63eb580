#!/usr/bin/env python
"""Few labels, much footage: hard-label KD (teacher pseudo-labels) and soft-label KD on unlabelled CCTV frames.

The CCTV train split has 258 source frames x 2 augmented copies. A seed picks a fraction of the source frames
(both copies of a frame on the same side) whose labels are kept; the other frames are treated as unlabelled footage.
Rows, all with the same student and val split (44 frames), and the same number of optimizer steps on labelled
(or pseudo-labelled) images: runs that train on the labelled part alone get `--epochs` x (all frames / labelled
frames) epochs (121 for a quarter), so that they are not under-trained next to the rows that add the unlabelled
frames (`--epochs` over ~4x as many images). The `epochs` column says what each run had.

- teacher_labeled: the teacher trained on the labelled part only (it pseudo-labels and distils below);
- teacher_all: the benchmark teacher trained on all labels (benchmarks/cctv_distill.py; stated, not used below);
- labeled: the student on the labelled part only;
- hard: + the teacher's pseudo-labels of the unlabelled frames as extra training data (tools/pseudo_label.py);
- soft: + soft KD (logit/feature/box terms) on the unlabelled frames, labelled part as usual;
- both: hard + soft;
- soft_joint, both_joint: the same with the score-weighted feature hint normalised once over all pyramid levels
  (kd.feature_norm=joint kd.feature=6), after `soft` diverged on seed 1 (docs/pseudo_labels.md).

    python benchmarks/unlabeled.py --seeds 0 1 2 --fraction 0.25 --epochs 30 --threads 1
    python benchmarks/unlabeled.py --table-only     # the table from the CSV

Writes benchmarks/results/unlabeled.csv (setting,seed,labeled_frames,unlabeled_frames,map,ap50,...). Resumable:
finished runs are reused, unfinished ones resume from their last checkpoint.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

from cctv_distill import ALL_SW, ensure_data  # noqa: E402

SRC = ROOT.parent / "shared" / "datasets" / "cctv_people"
DATA = ROOT / "data" / "cctv_people"
RESULTS = ROOT / "benchmarks" / "results" / "unlabeled.csv"
COLUMNS = ["setting", "seed", "labeled_frames", "unlabeled_frames", "map", "ap50", "epochs", "imgsz", "run"]
SETTINGS = ["teacher_labeled", "labeled", "hard", "soft", "both", "soft_joint", "both_joint"]
# soft KD uses the all_sw recipe of benchmarks/cctv_distill.py (configs/cctv_distill.yaml + ALL_SW): its feature
# mask is the teacher's own score, so it needs no ground truth on the unlabelled frames. The *_joint rows normalise
# that score-weighted hint once over all levels (kd.feature_norm=joint) instead of averaging per-level means, which
# gave P4/P5 (where the teacher is confident nowhere on this set) a full share each; kd.feature=6 keeps the weight of
# the P3 term (18 / 3 levels) as it was. docs/pseudo_labels.md has the measurement that led to it.
JOINT = ["kd.feature_norm=joint", "kd.feature=6.0"]


def frame_of(file_name: str) -> str:
    return file_name.split("_jpg.rf.")[0]


def split(seed: int, fraction: float, out: Path) -> tuple[Path, Path, int, int]:
    """labelled json + a folder of links to the unlabelled images; both copies of a frame on the same side."""
    d = json.loads((DATA / "train.json").read_text())
    frames = sorted({frame_of(im["file_name"]) for im in d["images"]})
    random.Random(seed).shuffle(frames)
    keep = set(frames[: round(fraction * len(frames))])
    images = [im for im in d["images"] if frame_of(im["file_name"]) in keep]
    ids = {im["id"] for im in images}
    out.mkdir(parents=True, exist_ok=True)
    lab = out / "labeled.json"
    annotations = [a for a in d["annotations"] if a["image_id"] in ids]
    lab.write_text(json.dumps({**d, "images": images, "annotations": annotations}))
    unl = out / "unlabeled"
    unl.mkdir(exist_ok=True)
    for im in d["images"]:
        if frame_of(im["file_name"]) not in keep and not (unl / im["file_name"]).exists():
            (unl / im["file_name"]).symlink_to(SRC / "train" / "images" / im["file_name"])
    return lab, unl, len(keep), len(frames) - len(keep)


def finished(run: Path, epochs: int) -> bool:
    from cvkd.engine.report import read_rows

    rows = read_rows(run / "results.csv")
    return bool(rows) and int(rows[-1]["epoch"]) >= epochs and rows[-1].get("map", "") != ""


def train(args, tool: str, config: str, name: str, seed: int, extra: list[str], epochs: int) -> Path:
    run = Path(args.out) / name
    if not finished(run, epochs):
        cmd = [sys.executable, str(ROOT / "tools" / tool), "-c", str(ROOT / "configs" / config)]
        if (run / "config.yaml").is_file():
            cmd.append(f"resume={run}")
        else:
            cmd += [f"out={args.out}", f"name={name}", f"train.epochs={epochs}", f"data.imgsz={args.imgsz}",
                    f"train.seed={seed}", f"train.threads={args.threads}", *extra]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return run


def print_table(table: dict) -> None:
    """One markdown row per setting: mAP per seed, then mean +- sd over the seeds run so far."""
    import statistics

    order = ["teacher_all", *SETTINGS]
    from cvkd.engine.report import read_rows

    def last5(run: str) -> str:  # noise check: mean val mAP of the run's last 5 epochs (no epoch picked)
        path = ROOT / run / "results.csv"
        maps = [float(r["map"]) for r in read_rows(path)[-5:] if r.get("map")] if path.is_file() else []
        return f"{statistics.mean(maps):.4f}" if maps else "not measured"

    print("| setting | labelled frames | unlabelled frames | epochs | mAP@[.5:.95] per seed | mean +- sd "
          "| AP50 mean | last-5-epoch mean per seed |\n|---|---|---|---|---|---|---|---|")
    for setting in sorted({k[0] for k in table}, key=lambda x: order.index(x) if x in order else 99):
        rows = [table[k] for k in sorted(table) if k[0] == setting]
        maps, ap50s = [float(r["map"]) for r in rows], [float(r["ap50"]) for r in rows]
        per_seed = " / ".join(f"s{r['seed']} {float(r['map']):.4f}" for r in rows)
        sd = statistics.stdev(maps) if len(maps) > 1 else 0.0
        print(f"| {setting} | {rows[0]['labeled_frames']} | {rows[0]['unlabeled_frames']} | {rows[0]['epochs']} | "
              f"{per_seed} | {statistics.mean(maps):.4f} +- {sd:.4f} | {statistics.mean(ap50s):.4f} | "
              f"{' / '.join(last5(r['run']) for r in rows)} |")


def main() -> None:
    from cvkd.engine.report import read_rows

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split/training seeds (default 0 1 2)")
    ap.add_argument("--fraction", type=float, default=0.25, help="fraction of source frames that keep labels")
    ap.add_argument("--epochs", type=int, default=30,
                    help="epochs of the runs on all frames (runs on the labelled part alone get more, see above)")
    ap.add_argument("--imgsz", type=int, default=320, help="input size of every run")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per run (0 = torch default)")
    ap.add_argument("--settings", nargs="+", default=SETTINGS, choices=SETTINGS, help="rows to run")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_unlabeled"), help="folder of the runs")
    ap.add_argument("--results", default=str(RESULTS), help=f"CSV to write (default {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--table-only", action="store_true", help="print the table from the CSV, train nothing")
    args = ap.parse_args()
    results = Path(args.results)
    if args.table_only:
        if not results.is_file():
            sys.exit(f"error: {results}: no results yet (run the benchmark first)")
        with results.open() as f:
            print_table({(r["setting"], int(r["seed"])): r for r in csv.DictReader(f)})
        return
    ensure_data()  # the CCTV set as COCO json, converted once (benchmarks/cctv_distill.py)
    table = {}
    if results.is_file():
        with results.open() as f:
            table = {(r["setting"], int(r["seed"])): r for r in csv.DictReader(f)}
    teacher_all = ROOT / "runs" / "bench_cctv" / "teacher_linear_s0"  # same pipeline (data.train_interp=linear)
    if finished(teacher_all, args.epochs):
        r = read_rows(teacher_all / "results.csv")[-1]
        table[("teacher_all", 0)] = {"setting": "teacher_all", "seed": 0, "labeled_frames": 258, "unlabeled_frames": 0,
                                     "map": r["map"], "ap50": r["ap50"], "epochs": args.epochs, "imgsz": args.imgsz,
                                     "run": os.path.relpath(teacher_all, ROOT)}
    for seed in args.seeds:
        lab, unl, n_lab, n_unl = split(seed, args.fraction, Path(args.out) / f"split_s{seed}")
        data = [f"data.train_json={lab}"]
        n_all = n_lab + n_unl
        long = round(args.epochs * n_all / n_lab)  # labelled part only: as many steps as args.epochs over all frames
        epochs = {"teacher_labeled": long, "labeled": long, "hard": args.epochs, "soft": long, "both": args.epochs,
                  "soft_joint": long, "both_joint": args.epochs}
        teacher = Path(args.out) / f"teacher_labeled_s{seed}"
        if set(args.settings) - {"labeled"}:  # every other row needs the teacher trained on the labelled part
            teacher = train(args, "train.py", "cctv_teacher.yaml", f"teacher_labeled_s{seed}", seed, data, long)
        pseudo_dir = Path(args.out) / f"pseudo_s{seed}"
        if any(s in args.settings for s in ("hard", "both", "both_joint")) and not (pseudo_dir / "pseudo.json").is_file():
            subprocess.run([sys.executable, str(ROOT / "tools" / "pseudo_label.py"), str(unl), "--teacher",
                            str(teacher / "final.pt"), "--out", str(pseudo_dir), "--imgsz", str(args.imgsz),
                            "--conf", "0.25"], check=True)
        hard = [f"data.extra_train=[{{json: '{pseudo_dir / 'pseudo.json'}', images: '{unl}'}}]"]
        soft = [f"kd.teacher={teacher / 'final.pt'}", f"data.unlabeled=['{unl}']", *ALL_SW]
        runs = {"teacher_labeled": teacher} if finished(teacher, long) else {}
        for setting in args.settings:
            if setting == "labeled":
                runs[setting] = train(args, "train.py", "cctv_student.yaml", f"labeled_s{seed}", seed, data,
                                      epochs[setting])
            elif setting == "hard":
                runs[setting] = train(args, "train.py", "cctv_student.yaml", f"hard_s{seed}", seed, data + hard,
                                      epochs[setting])
            elif setting == "soft":
                runs[setting] = train(args, "distill.py", "cctv_distill.yaml", f"soft_s{seed}", seed, data + soft,
                                      epochs[setting])
            elif setting == "both":
                runs[setting] = train(args, "distill.py", "cctv_distill.yaml", f"both_s{seed}", seed,
                                      data + hard + soft, epochs[setting])
            elif setting == "soft_joint":
                runs[setting] = train(args, "distill.py", "cctv_distill.yaml", f"soft_joint_s{seed}", seed,
                                      data + soft + JOINT, epochs[setting])
            elif setting == "both_joint":
                runs[setting] = train(args, "distill.py", "cctv_distill.yaml", f"both_joint_s{seed}", seed,
                                      data + hard + soft + JOINT, epochs[setting])
        for setting, run in runs.items():
            r = read_rows(run / "results.csv")[-1]
            table[(setting, seed)] = {"setting": setting, "seed": seed, "labeled_frames": n_lab,
                                      "unlabeled_frames": 0 if setting in ("labeled", "teacher_labeled") else n_unl,
                                      "map": r["map"], "ap50": r["ap50"], "epochs": epochs[setting],
                                      "imgsz": args.imgsz, "run": os.path.relpath(run, ROOT)}
        results.parent.mkdir(parents=True, exist_ok=True)
        if results.is_file():  # merge: another instance (other seeds or settings) may have written rows meanwhile
            with results.open() as f:
                table = {**{(r["setting"], int(r["seed"])): r for r in csv.DictReader(f)},
                         **{k: v for k, v in table.items() if k[1] == seed or k[0] == "teacher_all"}}
        with results.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for key in sorted(table, key=lambda k: (k[1], k[0])):
                w.writerow({c: table[key].get(c, "") for c in COLUMNS})
    print_table(table)
    print(f"\nwritten {results}")


if __name__ == "__main__":
    main()
