"""Pseudo-label an image folder or a video with a teacher detector: a COCO json of its confident boxes.

    cvkd pseudo-label footage/cam1.mp4 --teacher runs/teacher/best.pt --out data/pseudo/cam1 \\
        --every 5 --min-change 2 --conf 0.3 --class-conf person=0.4,car=0.5 --imgsz 640
    cvkd pseudo-label datasets/unlabeled_frames --teacher yolov8m.pt --out data/pseudo/frames

Writes OUT/pseudo.json (each box keeps the teacher's "score" and "pseudo": true; frames without boxes are kept as
images without annotations). A video's kept frames go to OUT/images/<video>_<frame:06d>.jpg; an image folder is not
copied (file_name is relative to it). The image root to use is printed, with the data.extra_train entry for training.

Long runs resume: run the same command again after an interruption (OUT/pseudo_state.json); --restart starts over.
Errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys

from cvkd.commands import run_command
from cvkd.engine.pseudo import PseudoOptions, parse_class_conf, pseudo_label


def run(args: argparse.Namespace) -> None:
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    opts = PseudoOptions(imgsz=args.imgsz, conf=args.conf, class_conf=parse_class_conf(args.class_conf), iou=args.iou,
                         max_det=args.max_det, every=args.every, min_change=args.min_change, skip_bad=args.skip_bad,
                         batch=args.batch, save_every=args.save_every)
    r = pseudo_label(args.source, args.teacher, args.out, opts, device=device, restart=args.restart,
                     max_frames=args.max_frames, progress=not args.quiet)
    c = r.counts
    print(f"pseudo labels: {r.json_path} ({r.images} images, {r.boxes} boxes, {r.negatives} images without boxes; "
          f"{c['static']} unchanged frames dropped, {c['bad']} unreadable images skipped)")
    print(f"image root: {r.image_root}")
    if not r.done:
        print(f"stopped before source frame {r.next_frame} (--max-frames): run again with a larger --max-frames, "
              "or without it, to continue")
    print(f"train on it: data.extra_train: [{{json: {r.json_path}, images: {r.image_root}}}]")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="image folder (searched recursively) or video file (anything OpenCV can read)")
    ap.add_argument("--teacher", required=True, help="detector checkpoint: cvkd .pt or ultralytics .pt")
    ap.add_argument("--out", required=True, help="output folder: pseudo.json, pseudo_state.json, images/ (video)")
    ap.add_argument("--imgsz", type=int, default=640, help="letterbox input size, a multiple of 32 (default 640)")
    ap.add_argument("--conf", type=float, default=0.25, help="score threshold of the classes without their own "
                    "(default 0.25)")
    ap.add_argument("--class-conf", help="per-class thresholds by class name, e.g. person=0.3,car=0.5")
    ap.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    ap.add_argument("--max-det", type=int, default=300, help="boxes kept per frame at most (default 300)")
    ap.add_argument("--every", type=int, default=1, help="look at every Nth frame only (0, N, 2N, ...; default 1)")
    ap.add_argument("--min-change", type=float, default=0.0, help="keep a frame only if the mean absolute difference "
                    "of its 64x64 grayscale copy vs the last kept frame is at least this (0-255 units; 0 = keep all; "
                    "about 1-3 drops a static scene)")
    ap.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable images of a folder instead "
                    "of stopping with an error")
    ap.add_argument("--batch", type=int, default=8, help="frames per forward pass (default 8)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    ap.add_argument("--save-every", type=int, default=500, help="source frames between saves of the resume state "
                    "(default 500)")
    ap.add_argument("--max-frames", type=int, default=None, help="stop before this source frame index; run again to "
                    "continue (default: to the end)")
    ap.add_argument("--restart", action="store_true", help="ignore (and delete) an earlier run's state in --out")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_command(parser(), run, argv, interrupted="interrupted: run the same command again to continue from "
                       "{args.out}/pseudo_state.json")


if __name__ == "__main__":
    sys.exit(main())
