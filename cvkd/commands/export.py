"""Export a detector checkpoint (cvkd or ultralytics .pt) for cameras: ONNX FP32, ONNX INT8, OpenVINO IR.

    cvkd export runs/student/best.pt --imgsz 320 --out runs/export
    cvkd export runs/student/best.pt --imgsz 320 --out runs/export --variants full raw --int8 \\
        --calib ../shared/datasets/cctv_people/train/images --calib-frames 200 --calib-method percentile \\
        --eval data/cctv_people/val.json --images ../shared/datasets/cctv_people/valid/images \\
        --class-map '{"0": person, "1": person}'
    cvkd export runs/yolo26n/final.pt --imgsz 320 --variants e2e full raw --int8 --calib frames/   # YOLO26

Files: ``{out}/{stem}_{imgsz}_{variant}[_nms]_{fp32|int8}.onnx`` (static input (1, 3, imgsz, imgsz), float RGB in
[0, 1], letterboxed). ``full``: (1, A, 4 + K) xyxy boxes in input pixels + class scores (``--nms``: NMS baked in,
(N, 6)). ``raw``: per level the box branch (1, 4*reg_max, H, W) and class logits (1, K, H, W), for NPU toolchains
with their own post-processing (YOLO26: the one-to-many branch, (1, 4, H, W) distances). ``e2e`` (YOLO26): the
NMS-free output (1, k, 6) rows x1, y1, x2, y2, score, label, the top-k of the one-to-one branch inside the graph, no
NMS op. ``--int8``: ONNX Runtime static QDQ quantization of ``full`` and ``e2e`` calibrated on the camera's images;
the decode tail stays float. ``--eval``: mAP of PyTorch FP32 and every ``full`` / ``e2e`` file, same evaluator.
Errors print one line and exit 2. See docs/export.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from cvkd.commands import run_command
from cvkd.data import load_coco
from cvkd.data.coco import parse_class_map
from cvkd.data.yolo import is_data_yaml
from cvkd.deploy import (
    CALIB_METHODS,
    DEFAULT_OPSET,
    VARIANTS,
    ExportError,
    ExportRequest,
    export_set,
    load_for_export,
    markdown_table,
    model_size_mb,
    predictors,
    score,
)


def run(args: argparse.Namespace) -> dict[str, Path]:
    req = ExportRequest(imgsz=args.imgsz, out_dir=Path(args.out), stem=args.name or Path(args.weights).stem,
                        variants=tuple(args.variants), opset=args.opset, nms=args.nms, slim=not args.no_slim,
                        int8=args.int8, calib=Path(args.calib) if args.calib else None, calib_frames=args.calib_frames,
                        calib_method=args.calib_method, int8_scheme=args.int8_scheme, openvino=args.openvino)
    req.check()  # opset, variants, calibration folder: before the (slow) checkpoint load
    if args.eval and not args.images and not is_data_yaml(args.eval):
        raise ExportError("--eval needs --images (the image folder of the json)")
    data = load_coco(args.eval, args.images, parse_class_map(args.class_map)) if args.eval else None
    adapter = load_for_export(args.weights)
    written = export_set(adapter, req)
    for key, path in written.items():
        size = model_size_mb(path) if path.suffix == ".onnx" else path.with_suffix(".bin").stat().st_size / 1e6
        print(f"{key:<14} {path}  ({size:.2f} MB)")
    if req.int8_report:
        r = req.int8_report
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(r["excluded_ops"].items()))
        print(f"int8 ({req.int8_scheme}): calibrated on {r['frames']} frames ({req.calib_method}); {len(r['excluded'])} tail nodes kept "
              f"float: {ops}")
        print("int8: float nodes: " + " ".join(r["excluded"]))
    if data is not None:
        rows = []
        for (fmt, precision), det in predictors(adapter, written, args.threads).items():
            m = score(det, data, args.imgsz, args.conf, args.iou, args.max_det)
            rows.append({"model": req.stem, "format": fmt, "precision": precision, "imgsz": args.imgsz,
                         "map": m["map"], "ap50": m["ap50"], "detections": m["num_predictions"]})
        print(markdown_table(rows, ["model", "format", "precision", "imgsz", "map", "ap50", "detections"]))
    return written


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="checkpoint: cvkd .pt (cvkd train, cvkd distill) or ultralytics .pt")
    ap.add_argument("--imgsz", type=int, default=640, help="square input size, a multiple of 32 (default 640)")
    ap.add_argument("--out", default="runs/export", help="output folder (default runs/export)")
    ap.add_argument("--name", help="file name stem (default: the checkpoint's stem)")
    ap.add_argument("--variants", nargs="+", default=["full"], metavar="V",
                    help=f"ONNX variants to write: {' '.join(VARIANTS)} (default full)")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 11..19 (default {DEFAULT_OPSET})")
    ap.add_argument("--nms", action="store_true", help="bake class-aware NMS into the full variant: (N, 6) output")
    ap.add_argument("--no-slim", action="store_true", help="skip onnxslim graph simplification")
    ap.add_argument("--int8", action="store_true", help="also write INT8 (QDQ) models of the full and e2e variants")
    ap.add_argument("--calib", help="--int8: folder of the camera's own images to calibrate on")
    ap.add_argument("--calib-frames", type=int, default=100, help="--int8: images used, evenly spaced (default 100)")
    ap.add_argument("--calib-method", choices=list(CALIB_METHODS), default="minmax",
                    help="--int8: activation range calibration (default minmax)")
    ap.add_argument("--int8-scheme", choices=["per_channel", "npu"], default="per_channel",
                    help="--int8: per_channel (per-channel int8 weights, uint8 activations: what ONNX Runtime runs "
                         "best; default) or npu (per-tensor symmetric int8 weights and activations for every layer, "
                         "the head included, as strict camera NPUs require); the decode tail stays float")
    ap.add_argument("--openvino", action="store_true", help="also convert every ONNX file to OpenVINO IR (.xml/.bin)")
    ap.add_argument("--eval", metavar="JSON", help="COCO json (or a YOLO data.yaml: its val split) to score PyTorch "
                    "FP32 and each full / e2e ONNX file on")
    ap.add_argument("--images", help="--eval: image folder of the json")
    ap.add_argument("--class-map", help="--eval: merge/rename categories, e.g. '{\"0\": person, \"1\": person}'")
    ap.add_argument("--threads", type=int, default=1, help="--eval: ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--conf", type=float, default=0.001, help="--eval: score threshold before NMS (default 0.001)")
    ap.add_argument("--iou", type=float, default=0.7, help="--eval: NMS IoU threshold (default 0.7)")
    ap.add_argument("--max-det", type=int, default=300, help="--eval: detections kept per image (default 300)")
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_command(parser(), run, argv, logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
