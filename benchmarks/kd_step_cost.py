"""What distillation adds to a training step: the CCTV student alone against the student plus the YOLOv8s teacher.

Runs tools/train.py (configs/cctv_student.yaml) and tools/distill.py (configs/cctv_distill.yaml as the all_sw recipe)
for ``--steps`` steps of one epoch each, with the teacher's forward pass in fp32 and in bf16 + channels_last
(``kd.teacher_precision``; bf16 only where the CPU has native bf16, else that row says so), and with the student's
and teacher's convolutions on channels-last (NHWC, ``train.channels_last``, the default) or on contiguous NCHW
memory (the ``_nchw`` rows). Settings are interleaved
``--repeats`` times so that they share the machine's load alike; the table gives the median seconds per training
step (data loading included, evaluation not) and the ratio to the baseline.

    python benchmarks/kd_step_cost.py --steps 20 --repeats 3 --threads 1
    python benchmarks/kd_step_cost.py --teacher-pass     # the teacher's pass alone: time and bf16 error, no CSV

Writes benchmarks/results/kd_step_cost.csv (setting,teacher_precision,channels_last,repeat,steps,sec_per_step,threads,
device).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

from cctv_distill import ALL_SW, ensure_data  # noqa: E402  (converts the CCTV set to COCO json once)

RESULTS = ROOT / "benchmarks" / "results" / "kd_step_cost.csv"
COLUMNS = ["setting", "teacher_precision", "channels_last", "repeat", "steps", "sec_per_step", "threads", "device"]
SETTINGS = {  # name: (tool, config, kd.teacher_precision, train.channels_last)
    "baseline": ("train.py", "cctv_student.yaml", "", True),
    "baseline_nchw": ("train.py", "cctv_student.yaml", "", False),
    "kd_fp32_teacher": ("distill.py", "cctv_distill.yaml", "fp32", True),
    "kd_fp32_teacher_nchw": ("distill.py", "cctv_distill.yaml", "fp32", False),
    "kd_bf16_teacher": ("distill.py", "cctv_distill.yaml", "bf16", True),
}


def run_once(args, name: str, out: Path) -> float:
    from cvkd.engine.report import read_rows

    tool, config, precision, channels_last = SETTINGS[name]
    cmd = [sys.executable, str(ROOT / "tools" / tool), "-c", str(ROOT / "configs" / config), f"out={out}",
           f"name={name}", "train.epochs=1", f"train.max_steps={args.steps}", f"train.threads={args.threads}",
           f"train.channels_last={str(channels_last).lower()}"]
    if precision:
        cmd += [f"kd.teacher={args.teacher}", f"kd.teacher_precision={precision}", *ALL_SW]
        if args.teacher_classes:
            cmd.append(f"kd.teacher_classes={args.teacher_classes}")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {name} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return float(read_rows(out / name / "results.csv")[-1]["sec_train"]) / args.steps


def teacher_pass(args) -> None:
    """Time the teacher's forward pass alone (a batch of 16 random 320 px images): fp32 on NCHW and on channels-last
    memory, fp32 on channels-last with BatchNorm folded into the convolutions (what the trainer runs), and bf16 +
    channels_last (emulated where the CPU has no bf16 instructions). The settings take turns (``--repeats`` rounds
    of 3 passes each, median per setting), so load from other processes hits them alike. Also prints how far the
    folded and bf16 outputs are from fp32."""
    import copy
    import statistics
    import time

    import torch

    from cvkd.engine.distill import cpu_bf16_teacher, teacher_forward
    from cvkd.models import load_detector

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t32 = load_detector(args.teacher, "cpu").eval()
    t_cl = copy.deepcopy(t32).to(memory_format=torch.channels_last)
    t_fold = copy.deepcopy(t32)
    t_fold.fold_batchnorm()
    t_fold.to(memory_format=torch.channels_last)
    img = torch.rand(16, 3, 320, 320)
    img_cl = img.contiguous(memory_format=torch.channels_last)
    settings = {"fp32": (t32, img, False), "fp32 + channels_last": (t_cl, img_cl, False),
                "fp32 + channels_last + folded BN": (t_fold, img_cl, False), "bf16 + channels_last": (t_cl, img, True)}
    outs = {name: teacher_forward(*s) for name, s in settings.items()}  # warm-up, and the outputs compared below
    secs = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, s in settings.items():
            for _ in range(3):
                t0 = time.perf_counter()
                teacher_forward(*s)
                secs[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in secs.items()}
    ref = outs["fp32"]

    def max_score_diff(out) -> float:
        return (ref.cls_logits.sigmoid() - out.cls_logits.sigmoid()).abs().max().item()

    native = "native" if cpu_bf16_teacher("auto", torch.device("cpu")) else "emulated"
    print(f"teacher pass, batch 16 at 320 px, {args.threads} thread(s), median of {3 * args.repeats}; bf16 is "
          f"{native} on this CPU")
    for name in settings:
        print(f"  {name:34s} {med[name]:.3f} s ({med['fp32'] / med[name]:.2f}x fp32), max score difference "
              f"{max_score_diff(outs[name]):.1e}")
    bf16 = outs["bf16 + channels_last"]
    feat = [f"{((a - b).norm() / a.norm()).item():.4f}" for a, b in zip(ref.feats, bf16.feats)]
    print(f"  bf16 feature relative error per level {' / '.join(feat)}")


def main() -> None:
    import torch

    from cvkd.engine.distill import cpu_bf16_teacher

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every setting (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    ap.add_argument("--teacher", default=str(ROOT / "checkpoints" / "cctv_yolov8s_320_e218_fp16.pt.xz"),
                    help="teacher checkpoint (default: the shipped YOLOv8s CCTV teacher)")
    ap.add_argument("--teacher-classes", default='{"0": person, "1": person}',
                    help="kd.teacher_classes of --teacher (default: the shipped teacher's two classes merged; '' for "
                         "a teacher of the data's classes)")
    ap.add_argument("--results", default=str(RESULTS), help=f"CSV to write (default {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--teacher-pass", action="store_true",
                    help="time the teacher's forward pass alone (fp32 against bf16) and print the bf16 error")
    args = ap.parse_args()
    if args.teacher_pass:
        return teacher_pass(args)
    ensure_data()
    names = list(SETTINGS)
    if not cpu_bf16_teacher("auto", torch.device("cpu")):
        names.remove("kd_bf16_teacher")
        print("this CPU has no native bf16: the bf16 teacher row is skipped (emulated bf16 is slower than fp32)")
    device = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name in names:
                sec = run_once(args, name, Path(tmp) / f"r{rep}")
                print(f"repeat {rep}: {name} {sec:.3f} s/step", flush=True)
                rows.append({"setting": name, "teacher_precision": SETTINGS[name][2],
                             "channels_last": SETTINGS[name][3], "repeat": rep,
                             "steps": args.steps, "sec_per_step": f"{sec:.4f}", "threads": args.threads,
                             "device": device})
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    med = {n: statistics.median(float(r["sec_per_step"]) for r in rows if r["setting"] == n) for n in names}
    print(f"\n| setting | median s/step ({args.repeats} runs of {args.steps} steps) | x baseline |\n|---|---|---|")
    for n in names:
        print(f"| {n} | {med[n]:.3f} | {med[n] / med['baseline']:.2f} |")
    print(f"\nwritten {results}")


if __name__ == "__main__":
    main()
