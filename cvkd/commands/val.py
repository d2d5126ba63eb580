"""COCO box mAP (pycocotools) of a predictions json, or of a model run over a validation set.

Score an existing predictions json (COCO results format: [{image_id, category_id, bbox [x,y,w,h], score}, ...]):

    cvkd val --pred preds.json --gt data/cctv_people/val.json \\
        --images ../shared/datasets/cctv_people/valid/images

Is A better than B? The paired gain over seeds, with a 95 % interval (seeds and val images):

    cvkd val --gt data/cctv_people/val.json --pred kd_s0.json kd_s1.json kd_s2.json \\
        --baseline base_s0.json base_s1.json base_s2.json

Run a checkpoint (cvkd or ultralytics .pt) over a validation set:

    cvkd val --weights runs/student/best.pt --gt datasets/cctv_mini/val.json \\
        --images datasets/cctv_mini/images/val --class-map '{"0": person, "1": person}' --imgsz 320
    cvkd val --weights runs/student/best.pt --data configs/cctv_student.yaml
    cvkd val --weights runs/student/best.pt --gt my_dataset/data.yaml --imgsz 320    # YOLO format, val split

The ground truth is the validated, class-remapped set: with --class-map, merged categories are merged in the ground
truth too, and prediction category ids are mapped the same way. Errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys

from cvkd.commands import run_command
from cvkd.data import check_class_names, load_coco
from cvkd.data.coco import parse_class_map
from cvkd.data.yolo import is_data_yaml
from cvkd.errors import ConfigError
from cvkd.eval import (
    append_csv,
    csv_row,
    evaluate,
    format_table,
    score_predictions,
    write_metrics,
    write_predictions,
)


def data_from_config(path: str) -> tuple[str, str | None, dict | None, int | None]:
    """(val set, its images, class_map, imgsz) from a run config YAML's data section, or from a YOLO data.yaml."""
    from cvkd.config import from_dict, load_yaml
    from cvkd.engine.config import DataConfig

    d = load_yaml(path)
    if "data" not in d and ("names" in d or "nc" in d):  # a YOLO data.yaml, not a run config
        return path, None, None, None
    cfg = from_dict(DataConfig, d.get("data"), "data")
    if cfg.yaml:
        return cfg.yaml, None, cfg.class_map, cfg.imgsz
    return cfg.val_json, cfg.val_images, cfg.class_map, cfg.imgsz


def run_model(args: argparse.Namespace, data, imgsz: int) -> tuple[dict, list]:
    """Mode 2: load the checkpoint with cvkd.models.load_detector and evaluate it."""
    from cvkd.models import load_detector
    from cvkd.runs import pick_device

    device = pick_device(args.device, key="--device")
    model = load_detector(args.weights, device).eval()
    model.e2e_nms = args.e2e_nms
    check_class_names(data.class_names, list(model.class_names), f"{args.weights} on {data.json_path}")

    def predict(img):
        return model.predict(img, conf=args.conf, iou=args.iou, max_det=args.max_det)

    preds: list = []
    metrics = evaluate(predict, data, imgsz, args.batch, device, workers=args.workers, cache=False,
                       predictions_out=preds)
    return metrics, preds


def compare(preds: list[str], baselines: list[str], data, n_boot: int) -> dict:
    """Paired gain of ``preds`` over ``baselines`` (the i-th of each from the same training seed), with the 95 %
    interval of :mod:`cvkd.eval.bootstrap` (training seeds and val-image resamples)."""
    from cvkd.data import to_coco_dict
    from cvkd.eval.bootstrap import file_matches, paired_gain

    if not baselines or len(preds) != len(baselines):
        raise ConfigError(f"--pred and --baseline need one file each per seed, got {len(preds)} and {len(baselines)}")
    gt = to_coco_dict(data)
    pairs = [tuple(file_matches(f, data, gt) for f in pair) for pair in zip(preds, baselines)]
    g = paired_gain(pairs, n_boot=n_boot)
    print(f"{'seed':<5} {'mAP':>7} {'baseline':>8} {'gain':>8}")
    for i, (a, b, d) in enumerate(zip(g.map_a, g.map_b, g.per_seed)):
        print(f"{i:<5} {a:7.4f} {b:8.4f} {d:+8.4f}")
    print(g.line())
    return {"gain": g.gain, "lo": g.lo, "hi": g.hi, "significant": g.significant, "per_seed": g.per_seed,
            "map": g.map_a, "map_baseline": g.map_b, "sd_seed": g.sd_seed, "sd_images": g.sd_images}


def run(args: argparse.Namespace) -> dict:
    if bool(args.pred) == bool(args.weights):
        raise ConfigError("give exactly one of --pred (score a predictions json) or --weights (run a model)")
    gt, images, class_map, imgsz = args.gt, args.images, parse_class_map(args.class_map), args.imgsz
    if args.data:
        if not args.weights:
            raise ConfigError("--data is for --weights; with --pred give --gt (and --images)")
        gt, images, cfg_map, cfg_imgsz = data_from_config(args.data)
        class_map = class_map if class_map is not None else cfg_map
        imgsz = imgsz or cfg_imgsz
    if not gt:
        raise ConfigError("--gt (ground-truth COCO json or YOLO data.yaml) is required"
                          + (" (or --data)" if args.weights else ""))
    yolo = is_data_yaml(gt)
    if args.weights and not images and not yolo:
        raise ConfigError("--weights needs --images (the image folder of --gt), or --data")
    data = load_coco(gt, images, class_map, check_images=images is not None or yolo, box_policy=args.box_policy,
                     split=args.split)
    if args.baseline:
        out = compare(args.pred or [], args.baseline, data, args.n_boot)
        if args.metrics_out:
            print(f"gain: {write_metrics(out, args.metrics_out)}")
        return out
    if args.pred and len(args.pred) > 1:
        raise ConfigError("several --pred files are compared with --baseline (one baseline file per --pred file)")
    if args.pred:
        metrics, preds = score_predictions(args.pred[0], data), None
    else:
        metrics, preds = run_model(args, data, imgsz or 640)
    print(format_table(metrics))
    if args.save_pred and preds is not None:
        print(f"predictions: {write_predictions(preds, args.save_pred)}")
    if args.metrics_out:
        print(f"metrics: {write_metrics(metrics, args.metrics_out)}")
    if args.csv:
        row = csv_row(metrics, name=args.name or "", source=args.pred[0] if args.pred else args.weights, gt=gt)
        print(f"csv row appended: {append_csv(args.csv, row)}")
    return metrics


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", nargs="+", help="mode 1: detections json to score (COCO results format, boxes in "
                    "original pixels); several (one per training seed) with --baseline")
    ap.add_argument("--baseline", nargs="+", help="mode 1: compare --pred against these detections (the i-th from the "
                    "same training seed as the i-th --pred): mean paired gain with a 95 %% interval over seeds and "
                    "val-image resamples (docs/usage.md, 'Is it better?')")
    ap.add_argument("--n-boot", type=int, default=2000, help="--baseline: val-image resamples (default 2000)")
    ap.add_argument("--weights", help="mode 2: checkpoint to run (cvkd .pt from cvkd train, or an ultralytics .pt)")
    ap.add_argument("--gt", help="ground truth: a COCO instances json, or a YOLO data.yaml (ultralytics / Roboflow; "
                    "its --split, images found through it)")
    ap.add_argument("--split", choices=["val", "train", "test"], default="val",
                    help="the split of a YOLO data.yaml to score (default val)")
    ap.add_argument("--images", help="image folder of --gt (file_name is relative to it); with --pred optional: "
                    "when given, every image is checked (exists, not corrupt, size matches the json)")
    ap.add_argument("--data", help="mode 2 alternative to --gt/--images: a run config YAML (its data.val_json and "
                    "data.val_images or data.yaml, data.class_map and data.imgsz are used), or a YOLO data.yaml")
    ap.add_argument("--class-map", help="merge/rename categories, inline YAML/JSON or a file: '{\"0\": person, "
                    "\"1\": person}' maps original category names to class names; null drops a category")
    ap.add_argument("--box-policy", choices=["clip", "reject"], default="clip",
                    help="ground-truth boxes extending outside their image: clip them to it or drop them (counted)")
    ap.add_argument("--imgsz", type=int, default=None, help="mode 2: square input size, a multiple of 32 (default 640, "
                    "or data.imgsz of --data)")
    ap.add_argument("--batch", type=int, default=16, help="mode 2: images per forward pass (default 16)")
    ap.add_argument("--device", default="auto", help="mode 2: auto, cpu, cuda, cuda:1 ... (default auto)")
    ap.add_argument("--workers", type=int, default=0, help="mode 2: data-loader worker processes (default 0)")
    ap.add_argument("--conf", type=float, default=0.001, help="mode 2: score threshold before NMS (default 0.001)")
    ap.add_argument("--iou", type=float, default=0.7, help="mode 2: NMS IoU threshold (default 0.7)")
    ap.add_argument("--max-det", type=int, default=300, help="mode 2: detections kept per image (default 300)")
    ap.add_argument("--e2e-nms", action="store_true", help="mode 2, end-to-end heads (YOLO26): score the one-to-many "
                    "branch with NMS instead of the NMS-free one-to-one top-k (as deployed)")
    ap.add_argument("--save-pred", help="mode 2: write the scored detections json here")
    ap.add_argument("--metrics-out", help="write all metrics (including per-class AP) as json here")
    ap.add_argument("--csv", help="append one row of summary metrics to this CSV (header written once)")
    ap.add_argument("--name", help="value of the 'name' column of the CSV row")
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_command(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
