"""Converters to COCO instances json: YOLO txt (here), PASCAL VOC xml and Penn-Fudan (``convert_pascal.py``).

Every converter returns a plain COCO dict (``images``, ``annotations``, ``categories``) whose ``file_name`` is
relative to an image root; :func:`write_json` writes it with one image/annotation per line.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .coco import load_coco
from .convert_pascal import categories, pennfudan_to_coco, voc_to_coco
from .errors import DataError
from .yolo import IMAGE_EXTS, labels_dir_for, list_images, parse_yolo_line, read_yolo_yaml, yolo_to_coco

log = logging.getLogger("cvkd")

SPLIT_FILES = {"train": "train.json", "val": "val.json", "test": "test.json"}


def write_json(d: dict, path: str | Path) -> Path:
    """Write a COCO dict with one list entry per line (readable diffs), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for k, v in d.items():
        if isinstance(v, list) and v:
            body = ",\n".join("  " + json.dumps(x, separators=(", ", ": ")) for x in v)
            parts.append(f"{json.dumps(k)}: [\n{body}\n]")
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v)}")
    path.write_text("{\n" + ",\n".join(parts) + "\n}\n", encoding="utf-8")
    return path


def split_coco(d: dict, val_fraction: float, seed: int = 0) -> tuple[dict, dict]:
    """Deterministic random split of a COCO dict into (train, val) by image; ``round(n * val_fraction)`` val images."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    ids = sorted(im["id"] for im in d["images"])
    if len(ids) < 2:
        raise DataError(f"cannot split a set of {len(ids)} image(s)")
    n_val = min(max(1, round(len(ids) * val_fraction)), len(ids) - 1)
    perm = np.random.default_rng(seed).permutation(len(ids))
    val_ids = {ids[i] for i in perm[:n_val]}
    out = []
    for keep in (lambda i: i not in val_ids, lambda i: i in val_ids):
        out.append({
            "images": [im for im in d["images"] if keep(im["id"])],
            "annotations": [a for a in d["annotations"] if keep(a["image_id"])],
            "categories": d["categories"],
        })
    return out[0], out[1]


def convert_yolo(source: str | Path, out_dir: str | Path, val_fraction: float | None = None,
                 seed: int = 0) -> dict[str, tuple[Path, Path]]:
    """A YOLO dataset (``data.yaml`` or its folder) -> ``out_dir/{train,val,test}.json``.

    Returns {split: (json path, image root)}; ``file_name`` in each json is relative to its image root.
    ``val_fraction`` splits the train set when the dataset has no val split.
    """
    names, splits = read_yolo_yaml(source)
    dicts = {s: (yolo_to_coco(p, labels_dir_for(p), names), p) for s, p in splits.items()}
    if val_fraction:
        if "val" in dicts:
            raise DataError(f"{source}: the dataset already has a val split; drop --val-fraction")
        full, root = dicts["train"]
        tr, va = split_coco(full, val_fraction, seed)
        dicts["train"], dicts["val"] = (tr, root), (va, root)
    out = {}
    for split, (d, root) in dicts.items():
        out[split] = (write_json(d, Path(out_dir) / SPLIT_FILES[split]), root)
    return out


def yolo_label_text(r) -> str:
    """One image's YOLO label file (an :class:`ImageRecord`): ``class cx cy w h`` per non-crowd box, normalised by the
    image size; empty for a background image."""
    lines = []
    for (x, y, w, h), k, is_crowd in zip(r.bbox.tolist(), r.labels.tolist(), r.iscrowd.tolist()):
        if not is_crowd:
            vals = ((x + w / 2) / r.width, (y + h / 2) / r.height, w / r.width, h / r.height)
            lines.append(f"{k} " + " ".join(repr(float(v)) for v in vals) + "\n")
    return "".join(lines)


def coco_to_yolo(json_path: str | Path, out_dir: str | Path) -> list[str]:
    """COCO json -> one YOLO ``.txt`` per image under ``out_dir`` (empty for background images); returns class names.

    The json is validated first (:func:`load_coco`, images not opened). Class index = rank of the category id; crowd
    annotations are skipped (counted in the log).
    """
    data = load_coco(json_path, check_images=False)
    out_dir = Path(out_dir)
    crowd = 0
    for r in data.images:
        crowd += int(r.iscrowd.sum())
        p = (out_dir / r.file_name).with_suffix(".txt")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yolo_label_text(r), encoding="utf-8")
    log.info(f"{json_path}: wrote {len(data)} label files to {out_dir} ({crowd} crowd annotations skipped)")
    return data.class_names


__all__ = [
    "IMAGE_EXTS", "categories", "coco_to_yolo", "convert_yolo", "list_images", "labels_dir_for", "parse_yolo_line",
    "pennfudan_to_coco", "read_yolo_yaml", "split_coco", "voc_to_coco", "write_json", "yolo_label_text", "yolo_to_coco",
]
