"""Frames from an image folder or a video file, for pseudo-labelling (:mod:`cvkd.engine.pseudo`).

A folder is read sorted and recursive; a video through OpenCV, decoding only the frames that are selected
(every Nth). Unreadable images are a one-line :class:`DataError`, or are skipped and counted when asked.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError
from .images import check_image, read_rgb
from .yolo import IMAGE_EXTS, list_images

log = logging.getLogger("cvkd")

THUMB = (64, 64)  # (w, h) of the grayscale copy compared by min_change


@dataclass
class FrameSource:
    """An open image folder or video, and what the resume check needs to know about it."""

    path: Path
    video: bool
    total: int | None  # number of frames/images (None: the video does not say)
    signature: str  # changes when the source changes (resume check)
    image_root: Path
    files: list[Path] = field(default_factory=list)
    cap: cv2.VideoCapture | None = None


def open_source(path: Path, out_dir: Path) -> FrameSource:
    """An image folder (sorted, recursive) or a video file; one-line errors when missing, unopenable or empty.
    A video's kept frames are written to ``out_dir/images`` (its ``image_root``)."""
    if not path.exists():
        raise DataError(f"source {path} not found (give an image folder or a video file)")
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: no images found ({', '.join(IMAGE_EXTS)})")
        names = "\n".join(p.relative_to(path).as_posix() for p in files)
        sig = f"{len(files)} files {hashlib.sha1(names.encode()).hexdigest()[:12]}"
        return FrameSource(path, False, len(files), sig, path, files=files)
    if path.suffix.lower() in IMAGE_EXTS:
        raise DataError(f"{path}: a single image; give the folder holding it")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: cannot open the video (not a video, unsupported codec or corrupt)")
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    st = path.stat()
    return FrameSource(path, True, n if n > 0 else None, f"{st.st_size} bytes {st.st_mtime_ns}", out_dir / "images", cap=cap)


def iter_frames(src: FrameSource, start: int, stop: int | None, every: int, skip_bad: bool,
                counts: dict) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """(source index, RGB frame or None when not selected / skipped as bad, file_name) for frames start..stop-1;
    ``counts["bad"]`` counts the skipped images."""
    if not src.video:
        for i in range(start, src.total if stop is None else min(stop, src.total)):
            path = src.files[i]
            name = path.relative_to(src.path).as_posix()
            if i % every:
                yield i, None, name
                continue
            try:  # decode first: after ultralytics is imported, PIL (check_image) fails oddly on non-images
                rgb = read_rgb(path)
                check_image(path, None, str(src.path), decode=True)  # truncated or corrupt JPEG, PNG CRC
            except DataError as e:
                if not skip_bad:
                    raise DataError(f"{e} (pass --skip-bad to skip unreadable images)") from None
                counts["bad"] += 1
                log.warning(f"skipped: {e}")
                rgb = None
            yield i, rgb, name
        return
    for i in range(start):  # frames an earlier run already processed (grab: no decoding to an image)
        if not src.cap.grab():
            raise DataError(f"{src.path}: the video ends at frame {i} but the saved state is at frame {start}; "
                            "pass --restart")
    i = start
    while stop is None or i < stop:
        ok, bgr = (src.cap.grab(), None) if i % every else src.cap.read()
        if not ok:
            return
        yield i, None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"{src.path.stem}_{i:06d}.jpg"
        i += 1


def thumb(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (64, 64) uint8 grayscale, area-averaged (what min_change compares)."""
    return cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), THUMB, interpolation=cv2.INTER_AREA)
