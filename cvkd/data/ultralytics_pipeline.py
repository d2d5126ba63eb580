"""Ultralytics' training-data pipeline as an alternative to cvkd's own (``data.pipeline: ultralytics``).

On the CCTV set cvkd's trainer fed by ultralytics 8.4's ``YOLODataset`` (mosaic, RandomPerspective, HSV, flip,
close_mosaic, its 1 % blur/gray/CLAHE) trains a better YOLOv8n than the same trainer fed by cvkd's pipeline
(docs/cctv.md, "The baseline gap to ultralytics"). This module makes that a supported choice for train and distill:
the training set (after ``class_map`` and ``extra_train``) is written once as YOLO labels beside links to its images
under the run folder, and each epoch yields batches in cvkd's format, so the trainer, the KD terms and the teacher see
ultralytics' augmented images unchanged. Validation, the unlabelled-frame loader and evaluation stay cvkd's.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .coco import CocoData
from .convert import yolo_label_text

log = logging.getLogger("cvkd")


def write_yolo_view(data: CocoData, root: Path) -> Path:
    """``root/images/<n>_<name>`` links to the set's images and ``root/labels/<n>_<name>.txt`` YOLO labels (class
    index = cvkd's contiguous class; crowd boxes skipped). Returns ``root/images``. Rewritten on every call, so a
    resumed run sees the labels of its own (saved) config."""
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for n, r in enumerate(data.images):
        name = f"{n:06d}_{Path(r.file_name).name}"
        link = images / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(r.path).resolve())
        (labels / name).with_suffix(".txt").write_text(yolo_label_text(r), encoding="utf-8")
    for stale in root.glob("*.cache"):
        stale.unlink()  # ultralytics' label cache of an earlier call
    return images


class UltralyticsTrainData:
    """The training loader of one run on ultralytics' pipeline; :meth:`loader` is called once per epoch."""

    def __init__(self, data_cfg, train: CocoData, root: Path, batch: int, epochs: int, seed: int):
        from ultralytics.cfg import get_cfg
        from ultralytics.data import build_yolo_dataset

        self.batch, self.workers, self.imgsz = batch, data_cfg.workers, data_cfg.imgsz
        self.close_at = epochs - data_cfg.close_mosaic
        images = write_yolo_view(train, root)
        # cvkd's augmentation keys carry over; ultralytics' others (degrees, shear, mixup...) keep their defaults
        self.hyp = get_cfg(overrides={
            "imgsz": data_cfg.imgsz, "cache": "ram" if data_cfg.cache else False, "seed": seed, "batch": batch,
            "close_mosaic": data_cfg.close_mosaic, "mosaic": data_cfg.mosaic, "scale": data_cfg.scale,
            "translate": data_cfg.translate, "fliplr": data_cfg.fliplr, "hsv_h": data_cfg.hsv_h,
            "hsv_s": data_cfg.hsv_s, "hsv_v": data_cfg.hsv_v, "workers": data_cfg.workers})
        names = dict(enumerate(train.class_names))
        self.dataset = build_yolo_dataset(self.hyp, str(images), batch, {"names": names, "nc": len(names),
                                                                         "channels": 3}, mode="train")
        self._loader, self._closed = None, False
        log.info(f"training data: ultralytics pipeline over {len(self.dataset)} images ({images})")

    def loader(self, epoch: int) -> "_CvkdBatches":
        from ultralytics.data import build_dataloader

        if epoch >= self.close_at and not self._closed:
            self.dataset.close_mosaic(self.hyp)  # as ultralytics' trainer does for the last close_mosaic epochs
            self._closed, self._loader = True, None
        if self._loader is None:
            self._loader = build_dataloader(self.dataset, self.batch, self.workers, shuffle=True)
        return _CvkdBatches(self._loader, self.imgsz)


class _CvkdBatches:
    """One epoch of ultralytics batches in cvkd's batch format (img float in [0, 1], xyxy pixel boxes)."""

    def __init__(self, loader, imgsz: int):
        self.loader, self.imgsz = loader, imgsz

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for b in self.loader:
            xywh = b["bboxes"] * self.imgsz  # (M, 4) normalised centre xywh -> pixels
            xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)  # (M, 4)
            yield {"img": b["img"].float() / 255.0,  # (B, 3, S, S)
                   "batch_idx": b["batch_idx"].float(), "cls": b["cls"].view(-1), "bboxes": xyxy}


__all__ = ["UltralyticsTrainData", "write_yolo_view"]
