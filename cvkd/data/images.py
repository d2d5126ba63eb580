"""Cheap image checks (header, truncation, size) and decoding to RGB arrays."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError


def _pil_open(path):
    """PIL's own ``Image.open``: importing ultralytics replaces it with one that tries to import (or, online,
    pip-install) a HEIF plugin on any file PIL cannot identify, which would turn a corrupt image into an ImportError."""
    patches = sys.modules.get("ultralytics.utils.patches")
    return (getattr(patches, "_image_open", None) or Image.open)(path)


JPEG_EOI = b"\xff\xd9"
TAIL_BYTES = 4096  # a complete JPEG ends with the EOI marker, possibly followed by a little padding


def jpeg_decoder_warning(path: Path) -> str | None:
    """libjpeg's complaint about a JPEG's entropy-coded data (``Corrupt JPEG data: ...``), or None.

    Such files have valid headers and an end marker, and OpenCV/PIL decode them without an error into partly grey or
    smeared pixels; libjpeg only prints a warning to the C stderr. So decode once (at 1/8 scale: the Huffman data
    is still read in full) with file descriptor 2 redirected, and read the warning back. Main thread only.
    """
    buf = np.fromfile(path, np.uint8)
    saved = os.dup(2)
    with tempfile.TemporaryFile() as err:
        os.dup2(err.fileno(), 2)
        try:
            img = cv2.imdecode(buf, cv2.IMREAD_REDUCED_COLOR_8)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        lines = [ln.strip() for ln in err.read().decode(errors="replace").splitlines()]
    found = [ln for ln in lines if "jpeg" in ln.lower() or "premature" in ln.lower()]
    if img is None:
        return found[0] if found else "the JPEG decoder could not decode it"
    return found[0] if found else None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header only (no decoding)."""
    with _pil_open(path) as im:
        return im.size


def check_image(path: Path, size: tuple[int, int] | None, where: str, size_from: str = "json",
                decode: bool = False) -> tuple[int, int]:
    """Fail in one line if ``path`` is missing, not an image, truncated, or not ``size`` = (width, height) (as given
    by ``size_from``, named in the message).

    Reads the header with PIL (lazy, fast); PNG chunks are CRC-checked by ``verify()``; a JPEG must end with its
    EOI marker (catches truncated downloads without decoding the pixels). ``decode``: also decode a JPEG once and
    fail on a decoder warning (corrupt data in the middle, :func:`jpeg_decoder_warning`; ~2 ms an image).
    Returns the real (width, height).
    """
    if not path.is_file():
        raise DataError(f"{where}: image file not found: {path}")
    try:
        with _pil_open(path) as im:
            real = im.size
            fmt = im.format
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as e:
        raise DataError(f"{where}: unreadable or corrupt image {path} ({type(e).__name__}: {e})") from None
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(0, 2)
            n = f.tell()
            f.seek(max(0, n - TAIL_BYTES))
            if JPEG_EOI not in f.read():
                raise DataError(f"{where}: corrupt image {path} (truncated JPEG: no end-of-image marker)")
        if decode and (warning := jpeg_decoder_warning(path)):
            raise DataError(f"{where}: corrupt image {path} (decoder: {warning})")
    if size is not None and tuple(real) != tuple(size):
        raise DataError(f"{where}: {size_from} says {size[0]}x{size[1]} but the file {path} is {real[0]}x{real[1]}")
    return real


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode to (H, W, 3) uint8 RGB. EXIF orientation is ignored so pixels match the header size (PIL, COCO json)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # (H, W, 3) BGR
    if img is None:
        raise DataError(f"cannot decode image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # (H, W, 3) RGB

