"""A torch Dataset over :class:`CocoData` for training (augmented) and evaluation (letterbox only), and its loader.

Batch format (:func:`collate_fn`)::

    img        (B, 3, S, S) float32 RGB in [0, 1]
    batch_idx  (M,) float32   image index in the batch of each box
    cls        (M,) float32   contiguous class index
    bboxes     (M, 4) float32 xyxy in letterboxed input pixels (after augmentation when training)
    image_ids  list[int]      COCO image ids
    letterbox  list[(scale, pad_x, pad_y)]  original pixels -> input pixels (exact for evaluation items)
    orig_size  list[(h, w)]   original image sizes
"""
from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .coco import CocoData
from .errors import DataError
from .images import read_rgb
from .transforms import (
    INTERP,
    apply_geometric,
    geometric_pipeline,
    hsv_jitter,
    mosaic4,
    pad_to_square,
    resize_long_side,
)

log = logging.getLogger("cvkd")


class CocoDataset(Dataset):
    """Images of ``data`` as ``imgsz x imgsz`` letterboxed samples.

    ``train=False``: deterministic letterbox, ``letterbox`` params map predictions back exactly.
    ``train=True``: optional 4-image mosaic (probability ``mosaic``), random scale (1 +- ``scale``), translation
    (+- ``translate`` of the size), horizontal flip (``fliplr``), HSV gains (``hsv_*``). Crowd boxes are not trained on.
    Augmentation is a pure function of (seed, epoch, index), so it is identical whatever worker loads the item.
    ``cache`` (default ``data.cache``): decode each image once, resized so its long side is ``imgsz``, kept in RAM
    (shared by every dataset built on the same ``data`` at that size and interpolation).
    ``interp``: how images are shrunk to ``imgsz`` ("area" or "linear", see :func:`resize_long_side`).
    """

    def __init__(self, data: CocoData, imgsz: int = 640, train: bool = False, cache: bool | None = None,
                 mosaic: float = 0.0, scale: float = 0.5, translate: float = 0.1, fliplr: float = 0.5,
                 hsv_h: float = 0.015, hsv_s: float = 0.7, hsv_v: float = 0.4, seed: int = 0, progress: bool = True,
                 interp: str = "area"):
        if imgsz <= 0 or imgsz % 32:
            raise DataError(f"imgsz must be a positive multiple of 32, got {imgsz}")
        if interp not in INTERP:
            raise DataError(f"interp must be one of {INTERP}, got {interp!r}")
        self.data, self.imgsz, self.train, self.interp = data, imgsz, train, interp
        self.mosaic, self.hsv = float(mosaic), (hsv_h, hsv_s, hsv_v)
        self.seed, self.epoch = seed, 0
        self.geo = geometric_pipeline(imgsz, scale, translate, fliplr, crop=False) if train else None
        self.geo_mosaic = geometric_pipeline(imgsz, scale, translate, fliplr, crop=True) if train else None
        self.cache: list[np.ndarray] | None = None
        if data.cache if cache is None else cache:
            key = imgsz if interp == "area" else (imgsz, interp)
            if key not in data.image_cache:
                data.image_cache[key] = self._build_cache(progress)
            self.cache = data.image_cache[key]

    def __len__(self) -> int:
        return len(self.data.images)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (non-persistent workers pick it up at the next epoch's iterator)."""
        self.epoch = epoch

    def _decode(self, i: int) -> np.ndarray:
        rec = self.data.images[i]
        try:
            img = read_rgb(rec.path)  # (H, W, 3)
        except DataError as e:
            raise DataError(f"{self.data.json_path}: image id {rec.id}: {e}") from None
        if img.shape[:2] != (rec.height, rec.width):
            raise DataError(f"{self.data.json_path}: image id {rec.id}: decoded {img.shape[1]}x{img.shape[0]}, "
                            f"json says {rec.width}x{rec.height}")
        return resize_long_side(img, self.imgsz, self.interp)[0]  # (h, w, 3), max(h, w) == imgsz

    def _build_cache(self, progress: bool) -> list[np.ndarray]:
        n = len(self.data.images)
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:  # cv2 releases the GIL
            imgs = list(tqdm(pool.map(self._decode, range(n)), total=n, desc=f"caching {n} images",
                             disable=not progress, leave=False))
        log.info(f"{self.data.json_path}: cached {n} images at {self.imgsz}px "
                 f"({sum(x.nbytes for x in imgs) / 2**20:.0f} MiB)")
        return imgs

    def load_resized(self, i: int) -> tuple[np.ndarray, float]:
        """Image ``i`` with long side ``imgsz`` (from the cache when enabled) and its scale from original pixels."""
        rec = self.data.images[i]
        img = self.cache[i] if self.cache is not None else self._decode(i)
        return img, self.imgsz / max(rec.width, rec.height)

    def _boxes(self, i: int, r: float) -> tuple[np.ndarray, np.ndarray]:
        rec = self.data.images[i]
        keep = ~rec.iscrowd
        return rec.boxes[keep] * np.float32(r), rec.labels[keep]  # (n, 4) resized pixels, (n,)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.data.images[i]
        img, r = self.load_resized(i)
        canvas, px, py = pad_to_square(img, self.imgsz)  # (S, S, 3)
        boxes, labels = self._boxes(i, r)
        boxes = boxes + np.array([px, py, px, py], dtype=np.float32)  # (n, 4) input pixels
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            if self.mosaic > 0 and rng.random() < self.mosaic:
                parts = []
                for j in [i, *rng.integers(0, len(self), 3).tolist()]:
                    im_j, r_j = (img, r) if j == i else self.load_resized(j)
                    parts.append((im_j, *self._boxes(j, r_j)))
                canvas, boxes, labels = mosaic4(parts, self.imgsz, rng)  # (2S, 2S, 3)
                pipe = self.geo_mosaic
            else:
                pipe = self.geo
            canvas, boxes, labels = apply_geometric(pipe, canvas, boxes, labels, int(rng.integers(2**31)))
            canvas = hsv_jitter(canvas, rng, *self.hsv)
        return {
            "img": torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1))),  # (3, S, S) uint8
            "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),  # (n, 4)
            "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1)),  # (n,)
            "image_id": rec.id,
            "letterbox": (r, px, py),
            "orig_size": (rec.height, rec.width),
        }


def collate_fn(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack dataset items into the batch dict of the module docstring."""
    img = torch.stack([it["img"] for it in items]).float().div_(255.0)  # (B, 3, S, S)
    idx = torch.cat([torch.full((len(it["labels"]),), float(b)) for b, it in enumerate(items)])  # (M,)
    return {
        "img": img,
        "batch_idx": idx,
        "cls": torch.cat([it["labels"] for it in items]).float(),  # (M,)
        "bboxes": torch.cat([it["boxes"] for it in items]).reshape(-1, 4),  # (M, 4)
        "image_ids": [it["image_id"] for it in items],
        "letterbox": [it["letterbox"] for it in items],
        "orig_size": [it["orig_size"] for it in items],
    }


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed python/numpy from torch's per-worker seed (augmentation itself is seeded
    per item; this covers any other randomness)."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_loader(dataset: CocoDataset, batch_size: int, shuffle: bool, workers: int = 0, seed: int = 0) -> DataLoader:
    """A DataLoader with the cvkd collate, seeded shuffling and worker seeding."""
    g = torch.Generator()
    g.manual_seed(seed)
    if workers > 0:
        # OpenCV's thread pool does not survive fork (a worker calling cv2.setNumThreads hangs): run OpenCV single-
        # threaded, as ultralytics does globally; the worker processes are the parallelism.
        cv2.setNumThreads(0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate_fn,
                      worker_init_fn=seed_worker, generator=g, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, drop_last=False)


def build_loaders(data_cfg: Any, train_cfg: Any, train_data: CocoData, seed: int = 0,
                  mosaic: bool = True) -> tuple[DataLoader, CocoDataset]:
    """The training loader from a data config (``imgsz``, ``workers``, ``mosaic``, ``scale``, ``translate``, ``fliplr``,
    ``hsv_*``, ``train_interp``; cache from ``train_data.cache``) and ``train_cfg.batch``. ``mosaic=False`` turns mosaic off
    (close_mosaic).
    Cheap to call every epoch with a new seed: the image cache lives on ``train_data``. Returns (loader, dataset)."""
    ds = CocoDataset(train_data, data_cfg.imgsz, train=True, mosaic=data_cfg.mosaic if mosaic else 0.0,
                     scale=data_cfg.scale, translate=data_cfg.translate, fliplr=data_cfg.fliplr, hsv_h=data_cfg.hsv_h,
                     hsv_s=data_cfg.hsv_s, hsv_v=data_cfg.hsv_v, seed=seed,
                     interp=data_cfg.train_interp)
    return make_loader(ds, train_cfg.batch, shuffle=True, workers=data_cfg.workers, seed=seed), ds
