#!/usr/bin/env python
"""The README demo: teacher vs student vs distilled student on the embedded CCTV frames, on CPU in a few minutes.

    python tools/demo.py                 # configs/demo.yaml: 6 epochs, imgsz 320
    python tools/demo.py train.epochs=2  # any config override

Scores the shipped teacher, trains the student without a teacher, then distils the same student with the same data
and schedule, and prints the three mAPs. Runs go to runs/demo_student and runs/demo_distill.
"""
import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("YOLO_OFFLINE", "1")


def main() -> int:
    from cvkd.data import CocoDataset, load_split
    from cvkd.engine.trainer import resolve_config, train
    from cvkd.errors import CvkdError
    from cvkd.eval import evaluate
    from cvkd.models import load_detector
    from cvkd.models.class_map import map_teacher
    from cvkd.runs import pick_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", "-c", default=str(ROOT / "configs" / "demo.yaml"), help="demo config")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for both runs (e.g. train.epochs=2)")
    args = ap.parse_args()
    try:
        cfg = resolve_config(args.config, args.overrides)
        val = load_split(cfg.data, "val")
        teacher = load_detector(ROOT / cfg.kd.teacher if not Path(cfg.kd.teacher).is_absolute() else cfg.kd.teacher)
        teacher = map_teacher(teacher, val.class_names, cfg.kd.teacher_classes)  # scored on the data's classes
        device = pick_device(cfg.train.device)
        t_metrics = evaluate(teacher.to(device).eval().predict, CocoDataset(val, cfg.data.imgsz), cfg.data.imgsz,
                             cfg.train.eval_batch, device)
        no_kd = ["name=demo_student", "kd.teacher=", "model.init_from=", "kd.logit=0", "kd.feature=0", "kd.box=0"]
        base = train(resolve_config(args.config, [*args.overrides, *no_kd]))
        kd = train(resolve_config(args.config, [*args.overrides, "name=demo_distill"]))
    except CvkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n| model | mAP@[.5:.95] | AP50 |\n|---|---|---|")
    print(f"| teacher {cfg.kd.teacher} | {t_metrics['map']:.4f} | {t_metrics['ap50']:.4f} |")
    print(f"| student {cfg.model.name}, no KD ({cfg.train.epochs} epochs) | {base['map']:.4f} | {base['ap50']:.4f} |")
    print(f"| student {cfg.model.name}, distilled ({cfg.train.epochs} epochs) | {kd['map']:.4f} | {kd['ap50']:.4f} |")
    print(f"\nruns: {base['run_dir']}, {kd['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
