"""COCO box mAP with pycocotools, scored against the validated, class-remapped :class:`CocoData`.

``predict_fn(img)`` takes a (B, 3, S, S) RGB batch in [0, 1] and returns per image a dict with ``boxes`` (n, 4) xyxy
in letterboxed input pixels, ``scores`` (n,) and ``labels`` (n,) contiguous class indices. The evaluator maps boxes
back to original pixels, classes to COCO category ids, and runs ``COCOeval`` (bbox, maxDets 1/10/100).
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from ..data import (
    CocoData,
    CocoDataset,
    DataError,
    load_coco,
    read_json,
    to_coco_dict,
    unletterbox_boxes,
)
from ..data.dataset import make_loader

log = logging.getLogger("cvkd")

# name -> index in COCOeval.stats
METRICS = {"map": 0, "ap50": 1, "ap75": 2, "ap_small": 3, "ap_medium": 4, "ap_large": 5,
           "ar1": 6, "ar10": 7, "ar100": 8}
PredictFn = Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]


def _coco(d: dict) -> COCO:
    """A pycocotools COCO object from an in-memory dict, without its prints."""
    c = COCO()
    c.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        c.createIndex()
    return c


def _as_gt(gt: CocoData | str | Path, image_dir: str | Path | None = None, class_map: dict | None = None) -> CocoData:
    if isinstance(gt, CocoData):
        return gt
    return load_coco(gt, image_dir, class_map, check_images=image_dir is not None)


def remap_predictions(preds: list[dict], data: CocoData, src: str = "predictions") -> list[dict]:
    """Check COCO results entries and map their ``category_id`` (an original category of the json, or one of
    ``data.cat_ids``) through the class map; entries of categories dropped by the map are removed (counted)."""
    if not isinstance(preds, list):
        raise DataError(f"{src}: expected a list of detections (COCO results format)")
    image_ids = {r.id for r in data.images}
    out, dropped = [], 0
    for i, p in enumerate(preds):
        if not isinstance(p, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(p):
            raise DataError(f"{src}: detection {i} needs image_id, category_id, bbox and score")
        if p["image_id"] not in image_ids:
            raise DataError(f"{src}: detection {i} refers to image id {p['image_id']}, not in the ground truth")
        if p["category_id"] not in data.orig_to_class:
            raise DataError(f"{src}: detection {i} has category_id {p['category_id']}, not a ground-truth category "
                            f"(known: {sorted(data.orig_to_class)})")
        if not isinstance(p["bbox"], (list, tuple)) or len(p["bbox"]) != 4:
            raise DataError(f"{src}: detection {i}: bbox must be [x, y, w, h], got {p['bbox']!r}")
        k = data.orig_to_class[p["category_id"]]
        if k is None:
            dropped += 1
            continue
        out.append({"image_id": p["image_id"], "category_id": data.cat_ids[k], "bbox": [float(v) for v in p["bbox"]],
                    "score": float(p["score"])})
    if dropped:
        log.info(f"{src}: {dropped} detections of categories dropped by the class map were removed")
    return out


def coco_metrics(gt_dict: dict, results: list[dict], class_names: list[str], cat_ids: list[int]) -> dict[str, Any]:
    """Run COCOeval (bbox). Returns ``map`` (AP@[.5:.95]), ``ap50``, ``ap75``, ``ap_small/medium/large``, ``ar1/10/100``
    and ``per_class`` {name: AP@[.5:.95]}; -1 means no ground truth for that value (pycocotools' convention)."""
    gt = _coco(gt_dict)
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(r) for r in results])  # loadRes adds keys: give it copies
    else:  # loadRes cannot take an empty list
        dt = _coco({"images": gt_dict["images"], "categories": gt_dict["categories"], "annotations": []})
    ev = COCOeval(gt, dt, "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out: dict[str, Any] = {k: float(ev.stats[i]) for k, i in METRICS.items()}
    precision = ev.eval["precision"]  # (T iou thresholds, R recall points, K classes, A areas, M max dets)
    per_class = {}
    for name, cid in zip(class_names, cat_ids):
        p = precision[:, :, ev.params.catIds.index(cid), 0, -1]  # (T, R), area all, maxDets 100
        per_class[name] = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
    out["per_class"] = per_class
    out["num_images"] = len(gt_dict["images"])
    out["num_predictions"] = len(results)
    return out


def score_predictions(preds: str | Path | list[dict], gt: CocoData | str | Path, image_dir: str | Path | None = None,
                      class_map: dict | None = None) -> dict[str, Any]:
    """Score an existing detections json (or list) against ground truth (a CocoData, or a json path loaded with
    ``class_map``; images are checked only when ``image_dir`` is given)."""
    data = _as_gt(gt, image_dir, class_map)
    src = str(preds) if isinstance(preds, (str, Path)) else "predictions"
    raw = read_json(preds) if isinstance(preds, (str, Path)) else preds
    results = remap_predictions(raw, data, src)
    return coco_metrics(to_coco_dict(data), results, data.class_names, data.cat_ids)


def detections_to_coco(det: dict[str, torch.Tensor], image_id: int, letterbox: tuple[float, float, float],
                       orig_size: tuple[int, int], cat_ids: list[int]) -> list[dict]:
    """One image's detections (input pixels, class indices) -> COCO results entries in original pixels."""
    boxes = det["boxes"].detach().float().cpu().numpy().astype(np.float64).reshape(-1, 4)  # (n, 4) input pixels
    scores = det["scores"].detach().float().cpu().numpy().reshape(-1)  # (n,)
    labels = det["labels"].detach().cpu().numpy().astype(np.int64).reshape(-1)  # (n,)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(cat_ids)):
        raise DataError(f"predict_fn returned class index {labels.max()} but the data has {len(cat_ids)} classes")
    scale, px, py = letterbox
    h, w = orig_size
    b = unletterbox_boxes(boxes, scale, (px, py))  # (n, 4) original pixels
    b = np.clip(b, 0, [w, h, w, h])
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).round(3)  # (n, 4)
    return [{"image_id": int(image_id), "category_id": int(cat_ids[k]), "bbox": box, "score": round(float(s), 5)}
            for box, s, k in zip(xywh.tolist(), scores.tolist(), labels.tolist())]


def predict_dataset(predict_fn: PredictFn, data: CocoData | CocoDataset, imgsz: int = 640, batch_size: int = 16,
                    device: str | torch.device = "cpu", workers: int = 0, cache: bool | None = None,
                    quiet: bool = False) -> list[dict]:
    """Run ``predict_fn`` over the (letterboxed, unaugmented) set; returns COCO results in original pixels.
    ``data`` may be a ready eval :class:`CocoDataset` (reuses its image cache)."""
    if isinstance(data, CocoDataset):
        ds = data
    else:
        ds = CocoDataset(data, imgsz, train=False, cache=cache, progress=not quiet)
    if ds.train:
        raise ValueError("predict_dataset needs an evaluation dataset (train=False)")
    loader = make_loader(ds, batch_size, shuffle=False, workers=workers)
    results: list[dict] = []
    for batch in tqdm(loader, desc="evaluating", disable=quiet, leave=False):
        with torch.no_grad():
            dets = predict_fn(batch["img"].to(device, non_blocking=True))
        if len(dets) != len(batch["image_ids"]):
            raise ValueError(f"predict_fn returned {len(dets)} results for a batch of {len(batch['image_ids'])} images")
        for det, iid, lb, size in zip(dets, batch["image_ids"], batch["letterbox"], batch["orig_size"]):
            results.extend(detections_to_coco(det, iid, lb, size, ds.data.cat_ids))
    return results


def evaluate(predict_fn: PredictFn, data: CocoData | CocoDataset, imgsz: int = 640, batch_size: int = 16,
             device: str | torch.device = "cpu", workers: int = 0, cache: bool | None = None, quiet: bool = False,
             predictions_out: list | None = None) -> dict[str, Any]:
    """Predict over ``data`` and score with COCOeval against its validated, remapped ground truth.

    Returns the :func:`coco_metrics` dict. ``predictions_out``, if a list, receives the COCO results that were scored.
    """
    results = predict_dataset(predict_fn, data, imgsz, batch_size, device, workers, cache, quiet)
    if predictions_out is not None:
        predictions_out.extend(results)
    gt = data.data if isinstance(data, CocoDataset) else data
    return coco_metrics(to_coco_dict(gt), results, gt.class_names, gt.cat_ids)
