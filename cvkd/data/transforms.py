"""Letterbox (deterministic, for evaluation) and training augmentation (albumentations, bbox-safe).

Letterbox convention: resize so the longest side is ``size`` (scale ``r = size / max(h, w)``, sides rounded), then pad
to ``size x size`` with gray 114, centred (left = round(dw - 0.1), top = round(dh - 0.1)). A box in original pixels maps
to ``box * r + (pad_x, pad_y)``; :func:`unletterbox_boxes` inverts it.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

PAD_VALUE = 114
MIN_VISIBILITY = 0.1  # a box keeps at least this fraction of its area after cropping, or is dropped
MIN_SIZE = 2.0  # pixels: smaller boxes after augmentation are dropped


INTERP = ("area", "linear")


def resize_long_side(img: np.ndarray, size: int, interp: str = "area") -> tuple[np.ndarray, float]:
    """Resize (H, W, 3) so max(H, W) == size; returns (image, scale r).

    Shrinking uses ``interp``: "area" (INTER_AREA, anti-aliased; what evaluation uses) or "linear" (INTER_LINEAR,
    aliased, what ultralytics uses for training images). Enlarging is always linear."""
    h, w = img.shape[:2]
    r = size / max(h, w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    if (nw, nh) != (w, h):
        mode = cv2.INTER_AREA if r < 1 and interp == "area" else cv2.INTER_LINEAR
        img = cv2.resize(img, (nw, nh), interpolation=mode)  # (nh, nw, 3)
    return img, r


def pad_to_square(img: np.ndarray, size: int, fill: int = PAD_VALUE) -> tuple[np.ndarray, int, int]:
    """Centre (H, W, 3) with H, W <= size on a ``size x size`` canvas; returns (canvas, pad_x, pad_y)."""
    h, w = img.shape[:2]
    dw, dh = (size - w) / 2, (size - h) / 2
    left, top = int(round(dw - 0.1)), int(round(dh - 0.1))
    out = cv2.copyMakeBorder(img, top, size - h - top, left, size - w - left, cv2.BORDER_CONSTANT,
                             value=(fill, fill, fill))  # (size, size, 3)
    return out, left, top


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(H, W, 3) -> (size, size, 3) letterboxed image, scale r and (pad_x, pad_y)."""
    resized, r = resize_long_side(img, size)
    out, px, py = pad_to_square(resized, size)
    return out, r, (px, py)


def letterbox_boxes(boxes, scale: float, pad: tuple[float, float]):
    """(n, 4) xyxy original pixels -> letterboxed input pixels (numpy array or torch tensor)."""
    offset = _offset(boxes, pad)
    return boxes * scale + offset


def unletterbox_boxes(boxes, scale: float, pad: tuple[float, float]):
    """(n, 4) xyxy letterboxed input pixels -> original pixels (numpy array or torch tensor); inverse of
    :func:`letterbox_boxes`. Clip to the image afterwards if needed."""
    offset = _offset(boxes, pad)
    return (boxes - offset) / scale


def _offset(boxes, pad: tuple[float, float]):
    px, py = float(pad[0]), float(pad[1])
    if isinstance(boxes, torch.Tensor):
        return boxes.new_tensor([px, py, px, py])  # (4,)
    return np.array([px, py, px, py], dtype=boxes.dtype if boxes.dtype.kind == "f" else np.float64)  # (4,)


def hsv_jitter(img: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> np.ndarray:
    """Random multiplicative gains on hue, saturation and value of an RGB uint8 image (lookup tables, in place-safe)."""
    if not (hgain or sgain or vgain):
        return img
    r = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain]) + 1  # (3,) gains around 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))  # OpenCV hue range is [0, 180)
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)  # (H, W, 3) RGB


def geometric_pipeline(size: int, scale: float, translate: float, fliplr: float, crop: bool) -> A.Compose:
    """Random scale/translate (Affine, gray fill) and horizontal flip; ``crop`` adds a centre crop to ``size``
    (mosaic canvases are 2 * size). The shift is at most ``translate * size`` pixels either way in both cases, as in
    ultralytics' ``random_perspective``. Boxes: pascal_voc xyxy pixels, ``labels`` field, tiny/hidden boxes dropped."""
    # Affine's translate_percent is a fraction of the image it is given: half of it on a 2 * size mosaic canvas
    shift = translate / 2 if crop else translate
    ops = [
        A.Affine(scale=(1 - scale, 1 + scale), keep_ratio=True,
                 translate_percent={"x": (-shift, shift), "y": (-shift, shift)},
                 interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=(PAD_VALUE,) * 3, p=1.0),
        A.HorizontalFlip(p=fliplr),
    ]
    if crop:
        ops.append(A.CenterCrop(height=size, width=size, p=1.0))
    bbox = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=MIN_VISIBILITY,
                        min_width=MIN_SIZE, min_height=MIN_SIZE, clip=True, filter_invalid_bboxes=True)
    return A.Compose(ops, bbox_params=bbox, seed=0)


def apply_geometric(pipe: A.Compose, img: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``pipe`` reseeded with ``seed`` (deterministic whatever the worker); returns (img, boxes, labels)."""
    pipe.set_random_seed(seed)
    out = pipe(image=img, bboxes=boxes.reshape(-1, 4), labels=labels)
    b = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)  # (n', 4)
    return out["image"], b, np.asarray(out["labels"], dtype=np.int64).reshape(-1)


def mosaic4(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four (image with long side <= size, boxes xyxy, labels) around a random centre of a 2*size canvas.

    Image k fills the quadrant top-left, top-right, bottom-left, bottom-right of the centre, cut at the canvas
    border; boxes are shifted and clipped to the visible part (dropped below MIN_VISIBILITY / MIN_SIZE).
    """
    s2 = 2 * size
    canvas = np.full((s2, s2, 3), PAD_VALUE, dtype=np.uint8)  # (2S, 2S, 3)
    xc, yc = (int(v) for v in rng.uniform(size / 2, 3 * size / 2, 2))
    all_boxes, all_labels = [], []
    for k, (img, boxes, labels) in enumerate(parts):
        h, w = img.shape[:2]
        if k == 0:  # canvas region (x1a, y1a, x2a, y2a) and the matching image region
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
        elif k == 1:
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s2), yc
            x1b, y1b = 0, h - (y2a - y1a)
        elif k == 2:
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(yc + h, s2)
            x1b, y1b = w - (x2a - x1a), 0
        else:
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s2), min(yc + h, s2)
            x1b, y1b = 0, 0
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y1b + (y2a - y1a), x1b:x1b + (x2a - x1a)]
        b = boxes.reshape(-1, 4) + np.array([x1a - x1b, y1a - y1b] * 2, dtype=np.float32)  # (n, 4) canvas pixels
        clipped = np.clip(b, [x1a, y1a, x1a, y1a], [x2a, y2a, x2a, y2a]).astype(np.float32)  # (n, 4)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (cw >= MIN_SIZE) & (ch >= MIN_SIZE) & (cw * ch >= MIN_VISIBILITY * area)
        all_boxes.append(clipped[keep])
        all_labels.append(labels.reshape(-1)[keep])
    return canvas, np.concatenate(all_boxes).reshape(-1, 4), np.concatenate(all_labels).astype(np.int64)
