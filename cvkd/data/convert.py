"""Converters to COCO instances json: YOLO txt (here), PASCAL VOC xml and Penn-Fudan (``convert_pascal.py``).

Every converter returns a plain COCO dict (``images``, ``annotations``, ``categories``) whose ``file_name`` is
relative to an image root; :func:`write_json` writes it with one image/annotation per line.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import yaml

from .coco import load_coco
from .convert_pascal import categories, pennfudan_to_coco, voc_to_coco
from .errors import DataError
from .images import check_image

log = logging.getLogger("cvkd")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
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


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by relative path."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} not found")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


COORD_SLACK = 0.01  # labelling tools round boxes at the border slightly past 0..1; the box policy clips those


def parse_yolo_line(line: str, nc: int, where: str) -> tuple[int, float, float, float, float]:
    """``class cx cy w h`` (normalised) or a polygon ``class x1 y1 x2 y2 ...`` -> (class, cx, cy, w, h)."""
    parts = line.split()
    if len(parts) != 5 and (len(parts) < 7 or len(parts) % 2 == 0):
        raise DataError(f"{where}: expected 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 x3 y3 ...', "
                        f"got {len(parts)} fields: {line.strip()[:80]!r}")
    try:
        vals = [float(v) for v in parts]
    except ValueError:
        raise DataError(f"{where}: not a number in {line.strip()[:80]!r}") from None
    if not all(math.isfinite(v) for v in vals) or vals[0] != int(vals[0]):
        raise DataError(f"{where}: class must be an integer and values finite, got {line.strip()[:80]!r}")
    cls = int(vals[0])
    if not 0 <= cls < nc:
        raise DataError(f"{where}: class {cls} is out of range (the set has {nc} classes: 0..{nc - 1})")
    if len(parts) == 5:
        cx, cy, w, h = vals[1:]
    else:  # polygon (segment export): its bounding box
        xs, ys = vals[1::2], vals[2::2]
        cx, cy, w, h = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: box width and height must be positive, got w={w:g} h={h:g}")
    coords = vals[1:]
    if max(coords) > 2.0:  # normalised values never get there: pixels (a common export mistake)
        raise DataError(f"{where}: values up to {max(coords):g} look like pixel coordinates; YOLO labels are "
                        "normalised to 0..1 (x and w divided by the image width, y and h by its height)")
    if max(coords) > 1.0 + COORD_SLACK or min(coords) < -COORD_SLACK:
        raise DataError(f"{where}: coordinates must lie in 0..1, got {line.strip()[:80]!r}")
    return cls, cx, cy, w, h


def yolo_to_coco(images_dir: str | Path, labels_dir: str | Path, names: list[str]) -> dict:
    """A YOLO split (``images/x.jpg`` + ``labels/x.txt``) -> COCO dict; image sizes are read from the files.

    ``file_name`` is relative to ``images_dir``. A missing label file means an image without objects (counted).
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    files = list_images(images_dir)
    if not files:
        raise DataError(f"{images_dir}: no images found ({', '.join(IMAGE_EXTS)})")
    images, anns = [], []
    no_label, empty, used = 0, 0, set()
    for i, path in enumerate(files, 1):
        rel = path.relative_to(images_dir)
        W, H = check_image(path, None, f"{path}")
        images.append({"id": i, "file_name": rel.as_posix(), "width": W, "height": H})
        lab = (labels_dir / rel).with_suffix(".txt")
        if not lab.is_file():
            no_label += 1
            continue
        used.add(lab.resolve())
        n0 = len(anns)
        for ln, line in enumerate(lab.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            cls, cx, cy, w, h = parse_yolo_line(line, len(names), f"{lab}:{ln}")
            box = [(cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cls + 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
        empty += int(len(anns) == n0)
    orphans = sum(1 for p in labels_dir.rglob("*.txt") if p.resolve() not in used) if labels_dir.is_dir() else 0
    log.info(f"{images_dir}: {len(images)} images, {len(anns)} boxes; {no_label} images without a label file and "
             f"{empty} with an empty one (background); {orphans} label files without an image (ignored)")
    return {"images": images, "annotations": anns, "categories": categories(names)}


def labels_dir_for(images_dir: Path) -> Path:
    """YOLO convention: ``.../images`` -> sibling ``.../labels`` (the last ``images`` path part is replaced)."""
    parts = list(images_dir.parts)
    if "images" not in parts:
        raise DataError(f"{images_dir}: cannot infer the labels folder (no 'images' in the path): pass it explicitly")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts)


def read_yolo_yaml(path: str | Path) -> tuple[list[str], dict[str, Path]]:
    """``data.yaml`` -> (class names, {split: images folder}). Paths are relative to ``path:`` or the yaml's folder;
    a ``../x`` that does not exist there is also tried as ``x`` (Roboflow exports write ``../train/images``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "data.yaml"
    if not path.is_file():
        raise DataError(f"{path}: YOLO data.yaml not found")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict) or "names" not in d:
        raise DataError(f"{path}: missing required key 'names'")
    names = d["names"]
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    names = [str(n) for n in names]
    base = (path.parent / str(d["path"])) if d.get("path") else path.parent
    splits = {}
    for key, split in (("train", "train"), ("val", "val"), ("valid", "val"), ("test", "test")):
        if key not in d or split in splits or not d[key]:
            continue
        if not isinstance(d[key], str):
            raise DataError(f"{path}: '{key}' must be one folder path, got {d[key]!r}")
        p = (base / d[key]).resolve()
        if not p.exists() and d[key].startswith("../"):
            p = (base / d[key][3:]).resolve()
        if p.exists():
            splits[split] = p
        else:
            log.info(f"{path}: split '{key}' folder {d[key]} not found (skipped)")
    if not splits:
        raise DataError(f"{path}: none of the train/val/test folders exist")
    return names, splits


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
    "categories", "coco_to_yolo", "convert_yolo", "list_images", "labels_dir_for", "parse_yolo_line",
    "pennfudan_to_coco", "read_yolo_yaml", "split_coco", "voc_to_coco", "write_json", "yolo_label_text", "yolo_to_coco",
]
