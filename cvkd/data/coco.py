"""Load and validate a COCO instances json plus its image folder into a small in-memory structure.

Every problem is a :class:`DataError` with one line naming the file, the image/annotation id and what is wrong.
Nothing is dropped silently: clipped, rejected, remapped and background counts go to ``logging.getLogger("cvkd")``.
"""
from __future__ import annotations

import json
import logging
import lzma
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from .errors import DataError
from .images import check_image
from .yolo import is_data_yaml, yolo_split

log = logging.getLogger("cvkd")

BOX_TOL = 0.01  # pixels a box may exceed the image by before it counts as outside (float noise in exports)


@dataclass
class ImageRecord:
    """One image and its annotations, classes already remapped to contiguous indices 0..K-1."""

    id: int
    file_name: str
    path: Path
    width: int
    height: int
    bbox: np.ndarray  # (n, 4) float64 COCO [x, y, w, h] in original pixels, as in the json (after clipping)
    labels: np.ndarray  # (n,) int64 contiguous class index
    ann_ids: np.ndarray  # (n,) int64 annotation ids from the json
    iscrowd: np.ndarray  # (n,) bool, crowd regions: ignored by evaluation, skipped by training
    areas: np.ndarray  # (n,) float64 COCO ``area`` (box area when the json has none)

    @property
    def boxes(self) -> np.ndarray:
        """(n, 4) float32 xyxy in original pixels."""
        b = self.bbox
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1).astype(np.float32)  # (n, 4)


@dataclass
class CocoData:
    """A validated COCO set. ``cat_ids[k]`` is the COCO category id written for class ``k`` in predictions."""

    json_path: Path
    image_dir: Path
    class_names: list[str]
    cat_ids: list[int]
    images: list[ImageRecord]
    orig_to_class: dict[int, int | None]  # every original category id -> class index (None = dropped by class_map)
    cache: bool = False  # datasets built from this set keep decoded, pre-resized images in RAM
    image_cache: dict = field(default_factory=dict, repr=False, compare=False)  # imgsz -> list of arrays

    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.labels) for r in self.images))

    def __len__(self) -> int:
        return len(self.images)


def read_json(path: str | Path) -> Any:
    """Parse a json file (``.json.xz`` too); a syntax error becomes one line with the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix == ".xz":  # the compressed detections benchmarks keep (benchmarks/results/preds/)
            with lzma.open(path, "rt", encoding="utf-8") as f:
                return json.load(f)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (lzma.LZMAError, EOFError) as e:  # a corrupt or truncated .xz
        raise DataError(f"{path}: not a valid .xz file ({e or type(e).__name__})") from None


def _int(value: Any, where: str, what: str) -> int:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value != int(value):
        raise DataError(f"{where}: {what} must be an integer, got {value!r}")
    return int(value)


def _require(obj: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{where}: missing required key(s) {', '.join(missing)}")


def _class_table(cats: list[dict], class_map: dict | None, src: str) -> tuple[list[str], list[int], dict]:
    """Original categories + optional name map -> (class_names, cat_ids, original id -> class index or None)."""
    cats = sorted(cats, key=lambda c: c["id"])
    if class_map is None:
        return [c["name"] for c in cats], [c["id"] for c in cats], {c["id"]: i for i, c in enumerate(cats)}
    cmap = {str(k): (None if v in (None, "") else str(v)) for k, v in class_map.items()}  # YAML may give int keys
    names_in_json = {c["name"] for c in cats}
    unknown = sorted(set(cmap) - names_in_json)
    if unknown:
        raise DataError(f"{src}: class_map names categories not in the json: {unknown} "
                        f"(json has {sorted(names_in_json)})")
    unmapped = [c["name"] for c in cats if c["name"] not in cmap]
    if unmapped:
        raise DataError(f"{src}: categories {unmapped} are missing from class_map "
                        "(map them to a class, or to null to drop)")
    names: list[str] = []
    ids: list[int] = []
    table: dict[int, int | None] = {}
    for c in cats:
        new = cmap[c["name"]]
        if new is None:
            table[c["id"]] = None
            continue
        if new not in names:
            names.append(new)
            ids.append(c["id"])  # a merged class keeps the id of its first (lowest-id) source category
        table[c["id"]] = names.index(new)
    if not names:
        raise DataError(f"{src}: class_map drops every category")
    return names, ids, table


def _parse_categories(d: dict, src: str) -> list[dict]:
    cats = d["categories"]
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{src}: 'categories' must be a non-empty list")
    seen_ids, seen_names = set(), set()
    for i, c in enumerate(cats):
        _require(c, ("id", "name"), f"{src}: categories[{i}]")
        cid = _int(c["id"], f"{src}: categories[{i}]", "id")
        name = str(c["name"])
        if cid in seen_ids:
            raise DataError(f"{src}: duplicate category id {cid}")
        if name in seen_names:
            raise DataError(f"{src}: duplicate category name '{name}'")
        seen_ids.add(cid)
        seen_names.add(name)
    return [{"id": int(c["id"]), "name": str(c["name"])} for c in cats]


def _parse_box(a: dict, img: dict, src: str, policy: str, counts: dict) -> list[float] | None:
    """Validated [x, y, w, h]; clipped or rejected (None) when outside the image, per ``policy``."""
    where = f"{src}: annotation id {a['id']} (image id {a['image_id']})"
    b = a["bbox"]
    numbers = isinstance(b, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
    if not numbers or len(b) != 4:
        raise DataError(f"{where}: bbox must be a list of 4 numbers, got {b!r}")
    x, y, w, h = (float(v) for v in b)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise DataError(f"{where}: bbox has a non-finite value {b!r}")
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: bbox width and height must be positive, got w={w:g} h={h:g}")
    W, H = img["width"], img["height"]
    x1, y1, x2, y2 = x, y, x + w, y + h
    outside = x1 < -BOX_TOL or y1 < -BOX_TOL or x2 > W + BOX_TOL or y2 > H + BOX_TOL
    if outside and policy == "reject":
        counts["rejected"] += 1
        return None
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(W)), min(y2, float(H))
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
        counts["outside"] += 1  # entirely outside the image: nothing left to clip to
        return None
    if (cx1, cy1, cx2, cy2) == (x1, y1, x2, y2):
        return [x, y, w, h]  # untouched: keep the json's exact values
    counts["clipped"] += int(outside)
    return [cx1, cy1, cx2 - cx1, cy2 - cy1]


def _read_images(images: list, image_dir: Path, src: str, check_images: bool,
                 bad_images: str) -> tuple[dict[int, dict], dict[int, str]]:
    """Validated image entries by id (each with an empty ``anns`` list), and the skipped bad ones (id -> why)."""
    imgs: dict[int, dict] = {}
    skipped: dict[int, str] = {}  # image id -> why (bad_images=skip)
    seen_files: set[str] = set()
    for i, im in enumerate(images):
        _require(im, ("id", "file_name", "width", "height"), f"{src}: images[{i}]")
        iid = _int(im["id"], f"{src}: images[{i}]", "id")
        where = f"{src}: image id {iid}"
        if iid in imgs:
            raise DataError(f"{src}: duplicate image id {iid}")
        W, H = _int(im["width"], where, "width"), _int(im["height"], where, "height")
        if W <= 0 or H <= 0:
            raise DataError(f"{where}: width and height must be positive, got {W}x{H}")
        fn = str(im["file_name"])
        if fn in seen_files:
            raise DataError(f"{where}: duplicate file_name '{fn}'")
        seen_files.add(fn)
        if check_images:
            try:
                check_image(image_dir / fn, (W, H), where, decode=True)
            except DataError as e:
                if bad_images == "stop":
                    raise DataError(f"{e}; set data.bad_images=skip to leave such images out") from None
                skipped[iid] = str(e)
                continue
        imgs[iid] = {"id": iid, "file_name": fn, "width": W, "height": H, "anns": []}
    if skipped:
        log.warning(f"{src}: left out {len(skipped)} bad image(s) and their boxes (data.bad_images=skip); first: "
                    f"{next(iter(skipped.values()))}")
        if not imgs:
            raise DataError(f"{src}: every image is bad (first: {next(iter(skipped.values()))})")
    return imgs, skipped


def _read_annotations(annotations: list, imgs: dict[int, dict], skipped: dict[int, str], table: dict, src: str,
                      box_policy: str, counts: dict) -> None:
    """Validate each annotation and append (box, class, id, crowd, area) to its image's ``anns``; counts what went."""
    seen_anns: set[int] = set()
    for i, a in enumerate(annotations):
        _require(a, ("id", "image_id", "category_id", "bbox"), f"{src}: annotations[{i}]")
        aid = _int(a["id"], f"{src}: annotations[{i}]", "id")
        if aid in seen_anns:
            raise DataError(f"{src}: duplicate annotation id {aid}")
        seen_anns.add(aid)
        where = f"{src}: annotation id {aid}"
        iid = _int(a["image_id"], where, "image_id")
        cid = _int(a["category_id"], where, "category_id")
        if iid in skipped:
            continue
        if iid not in imgs:
            raise DataError(f"{where}: image_id {iid} is not in 'images'")
        if cid not in table:
            raise DataError(f"{where}: category_id {cid} is not in 'categories'")
        box = _parse_box(a, imgs[iid], src, box_policy, counts)
        if box is None:
            continue
        if table[cid] is None:
            counts["dropped"] += 1
            continue
        crowd = bool(a.get("iscrowd", 0))
        counts["crowd"] += int(crowd)
        area = float(a["area"]) if isinstance(a.get("area"), (int, float)) else box[2] * box[3]
        area = min(area, box[2] * box[3]) if box != list(map(float, a["bbox"])) else area  # clipped: shrink area
        imgs[iid]["anns"].append((box, table[cid], aid, crowd, area))


def _record(im: dict, image_dir: Path) -> ImageRecord:
    anns = im.pop("anns")
    return ImageRecord(
        id=im["id"], file_name=im["file_name"], path=image_dir / im["file_name"], width=im["width"],
        height=im["height"],
        bbox=np.array([a[0] for a in anns], dtype=np.float64).reshape(-1, 4),
        labels=np.array([a[1] for a in anns], dtype=np.int64),
        ann_ids=np.array([a[2] for a in anns], dtype=np.int64),
        iscrowd=np.array([a[3] for a in anns], dtype=bool),
        areas=np.array([a[4] for a in anns], dtype=np.float64),
    )


def load_coco(
    json_path: str | Path,
    image_dir: str | Path | None = None,
    class_map: dict[str, str | None] | None = None,
    check_images: bool = True,
    box_policy: Literal["clip", "reject"] = "clip",
    bad_images: Literal["stop", "skip"] = "stop",
    split: Literal["train", "val", "test"] = "val",
) -> CocoData:
    """Read and validate a COCO instances json; ``file_name`` is relative to ``image_dir`` (default: the json's folder).

    ``json_path`` may also be a YOLO ``data.yaml`` (or its folder; ultralytics / Roboflow layout): its ``split`` is read
    from the txt labels (``cvkd.data.yolo``) and validated the same way; ``image_dir`` must then be None.

    ``class_map`` maps original category names to new class names (merge/rename); null or "" drops a category.
    ``check_images`` opens every image header (existence, corruption, size = json width/height).
    ``box_policy``: boxes extending outside the image are clipped to it (``clip``) or dropped (``reject``), counted.
    ``bad_images``: an image that is missing, unreadable, truncated, of the wrong size or whose JPEG decoder reports
    corrupt data stops the load in one line (``stop``), or is left out with its boxes and counted (``skip``).
    """
    if box_policy not in ("clip", "reject"):
        raise DataError(f"box_policy must be 'clip' or 'reject', got {box_policy!r}")
    json_path = Path(json_path)
    src = str(json_path)
    if is_data_yaml(json_path):
        if image_dir is not None:
            raise DataError(f"{src}: a data.yaml names its own image folders; give no image folder with it")
        d, image_dir = yolo_split(json_path, split)
        src = f"{json_path} ({split})"
    else:
        image_dir = Path(image_dir) if image_dir is not None else json_path.parent
        d = read_json(json_path)
    _require(d, ("images", "annotations", "categories"), src)
    for key in ("images", "annotations"):
        if not isinstance(d[key], list):
            raise DataError(f"{src}: '{key}' must be a list")
    names, cat_ids, table = _class_table(_parse_categories(d, src), class_map, src)
    if not d["images"]:
        raise DataError(f"{src}: the dataset has no images")
    if check_images and not image_dir.is_dir():
        raise DataError(f"{src}: image folder {image_dir} not found")

    if bad_images not in ("stop", "skip"):
        raise DataError(f"bad_images must be 'stop' or 'skip', got {bad_images!r}")
    imgs, skipped = _read_images(d["images"], image_dir, src, check_images, bad_images)
    counts = {"clipped": 0, "rejected": 0, "outside": 0, "dropped": 0, "crowd": 0}
    _read_annotations(d["annotations"], imgs, skipped, table, src, box_policy, counts)
    records = [_record(im, image_dir) for im in imgs.values()]
    data = CocoData(json_path, image_dir, names, cat_ids, records, table)
    _log_summary(data, d, counts, box_policy)
    return data


def _log_summary(data: CocoData, d: dict, counts: dict, policy: str) -> None:
    n_bg = sum(1 for r in data.images if len(r.labels) == 0)
    n_cats = len(d["categories"])
    n_cls = len(data.class_names)
    classes = f"{n_cats} categories -> {n_cls} class(es)" if n_cats != n_cls else f"{n_cats} class(es)"
    log.info(f"{data.json_path}: {len(data.images)} images ({n_bg} without annotations), {data.num_boxes} boxes "
             f"({counts['crowd']} crowd), {classes} {data.class_names}")
    if counts["clipped"] or counts["rejected"] or counts["outside"]:
        action = f"{counts['clipped']} clipped to the image" if policy == "clip" else f"{counts['rejected']} rejected"
        log.info(f"{data.json_path}: boxes outside the image (box_policy={policy}): {action}, "
                 f"{counts['outside']} dropped (entirely outside)")
    if counts["dropped"]:
        log.info(f"{data.json_path}: {counts['dropped']} annotations dropped by class_map (categories mapped to null)")


def check_class_names(data_names: list[str], model_names: list[str], source: str) -> None:
    """Refuse a dataset whose (remapped) classes differ from a model's, in one line."""
    if list(data_names) != list(model_names):
        raise DataError(f"{source}: class map does not match the model: data classes {list(data_names)}, "
                        f"model classes {list(model_names)} (set class_map so both lists are equal)")


def to_coco_dict(data: CocoData) -> dict:
    """The validated, remapped set as a COCO dict (ground truth for pycocotools; annotation ids renumbered from 1)."""
    images, anns = [], []
    for r in data.images:
        images.append({"id": r.id, "file_name": r.file_name, "width": r.width, "height": r.height})
        for box, k, crowd, area in zip(r.bbox.tolist(), r.labels.tolist(), r.iscrowd.tolist(), r.areas.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": r.id, "category_id": data.cat_ids[k], "bbox": box,
                         "area": area, "iscrowd": int(crowd)})
    cats = [{"id": cid, "name": name} for cid, name in zip(data.cat_ids, data.class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def load_split(cfg: Any, split: Literal["train", "val"]) -> CocoData:
    """Load the ``train`` or ``val`` set named by a data config: ``yaml`` (a YOLO data.yaml) or ``{split}_json`` and
    ``{split}_images``; then ``class_map``, ``box_policy``, ``bad_images``, ``cache``."""
    yolo_yaml = getattr(cfg, "yaml", "")
    if yolo_yaml:
        src, images = yolo_yaml, None
    else:
        src, images = getattr(cfg, f"{split}_json"), getattr(cfg, f"{split}_images")
    data = load_coco(src, images, getattr(cfg, "class_map", None), check_images=True,
                     box_policy=getattr(cfg, "box_policy", "clip"), bad_images=getattr(cfg, "bad_images", "stop"),
                     split=split)
    data.cache = bool(getattr(cfg, "cache", False))
    return data


def parse_class_map(s: str | None) -> dict | None:
    """A class map given inline as YAML/JSON ('{"0": person}') or as a path to a YAML/JSON file."""
    if not s:
        return None
    text = Path(s).read_text(encoding="utf-8") if Path(s).is_file() else s
    try:
        m = yaml.safe_load(text)
    except yaml.YAMLError:
        raise DataError(f"--class-map: not valid YAML/JSON: {s!r}") from None
    if not isinstance(m, dict):
        raise DataError(f"--class-map must be a mapping {{original name: new name}}, got {s!r}")
    return m
