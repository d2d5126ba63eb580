"""YOLO-format data (ultralytics / Roboflow): ``data.yaml`` + ``images/`` + ``labels/*.txt``, read into a COCO dict.

cvkd reads such a set directly wherever it takes a dataset (``data.yaml=`` in a run config, ``cvkd val --gt
data.yaml``, ``cvkd export --eval data.yaml``, ``data.extra_train``); the dict then goes through the same validation
as a COCO json (:func:`cvkd.data.load_coco`). Paths resolve as ultralytics resolves them: ``path:`` (relative to the
working directory, else to the yaml's folder), or the yaml's folder without it; a split is a folder, a ``.txt`` list of
image paths, or a list of those; ``../x`` that does not exist is also tried as ``x`` (Roboflow writes ``../train/images``).
Labels: the last ``images`` part of an image's path replaced by ``labels``, suffix ``.txt``.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable

import yaml

from .convert_pascal import categories
from .errors import DataError
from .images import check_image

log = logging.getLogger("cvkd")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
COORD_SLACK = 0.01  # labelling tools round boxes at the border slightly past 0..1; the box policy clips those
SPLIT_KEYS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by relative path."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} not found")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def is_data_yaml(path: str | Path) -> bool:
    """A YOLO ``data.yaml`` (by suffix), or a folder holding one."""
    p = Path(path)
    return p.suffix.lower() in (".yaml", ".yml") or (p.is_dir() and (p / "data.yaml").is_file())


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


def labels_dir_for(images_dir: Path) -> Path:
    """YOLO convention: ``.../images`` -> sibling ``.../labels`` (the last ``images`` path part is replaced)."""
    parts = list(images_dir.parts)
    if "images" not in parts:
        raise DataError(f"{images_dir}: cannot infer the labels folder (no 'images' in the path): pass it explicitly")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts)


def files_to_coco(files: list[Path], root: Path, names: list[str], label_for: Callable[[Path], Path]) -> dict:
    """Images + their YOLO label files -> COCO dict (``file_name`` relative to ``root``; sizes read from the files).
    A missing label file means an image without objects (counted)."""
    images, anns = [], []
    no_label, empty = 0, 0
    for i, path in enumerate(files, 1):
        W, H = check_image(path, None, f"{path}")
        images.append({"id": i, "file_name": path.relative_to(root).as_posix(), "width": W, "height": H})
        lab = label_for(path)
        if not lab.is_file():
            no_label += 1
            continue
        n0 = len(anns)
        for ln, line in enumerate(lab.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            cls, cx, cy, w, h = parse_yolo_line(line, len(names), f"{lab}:{ln}")
            box = [(cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cls + 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
        empty += int(len(anns) == n0)
    log.info(f"{root}: {len(images)} images, {len(anns)} boxes; {no_label} images without a label file and "
             f"{empty} with an empty one (background)")
    return {"images": images, "annotations": anns, "categories": categories(names)}


def yolo_to_coco(images_dir: str | Path, labels_dir: str | Path, names: list[str]) -> dict:
    """One folder of a YOLO split (``images/x.jpg`` + ``labels/x.txt``) -> COCO dict, ``file_name`` relative to
    ``images_dir``; label files without an image are counted in the log."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    files = list_images(images_dir)
    if not files:
        raise DataError(f"{images_dir}: no images found ({', '.join(IMAGE_EXTS)})")
    d = files_to_coco(files, images_dir, names, lambda p: (labels_dir / p.relative_to(images_dir)).with_suffix(".txt"))
    used = {(labels_dir / p.relative_to(images_dir)).with_suffix(".txt").resolve() for p in files}
    orphans = sum(1 for p in labels_dir.rglob("*.txt") if p.resolve() not in used) if labels_dir.is_dir() else 0
    if orphans:
        log.info(f"{labels_dir}: {orphans} label files without an image (ignored)")
    return d


def _read_yaml(path: Path) -> tuple[Path, dict, list[str]]:
    """(the yaml file, its mapping, class names) with one-line errors."""
    if path.is_dir():
        path = path / "data.yaml"
    if not path.is_file():
        raise DataError(f"{path}: YOLO data.yaml not found")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a mapping with train/val/names, got {type(d).__name__}")
    names, nc = d.get("names"), d.get("nc")
    if names is None and nc is None:
        raise DataError(f"{path}: missing required key 'names' (or 'nc')")
    if nc is not None and (not isinstance(nc, int) or nc < 1):
        raise DataError(f"{path}: 'nc' must be a positive integer, got {nc!r}")
    if names is None:
        names = [f"class_{i}" for i in range(nc)]
    elif isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: 'names' keys must be the class indices 0..{len(names) - 1}, got {sorted(names)}")
        names = [names[k] for k in sorted(names)]
    elif not isinstance(names, list):
        raise DataError(f"{path}: 'names' must be a list or a mapping index -> name, got {names!r}")
    if nc is not None and nc != len(names):
        raise DataError(f"{path}: 'names' has {len(names)} entries but 'nc' is {nc}")
    return path, d, [str(n) for n in names]


def _resolve(base: Path, entry: str) -> Path:
    p = (base / entry).resolve()
    if not p.exists() and entry.startswith("../"):
        p = (base / entry[3:]).resolve()
    return p


def _split_files(entry, base: Path, where: str) -> list[Path]:
    """A split entry (folder, .txt list of images, or a list of those) -> image files."""
    entries = entry if isinstance(entry, list) else [entry]
    files: list[Path] = []
    for e in entries:
        if not isinstance(e, str):
            raise DataError(f"{where}: expected a folder or .txt path, got {e!r}")
        p = _resolve(base, e)
        if p.is_dir():
            files += list_images(p)
        elif p.is_file() and p.suffix == ".txt":  # one image path per line, relative to the list's folder
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
            files += [(p.parent / ln).resolve() if not Path(ln).is_absolute() else Path(ln) for ln in lines]
        else:
            raise DataError(f"{where}: {e} not found (resolved to {p})")
    if not files:
        raise DataError(f"{where}: no images found ({', '.join(IMAGE_EXTS)})")
    return files


def read_yolo_yaml(path: str | Path) -> tuple[list[str], dict[str, Path]]:
    """``data.yaml`` -> (class names, {split: images folder}) for the splits that are single existing folders
    (what ``cvkd convert yolo`` writes one json per); missing ones are logged and skipped."""
    path, d, names = _read_yaml(Path(path))
    base = _base(path, d)
    splits = {}
    for split, keys in SPLIT_KEYS.items():
        key = next((k for k in keys if d.get(k)), None)
        if key is None:
            continue
        if not isinstance(d[key], str):
            raise DataError(f"{path}: '{key}' must be one folder path here, got {d[key]!r} (cvkd reads lists and "
                            f".txt lists directly: data.yaml=)")
        p = _resolve(base, d[key])
        if p.exists():
            splits[split] = p
        else:
            log.info(f"{path}: split '{key}' folder {d[key]} not found (skipped)")
    if not splits:
        raise DataError(f"{path}: none of the train/val/test folders exist")
    return names, splits


def _base(path: Path, d: dict) -> Path:
    if not d.get("path"):
        return path.parent
    root = Path(str(d["path"]))
    return root if root.is_absolute() or root.exists() else path.parent / root


def yolo_split(path: str | Path, split: str) -> tuple[dict, Path]:
    """One split of a YOLO data.yaml -> (COCO dict, image root that ``file_name`` is relative to)."""
    path, d, names = _read_yaml(Path(path))
    keys = SPLIT_KEYS.get(split)
    if keys is None:
        raise DataError(f"{path}: unknown split {split!r} (train, val or test)")
    key = next((k for k in keys if d.get(k)), None)
    if key is None:
        raise DataError(f"{path}: no '{keys[0]}' split (keys: {sorted(d)})")
    files = _split_files(d[key], _base(path, d), f"{path} '{key}'")
    root = Path(os.path.commonpath([str(f.parent) for f in files]))

    def label_for(p: Path) -> Path:  # no 'images' in the path: the label sits beside the image (as ultralytics)
        return ((labels_dir_for(p.parent) if "images" in p.parent.parts else p.parent) / p.name).with_suffix(".txt")

    return files_to_coco(files, root, names, label_for), root
