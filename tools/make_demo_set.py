#!/usr/bin/env python
"""Make the embedded demo set datasets/cctv_mini/ from the CCTV people set (Roboflow export, YOLO txt).

    python tools/make_demo_set.py --source ../shared/datasets/cctv_people --out datasets/cctv_mini

Keeps the source's train/valid split and its categories ('0', '1', both persons). The train folder of the source
holds every frame twice (two augmented copies named ``<frame>_jpg.rf.<hash>.jpg``): only the first copy in sorted
order is kept. Images are downscaled so the longest side is --size and saved as JPEG at the highest quality of
QUALITIES whose total (images + json) fits --budget-mb. Writes images/train/, images/val/, train.json, val.json.
"""
from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path

import cv2

from cvkd.data import DataError, load_coco
from cvkd.data.convert import (
    labels_dir_for,
    list_images,
    read_yolo_yaml,
    write_json,
    yolo_to_coco,
)
from cvkd.data.images import read_rgb
from cvkd.data.transforms import resize_long_side

QUALITIES = (95, 90, 85, 80, 75, 70, 65, 60, 50, 40)
ROBOFLOW_COPY = re.compile(r"^(.*)_(?:jpe?g|png)\.rf\.[0-9a-f]+$", re.IGNORECASE)


def frame_key(path: Path) -> str:
    """``1-10-_jpg.rf.<hash>.jpg`` -> ``1-10-`` (the source frame); other names -> their stem."""
    m = ROBOFLOW_COPY.match(path.stem)
    return m.group(1) if m else path.stem


def unique_frames(paths: list[Path]) -> list[Path]:
    """One image per source frame: the first in sorted order."""
    chosen: dict[str, Path] = {}
    for p in sorted(paths):
        chosen.setdefault(frame_key(p), p)
    return sorted(chosen.values())


def encode_all(images: dict[str, list], quality: int) -> dict[str, list[bytes]]:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    out = {}
    for split, items in images.items():
        out[split] = []
        for _, rgb in items:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise DataError(f"JPEG encoding failed at quality {quality}")
            out[split].append(buf.tobytes())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="../shared/datasets/cctv_people", help="the YOLO export (holding data.yaml)")
    ap.add_argument("--out", default="datasets/cctv_mini", help="output folder (its images/ and json are replaced)")
    ap.add_argument("--size", type=int, default=640, help="longest image side after downscaling (default 640)")
    ap.add_argument("--budget-mb", type=float, default=12.0, help="size limit of images + json in MB (default 12)")
    args = ap.parse_args(argv)
    from cvkd.runs import console_logging

    console_logging(logging.INFO)
    try:
        names, splits = read_yolo_yaml(args.source)
        if "train" not in splits or "val" not in splits:
            raise DataError(f"{args.source}: needs a train and a val split")
        picked = {"train": unique_frames(list_images(splits["train"])), "val": list_images(splits["val"])}
        print(f"source: train {len(list_images(splits['train']))} images -> {len(picked['train'])} unique frames, "
              f"val {len(picked['val'])} images")
        small = {s: [(p, resize_long_side(read_rgb(p), args.size)[0]) for p in ps] for s, ps in picked.items()}
        json_bytes = 1_000_000  # generous allowance for the two json files
        for q in QUALITIES:
            encoded = encode_all(small, q)
            total = sum(len(b) for bs in encoded.values() for b in bs) + json_bytes
            if total <= args.budget_mb * 1e6:
                break
        else:
            raise DataError(f"even JPEG quality {QUALITIES[-1]} exceeds {args.budget_mb} MB: lower --size")
        out = Path(args.out)
        for split in ("train", "val"):
            img_dir = out / "images" / split
            if img_dir.exists():
                shutil.rmtree(img_dir)
            img_dir.mkdir(parents=True)
            with tempfile.TemporaryDirectory() as tmp:
                for (src, _), buf in zip(small[split], encoded[split]):
                    (img_dir / src.name).write_bytes(buf)
                    label = labels_dir_for(splits[split]) / (src.stem + ".txt")
                    if label.is_file():
                        shutil.copy(label, Path(tmp) / label.name)
                d = yolo_to_coco(img_dir, tmp, names)
            d["info"] = {"description": f"cctv_mini {split}: downscaled copy of Roboflow Universe "
                                        "ai-indonesia/cctv-vh5b6 v2 (CC BY 4.0)",
                         "jpeg_quality": q, "max_side": args.size}
            write_json(d, out / f"{split}.json")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.suffix in (".jpg", ".json"))
        for split in ("train", "val"):
            data = load_coco(out / f"{split}.json", out / "images" / split)
            print(f"{split}: {len(data)} images, {data.num_boxes} boxes")
        print(f"JPEG quality {q}; total {size / 1e6:.2f} MB (images + json) in {out}")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
