"""Tiny data written by the tests themselves: small PNG/JPEG images and a COCO dict over them."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"  # ../shared/datasets from the repo root
TINY_IMAGES = [(1, "a.png", 64, 48), (2, "b.png", 48, 64), (3, "c.png", 40, 40)]  # id, file, width, height
TINY_COCO = {
    "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in TINY_IMAGES],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 10], "area": 200, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 20, 10, 20], "area": 200, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 30, 40], "area": 1200, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
}


def make_image(path: Path, w: int, h: int, seed: int = 0) -> Path:
    """A random RGB image of size w x h (format from the suffix)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def write_json(obj, path: Path) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def tiny(tmp_path):
    """(json path, image dir, dict): three PNGs (one without annotations), two categories; edit d and re-write."""
    img_dir = tmp_path / "images"
    for i, f, w, h in TINY_IMAGES:
        make_image(img_dir / f, w, h, seed=i)
    d = copy.deepcopy(TINY_COCO)
    return write_json(d, tmp_path / "gt.json"), img_dir, d
