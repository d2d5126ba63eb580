"""COCO-format data: loading with validation, converters, letterbox/augmentation, the torch Dataset and loaders."""
from .coco import (
    CocoData,
    ImageRecord,
    check_class_names,
    load_coco,
    load_split,
    read_json,
    to_coco_dict,
)
from .dataset import CocoDataset, build_loaders, collate_fn, make_loader, seed_worker
from .errors import DataError
from .transforms import letterbox, letterbox_boxes, unletterbox_boxes

__all__ = [
    "CocoData", "CocoDataset", "DataError", "ImageRecord", "build_loaders", "check_class_names", "collate_fn",
    "letterbox", "letterbox_boxes", "load_coco", "load_split", "make_loader", "read_json", "seed_worker",
    "to_coco_dict", "unletterbox_boxes",
]
