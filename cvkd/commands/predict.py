"""Run a detector over images, a folder, a video file or a camera stream; write what it detects.

    cvkd predict runs/kd/final.pt footage/cam1.mp4 --out runs/predict --conf 0.3 --every 2
    cvkd predict runs/export/final_320_full_int8.onnx frames/ --out runs/predict_int8
    cvkd predict final.pt rtsp://user:pass@10.0.0.5:554/stream1 --max-frames 500 --out runs/live
    cvkd predict final.pt 0 --max-frames 100          # webcam 0

Models: a cvkd or ultralytics .pt (PyTorch), a ``full`` ONNX file from ``cvkd export`` (FP32 or INT8, ONNX Runtime),
or the OpenVINO IR (.xml) converted from one (needs ``pip install openvino``). Writes OUT/predictions.json (COCO
results: image_id, category_id = class index + 1, bbox [x, y, w, h] in frame pixels, score, and file_name for images
or frame for video), annotated images (same relative names) or OUT/<video>_annotated.mp4. Prints latency per frame
(letterbox + model + boxes, mean/p50/p95) and FPS at the end. Errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import logging
import sys

from cvkd.deploy.predict import PredictOptions, predict
from cvkd.errors import CvkdError
from cvkd.runs import console_logging


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="cvkd/ultralytics .pt, cvkd full ONNX (.onnx), or OpenVINO IR (.xml)")
    ap.add_argument("source", help="image, image folder, video file, rtsp:// / http(s):// URL, or webcam index (0)")
    ap.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    ap.add_argument("--imgsz", type=int, default=None,
                    help="square input size, a multiple of 32 (default: the model's own, else 640)")
    ap.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    ap.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    ap.add_argument("--max-det", type=int, default=300, help="detections kept per frame (default 300)")
    ap.add_argument("--classes", help="keep only these classes: names or indices, comma-separated (person,car)")
    ap.add_argument("--every", type=int, default=1, help="video/stream: run on every Nth frame (default 1)")
    ap.add_argument("--max-frames", type=int, default=0, help="stop after this many processed frames (0: all)")
    ap.add_argument("--reconnect", type=int, default=3,
                    help="stream: reopen a stream that stops delivering frames this many times (default 3)")
    ap.add_argument("--reconnect-wait", type=float, default=1.0, help="stream: seconds before each reopen (default 1)")
    ap.add_argument("--no-annotate", action="store_true", help="write predictions.json only, no images/video")
    ap.add_argument("--e2e-nms", action="store_true", help="end-to-end .pt models (YOLO26): the one-to-many branch "
                    "with NMS instead of the NMS-free one-to-one top-k")
    ap.add_argument("--device", default="auto", help="PyTorch models: auto, cpu, cuda, cuda:1 ... (default auto)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime / OpenVINO threads (default 1)")
    return ap


def options(args: argparse.Namespace) -> PredictOptions:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    return PredictOptions(imgsz=args.imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det, classes=classes,
                          every=args.every, max_frames=args.max_frames, reconnect=args.reconnect,
                          reconnect_wait=args.reconnect_wait, annotate=not args.no_annotate, device=args.device,
                          threads=args.threads, e2e_nms=args.e2e_nms)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console_logging(logging.WARNING)
    try:
        result = predict(args.model, args.source, args.out, options(args))
    except CvkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.interrupted:
        print(f"interrupted after {result.frames} frames (what was done is written)", file=sys.stderr)
    print(f"{len(result.predictions)} detections -> {args.out}/predictions.json")
    print(result.summary())
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
