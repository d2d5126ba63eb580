"""Convert detection datasets to COCO instances json (and COCO back to YOLO txt).

    cvkd convert yolo ../shared/datasets/cctv_people --out data/cctv_people
    cvkd convert voc --xml VOC/Annotations --images VOC/JPEGImages --out data/voc --val-fraction 0.2
    cvkd convert pennfudan ../shared/datasets/pennfudan --out data/pennfudan --val-fraction 0.2 --seed 0
    cvkd convert coco2yolo data/cctv_people/val.json --out data/cctv_yolo/labels/val

Each json's ``file_name`` is relative to an image root, printed after conversion: pass that folder as the image
folder (``--images`` of cvkd val, ``data.*_images`` of the configs). Errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvkd.commands import run_command
from cvkd.data import DataError, load_coco
from cvkd.data.convert import (
    coco_to_yolo,
    convert_yolo,
    labels_dir_for,
    pennfudan_to_coco,
    split_coco,
    voc_to_coco,
    write_json,
    yolo_to_coco,
)

SPLIT_HELP = ("randomly move this fraction of the images to a val split (deterministic for a given --seed); "
              "for sets that come without a split")


def _names(s: str | None) -> list[str] | None:
    return [n.strip() for n in s.split(",") if n.strip()] if s else None


def _write(d: dict, out: Path, root: Path, val_fraction: float | None, seed: int) -> dict[str, tuple[Path, Path]]:
    """Write all.json, or train.json + val.json when ``val_fraction`` is set."""
    if val_fraction:
        tr, va = split_coco(d, val_fraction, seed)
        return {"train": (write_json(tr, out / "train.json"), root), "val": (write_json(va, out / "val.json"), root)}
    return {"all": (write_json(d, out / "all.json"), root)}


def _report(written: dict[str, tuple[Path, Path]]) -> None:
    for split, (path, root) in written.items():
        data = load_coco(path, root, check_images=False)  # re-read: the written file passes validation
        print(f"{split}: {path} ({len(data)} images, {data.num_boxes} boxes, classes {data.class_names}); "
              f"image root: {root}")


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.cmd == "yolo":
        if args.images:
            images = Path(args.images)
            names = _names(args.names)
            if not names:
                raise DataError("--images needs --names (comma-separated class names in class-index order)")
            d = yolo_to_coco(images, Path(args.labels) if args.labels else labels_dir_for(images), names)
            _report(_write(d, out, images, args.val_fraction, args.seed))
        elif args.source:
            _report(convert_yolo(args.source, out, args.val_fraction, args.seed))
        else:
            raise DataError("yolo: give a data.yaml (or its folder), or --images with --names")
    elif args.cmd == "voc":
        d = voc_to_coco(args.xml, args.images, _names(args.classes), args.difficult, args.coords == "one-based")
        _report(_write(d, out, Path(args.images), args.val_fraction, args.seed))
    elif args.cmd == "pennfudan":
        d = pennfudan_to_coco(args.root, raw_labels=args.raw_labels)
        _report(_write(d, out, Path(args.root) / "PNGImages", args.val_fraction, args.seed))
    elif args.cmd == "coco2yolo":
        names = coco_to_yolo(args.json, out)
        print(f"wrote YOLO labels to {out}; class names in index order: {names}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="FORMAT")

    y = sub.add_parser("yolo", help="YOLO txt labels (Roboflow/ultralytics export) -> COCO json",
                       description="YOLO txt -> COCO json. Labels: 'class cx cy w h' normalised (or a polygon "
                       "'class x1 y1 x2 y2 ...', converted to its bounding box). Image sizes are read from the image "
                       "files. An image without a label file has no objects. Category ids are class index + 1, names "
                       "from data.yaml. With a data.yaml, writes train.json/val.json/test.json for the splits that "
                       "exist.")
    y.add_argument("source", nargs="?", help="data.yaml, or the folder holding it (splits: train, val/valid, test)")
    y.add_argument("--images", help="instead of a data.yaml: one folder of images, converted to all.json")
    y.add_argument("--labels", help="label folder for --images (default: the 'images' path part replaced by 'labels')")
    y.add_argument("--names", help="comma-separated class names for --images, in class-index order, e.g. person,car")
    y.add_argument("--out", required=True, help="output folder for the json files")
    y.add_argument("--val-fraction", type=float, default=None, help=SPLIT_HELP + " (only if the set has no val split)")
    y.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction split (default 0)")

    v = sub.add_parser("voc", help="PASCAL VOC xml files -> COCO json",
                       description="PASCAL VOC xml -> COCO json (all.json, or train.json/val.json with "
                       "--val-fraction).")
    v.add_argument("--xml", required=True, help="folder of .xml annotation files (one per image)")
    v.add_argument("--images", required=True, help="image folder (the xml <filename> is looked up here; file_name is "
                   "relative to it)")
    v.add_argument("--out", required=True, help="output folder for the json files")
    v.add_argument("--classes", help="comma-separated class names fixing the class order (default: sorted names "
                   "found); an object with another name is an error")
    v.add_argument("--difficult", choices=["keep", "crowd", "drop"], default="keep",
                   help="<difficult>1</difficult> objects: keep as normal boxes, mark iscrowd=1 (ignored by COCO "
                   "evaluation, not trained on), or drop (default keep)")
    v.add_argument("--coords", choices=["one-based", "as-is"], default="one-based",
                   help="one-based: VOC devkit pixel indices, top-left pixel (1, 1): x = xmin - 1, w = xmax - xmin + 1 "
                   "(default); as-is: coordinates are already 0-based edges: x = xmin, w = xmax - xmin")
    v.add_argument("--val-fraction", type=float, default=None, help=SPLIT_HELP)
    v.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction split (default 0)")

    p = sub.add_parser("pennfudan", help="Penn-Fudan pedestrians (PASCAL v1 text annotations) -> COCO json",
                       description="Penn-Fudan -> COCO json, file_name relative to ROOT/PNGImages. Boxes: 1-based "
                       "inclusive pixels -> x = Xmin - 1, w = Xmax - Xmin + 1. Image sizes are checked against the "
                       "PNGs.")
    p.add_argument("root", help="Penn-Fudan folder (holding Annotation/ and PNGImages/)")
    p.add_argument("--out", required=True, help="output folder for the json files")
    p.add_argument("--raw-labels", action="store_true", help="keep the labels PASpersonWalking/PASpersonStanding "
                   "as two classes (default: one class 'person')")
    p.add_argument("--val-fraction", type=float, default=0.2, help=SPLIT_HELP + " (default 0.2; 0 = one all.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")

    c = sub.add_parser("coco2yolo", help="COCO json -> YOLO txt labels",
                       description="COCO json -> one YOLO txt per image (class = rank of the category id; crowd "
                       "annotations skipped; background images get an empty file).")
    c.add_argument("json", help="COCO instances json")
    c.add_argument("--out", required=True, help="label folder to write (mirrors the json's file_name paths)")
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_command(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
