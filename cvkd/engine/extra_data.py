"""Training data beyond the labelled set: pseudo-labelled sets (hard-label KD) and unlabelled folders (soft-label KD).

Hard-label KD: a teacher labels frames once (``cvkd pseudo-label``) and the student trains on those labels as if
they were ground truth (``data.extra_train``). Soft-label KD: on unlabelled frames (``data.unlabeled``) only the KD
terms apply; where a term needs foreground (masks, the logit term's fg/bg split) the teacher's own confident boxes
stand in for ground truth.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from ..data import CocoData, DataError, ImageRecord, load_coco
from ..data.images import check_image
from ..data.yolo import is_data_yaml, list_images
from ..models import Assignment, DetectorAdapter, DetOutputs

log = logging.getLogger("cvkd")


def add_extra_train(train: CocoData, extra: list[dict], box_policy: str) -> CocoData:
    """The labelled set plus each ``{json, images[, class_map]}`` set (``json`` may be a YOLO data.yaml, no ``images``); class lists must agree with the labelled set's.

    A pseudo-labelled set already uses the teacher's (final) class names, so by default no class map is applied to
    it; give ``class_map`` for an extra set that still has the source's categories.
    """
    images = list(train.images)
    for i, item in enumerate(extra):
        yolo = isinstance(item, dict) and is_data_yaml(str(item.get("json", "")))
        need = {"json"} if yolo else {"json", "images"}
        if not isinstance(item, dict) or not need <= set(item) <= need | {"class_map"}:
            raise ConfigError(f"data.extra_train[{i}] must be a mapping with keys json (a COCO json, or a YOLO "
                              f"data.yaml whose train split is used), images (the json's image folder; none for a "
                              f"data.yaml) and optionally class_map, got {item!r}")
        more = load_coco(item["json"], item.get("images"), item.get("class_map"), check_images=True,
                         box_policy=box_policy, split="train")
        if more.class_names != train.class_names:
            raise DataError(f"{item['json']}: classes {more.class_names} differ from the training set's "
                            f"{train.class_names} (give this extra set a class_map)")
        images += more.images
        log.info(f"extra training set {item['json']}: {len(more)} images, {more.num_boxes} boxes")
    return dataclasses.replace(train, images=images, image_cache={})


def load_unlabeled(folders: list[str], class_names: list[str], cat_ids: list[int]) -> CocoData | None:
    """Image folders without labels, as a CocoData with no boxes (for the augmentation pipeline)."""
    if not folders:
        return None
    records = []
    for folder in folders:
        paths = list_images(Path(folder))
        if not paths:
            raise DataError(f"data.unlabeled folder {folder}: no images found")
        for p in paths:
            w, h = check_image(p, None, f"{folder}: {p.name}")
            records.append(ImageRecord(id=len(records) + 1, file_name=str(p), path=p, width=w, height=h,
                                       bbox=np.zeros((0, 4)), labels=np.zeros(0, np.int64),
                                       ann_ids=np.zeros(0, np.int64), iscrowd=np.zeros(0, bool), areas=np.zeros(0)))
    log.info(f"unlabeled frames for soft KD: {len(records)} from {len(folders)} folder(s)")
    first = Path(folders[0])
    return CocoData(json_path=first, image_dir=first, class_names=class_names, cat_ids=cat_ids, images=records,
                    orig_to_class={})


def teacher_as_ground_truth(teacher: DetectorAdapter, out_t: DetOutputs, img: torch.Tensor, conf: float):
    """The teacher's confident predictions as stand-in ground truth: a batch dict (bboxes, batch_idx, cls) and an
    anchor-level Assignment (fg = teacher max class score above ``conf``)."""
    preds = teacher.predict(img, conf=conf, out=out_t)
    boxes = torch.cat([p["boxes"] for p in preds]) if preds else img.new_zeros(0, 4)  # (M, 4)
    bidx = torch.cat([torch.full((len(p["boxes"]),), float(b), device=img.device) for b, p in enumerate(preds)])
    labels = torch.cat([p["labels"].float() for p in preds])
    fg = out_t.cls_logits.detach().float().sigmoid().amax(-1) > conf  # (B, A)
    batch = {"bboxes": boxes, "batch_idx": bidx, "cls": labels}
    return batch, Assignment(fg_mask=fg, target_boxes=out_t.boxes.detach())
