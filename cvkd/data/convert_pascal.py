"""PASCAL-style annotations to COCO dicts: VOC xml files and Penn-Fudan (PASCAL Annotation Version 1.00 text).

Pixel convention: both formats give inclusive pixel indices with the top-left pixel at (1, 1). COCO boxes are in
continuous coordinates with the image spanning [0, W] x [0, H], so pixel column ``Xmin`` covers [Xmin - 1, Xmin] and
``x = Xmin - 1``, ``w = Xmax - Xmin + 1`` (a box over the whole image is [0, 0, W, H]). VOC files written by tools
that already use 0-based edges can be taken as they are with ``one_based=False`` (``w = xmax - xmin``).
"""
from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

from .errors import DataError
from .images import check_image

log = logging.getLogger("cvkd")

_PF_BOX = re.compile(r'Bounding box for object (\d+) "([^"]*)" \(Xmin, Ymin\) - \(Xmax, Ymax\) : '
                     r"\((-?\d+), (-?\d+)\) - \((-?\d+), (-?\d+)\)")
_PF_FILE = re.compile(r'Image filename : "([^"]+)"')
_PF_SIZE = re.compile(r"Image size \(X x Y x C\) : (\d+) x (\d+) x \d+")
_PF_COUNT = re.compile(r"Objects with ground truth : (\d+)")


def categories(names: list[str]) -> list[dict]:
    """COCO categories for class names, ids from 1 (class index k -> category id k + 1)."""
    return [{"id": i + 1, "name": str(n)} for i, n in enumerate(names)]


def _pixel_box(x1: float, y1: float, x2: float, y2: float, one_based: bool, where: str) -> list[float]:
    """Corner coordinates -> COCO [x, y, w, h] (see the module docstring for the convention)."""
    if one_based:
        box = [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]
    else:
        box = [x1, y1, x2 - x1, y2 - y1]
    if box[2] <= 0 or box[3] <= 0:
        raise DataError(f"{where}: box ({x1:g}, {y1:g}) - ({x2:g}, {y2:g}) has no positive width/height")
    return box


def _text(node: ET.Element, tag: str, where: str, required: bool = True) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise DataError(f"{where}: missing <{tag}>")
        return None
    return child.text.strip()


def _number(node: ET.Element, tag: str, where: str) -> float:
    s = _text(node, tag, where)
    try:
        return float(s)
    except ValueError:
        raise DataError(f"{where}: <{tag}> is not a number: {s!r}") from None


def voc_to_coco(
    xml_dir: str | Path,
    image_dir: str | Path,
    class_names: list[str] | None = None,
    difficult: Literal["keep", "crowd", "drop"] = "keep",
    one_based: bool = True,
) -> dict:
    """A folder of VOC xml files + an image folder -> COCO dict (``file_name`` relative to ``image_dir``).

    ``class_names`` fixes the class order (unknown object names are an error); default: sorted names found.
    ``difficult`` objects are kept as normal boxes, marked ``iscrowd=1`` (ignored by COCO evaluation), or dropped.
    """
    xml_dir, image_dir = Path(xml_dir), Path(image_dir)
    files = sorted(xml_dir.glob("*.xml")) if xml_dir.is_dir() else []
    if not files:
        raise DataError(f"{xml_dir}: no .xml files found")
    parsed = []
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            line, col = e.position
            raise DataError(f"{path}: invalid XML at line {line} column {col + 1}") from None
        fn = _text(root, "filename", str(path), required=False) or ""
        if not fn or not (image_dir / fn).is_file():
            found = [p for p in image_dir.glob(path.stem + ".*") if p.is_file()]
            if not found:
                raise DataError(f"{path}: image {fn or path.stem + '.*'} not found in {image_dir}")
            fn = found[0].name
        objs = []
        for j, obj in enumerate(root.findall("object"), 1):
            where = f"{path}: object {j}"
            name = _text(obj, "name", where)
            box_node = obj.find("bndbox")
            if box_node is None:
                raise DataError(f"{where}: missing <bndbox>")
            corners = [_number(box_node, t, where) for t in ("xmin", "ymin", "xmax", "ymax")]
            diff = (_text(obj, "difficult", where, required=False) or "0") not in ("0", "false", "False")
            objs.append((name, _pixel_box(*corners, one_based, where), diff))
        parsed.append((path, root, fn, objs))

    found_names = sorted({o[0] for _, _, _, objs in parsed for o in objs})
    names = list(class_names) if class_names is not None else found_names
    unknown = sorted(set(found_names) - set(names))
    if unknown:
        raise DataError(f"{xml_dir}: object names {unknown} are not in the class list {names}")
    images, anns, n_diff = [], [], 0
    for i, (path, root, fn, objs) in enumerate(parsed, 1):
        real = check_image(image_dir / fn, None, str(path))
        size = root.find("size")
        if size is not None and size.find("width") is not None and size.find("height") is not None:
            W, H = int(_number(size, "width", str(path))), int(_number(size, "height", str(path)))
            if (W, H) != (0, 0) and (W, H) != tuple(real):  # some tools write 0 x 0 when unknown
                raise DataError(f"{path}: <size> says {W}x{H} but the image {fn} is {real[0]}x{real[1]}")
        images.append({"id": i, "file_name": fn, "width": real[0], "height": real[1]})
        for name, box, diff in objs:
            n_diff += int(diff)
            if diff and difficult == "drop":
                continue
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": names.index(name) + 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": int(diff and difficult == "crowd")})
    log.info(f"{xml_dir}: {len(images)} images, {len(anns)} boxes, {len(names)} classes; {n_diff} difficult objects "
             f"({'kept' if difficult == 'keep' else 'marked iscrowd' if difficult == 'crowd' else 'dropped'})")
    return {"images": images, "annotations": anns, "categories": categories(names)}


def pennfudan_to_coco(root: str | Path, raw_labels: bool = False) -> dict:
    """Penn-Fudan (``Annotation/*.txt`` + ``PNGImages/``) -> COCO dict, ``file_name`` relative to ``PNGImages``.

    All objects become class ``person`` (the labels are PASpersonWalking / PASpersonStanding) unless ``raw_labels``.
    Boxes follow the 1-based inclusive convention of the module docstring; sizes are checked against the PNGs.
    """
    root = Path(root)
    ann_dir, img_dir = root / "Annotation", root / "PNGImages"
    files = sorted(ann_dir.glob("*.txt")) if ann_dir.is_dir() else []
    if not files:
        raise DataError(f"{root}: no Penn-Fudan annotations (Annotation/*.txt) found")
    names: list[str] = [] if raw_labels else ["person"]
    images, anns = [], []
    for i, path in enumerate(files, 1):
        text = path.read_text(encoding="utf-8", errors="replace")
        m_file, m_size, m_count = _PF_FILE.search(text), _PF_SIZE.search(text), _PF_COUNT.search(text)
        if not (m_file and m_size and m_count):
            raise DataError(f"{path}: not a PASCAL v1 annotation (image filename, size or object count line missing)")
        fn = Path(m_file.group(1)).name
        W, H = int(m_size.group(1)), int(m_size.group(2))
        check_image(img_dir / fn, (W, H), str(path), size_from="the annotation")
        images.append({"id": i, "file_name": fn, "width": W, "height": H})
        boxes = list(_PF_BOX.finditer(text))
        if len(boxes) != int(m_count.group(1)):
            raise DataError(f"{path}: says {m_count.group(1)} objects but has {len(boxes)} bounding box lines")
        for m in boxes:
            label = m.group(2) if raw_labels else "person"
            if label not in names:
                names.append(label)
            x1, y1, x2, y2 = (float(m.group(k)) for k in range(3, 7))
            box = _pixel_box(x1, y1, x2, y2, True, f"{path}: object {m.group(1)}")
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": names.index(label) + 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    log.info(f"{root}: {len(images)} images, {len(anns)} boxes, classes {names}")
    return {"images": images, "annotations": anns, "categories": categories(names)}
