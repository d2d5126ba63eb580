"""Pseudo-labels: run a teacher detector over an image folder or a video and write its boxes as a COCO json.

Hard-label distillation: the student later trains on these boxes as if they were ground truth (``data.extra_train``).
Video frames are thinned by ``every`` (every Nth frame) and ``min_change`` (mean absolute difference, 0-255, of a small
grayscale copy vs the last kept frame), so a static camera does not yield thousands of near-identical frames. Kept
frames without boxes stay in the json as images without annotations (negatives).

Resumable: ``<out>/pseudo_state.json`` (written atomically every ``save_every`` source frames) holds the arguments,
the next source frame and everything kept so far; a later run with the same arguments continues from there.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..data.convert import write_json
from ..data.convert_pascal import categories
from ..data.errors import DataError
from ..data.frames import THUMB, FrameSource, iter_frames, open_source, thumb
from ..data.transforms import letterbox, unletterbox_boxes

log = logging.getLogger("cvkd")

JSON_FILE = "pseudo.json"
STATE_FILE = "pseudo_state.json"
STATE_VERSION = 1
JPEG_QUALITY = 95
MIN_BOX = 1.0  # pixels: boxes narrower or lower than this after clipping to the image are dropped (counted)


@dataclass
class PseudoOptions:
    """How to label; every field except ``skip_bad``, ``batch`` and ``save_every`` must match to resume a run."""

    imgsz: int = 640  # letterbox size of the teacher's input, a multiple of 32
    conf: float = 0.25  # score threshold of every class without its own
    class_conf: dict[str, float] = field(default_factory=dict)  # class name -> its own threshold
    iou: float = 0.7  # NMS IoU
    max_det: int = 300  # boxes per frame at most
    every: int = 1  # look at source frames 0, N, 2N, ...
    min_change: float = 0.0  # keep a frame only if it differs this much from the last kept one (0 = keep all)
    skip_bad: bool = False  # unreadable images in a folder are skipped and counted instead of an error
    batch: int = 8  # frames per forward pass
    save_every: int = 500  # source frames between state saves


@dataclass
class PseudoResult:
    json_path: Path
    image_root: Path  # file_name in the json is relative to this folder
    images: int
    boxes: int
    negatives: int  # kept frames without any box above threshold
    next_frame: int  # first source frame not processed yet
    done: bool  # False: stopped by max_frames; run again to continue
    counts: dict[str, int]  # selected (looked at), static (dropped by min_change), bad (skipped), small (boxes dropped)


def parse_class_conf(spec: str | None) -> dict[str, float]:
    """``"person=0.3,car=0.5"`` -> ``{"person": 0.3, "car": 0.5}`` (names are checked against the teacher later)."""
    out: dict[str, float] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            thr = float(value)
        except ValueError:
            thr = float("nan")
        if not sep or not name or not np.isfinite(thr) or thr < 0:
            raise DataError(f"--class-conf: expected name=threshold (threshold >= 0), e.g. person=0.3,car=0.5; "
                            f"got {item.strip()!r}")
        if name in out:
            raise DataError(f"--class-conf: class '{name}' given twice")
        out[name] = thr
    return out


def load_teacher(path: str | Path, device: str | torch.device = "cpu"):
    """The teacher detector in eval mode; a checkpoint problem (missing, wrong kind, corrupt) becomes a DataError."""
    from ..checkpoint import CheckpointError
    from ..models import ModelError, load_detector

    try:
        return load_detector(path, device).eval()
    except (ModelError, CheckpointError) as e:
        raise DataError(f"teacher: {e}") from None


def _thresholds(opts: PseudoOptions, names: list[str]) -> torch.Tensor:
    """(K,) score threshold per teacher class; unknown names in ``class_conf`` are an error."""
    unknown = sorted(set(opts.class_conf) - set(names))
    if unknown:
        raise DataError(f"--class-conf: unknown class name(s) {unknown} (the teacher's classes: {list(names)})")
    return torch.tensor([opts.class_conf.get(n, opts.conf) for n in names], dtype=torch.float32)


def _fingerprint(src: FrameSource, teacher: Path, opts: PseudoOptions) -> dict:
    """The arguments a resumed run must share with the run that wrote the state."""
    st = teacher.stat()
    return {"source": str(src.path.resolve()), "source_files": src.signature, "teacher": str(teacher.resolve()),
            "teacher_file": f"{st.st_size} bytes {st.st_mtime_ns}", "imgsz": opts.imgsz, "conf": opts.conf,
            "class_conf": dict(sorted(opts.class_conf.items())), "iou": opts.iou, "max_det": opts.max_det,
            "every": opts.every, "min_change": opts.min_change}


def _label(model, buf: list[tuple[int, np.ndarray, str]], thr: torch.Tensor, opts: PseudoOptions,
           device: str | torch.device, src: FrameSource, state: dict) -> None:
    """Run the teacher on the buffered frames; append their images (video: write the JPEGs) and boxes to ``state``."""
    boxed = [letterbox(rgb, opts.imgsz) for _, rgb, _ in buf]  # (S, S, 3), r, (pad_x, pad_y)
    x = torch.from_numpy(np.stack([b[0] for b in boxed])).to(device).permute(0, 3, 1, 2).float() / 255  # (B, 3, S, S)
    preds = model.predict(x, conf=float(thr.min()), iou=opts.iou, max_det=opts.max_det)
    images, anns, counts = state["images"], state["annotations"], state["counts"]
    for (i, rgb, name), (_, r, pad), p in zip(buf, boxed, preds):
        h, w = rgb.shape[:2]
        im = {"id": len(images) + 1, "file_name": name, "width": w, "height": h}
        if src.video:
            im["frame"] = i
            cv2.imwrite(str(src.image_root / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        images.append(im)
        labels = p["labels"].cpu()
        keep = p["scores"].cpu() > thr[labels]
        boxes = unletterbox_boxes(p["boxes"].cpu().double()[keep], r, pad)  # (n, 4) xyxy original pixels
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        n0 = len(anns)
        for box, s, k in zip(boxes.tolist(), p["scores"].cpu()[keep].tolist(), labels[keep].tolist()):
            x1, y1, x2, y2 = (round(v, 2) for v in box)  # corners rounded first: x + w stays inside the image
            bw, bh = round(x2 - x1, 2), round(y2 - y1, 2)
            if bw < MIN_BOX or bh < MIN_BOX:
                counts["small"] += 1
                continue
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": k + 1,
                         "bbox": [x1, y1, bw, bh], "area": round(bw * bh, 2), "iscrowd": 0,
                         "score": round(s, 5), "pseudo": True})
        counts["negatives"] += int(len(anns) == n0)


def _save_state(path: Path, state: dict) -> None:
    """Atomic write (temp file + rename): a run killed mid-save keeps the previous state."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


def _load_state(path: Path, fp: dict) -> dict | None:
    """The saved state of an earlier run with the same arguments, None if there is none; mismatch -> DataError."""
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        old = state["args"] if state.get("version") == STATE_VERSION else None
    except (ValueError, KeyError, TypeError, AttributeError):
        old = None
    if not isinstance(old, dict):
        raise DataError(f"{path}: unreadable resume state (or from another cvkd version); pass --restart to start over")
    diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in fp.items() if old.get(k) != v]
    if diff:
        raise DataError(f"{path}: this output folder holds a run with other arguments ({'; '.join(diff)}); "
                        "pass --restart to start over, or use another output folder")
    return state


def _clear(out_dir: Path, src: FrameSource) -> None:
    """Forget an earlier run: its state, json and (video) extracted frames."""
    for p in (out_dir / STATE_FILE, out_dir / JSON_FILE):
        p.unlink(missing_ok=True)
    if src.video and src.image_root.is_dir():
        for p in src.image_root.glob(f"{src.path.stem}_[0-9][0-9][0-9][0-9][0-9][0-9].jpg"):
            p.unlink()


def pseudo_label(source: str | Path, teacher: str | Path, out_dir: str | Path, opts: PseudoOptions | None = None,
                 device: str | torch.device = "cpu", restart: bool = False, max_frames: int | None = None,
                 progress: bool = True) -> PseudoResult:
    """Label ``source`` (image folder or video) with ``teacher``; writes ``out_dir/pseudo.json`` (+ ``images/``).

    Continues an earlier run in ``out_dir`` with the same arguments (``restart`` starts over). ``max_frames`` stops
    before source frame ``max_frames`` (a later call continues); the json then holds the frames done so far.
    """
    opts = opts or PseudoOptions()
    if opts.imgsz < 32 or opts.imgsz % 32 or opts.every < 1 or opts.batch < 1 or opts.save_every < 1:
        raise DataError(f"imgsz must be a positive multiple of 32 and every, batch, save_every >= 1 (got imgsz "
                        f"{opts.imgsz}, every {opts.every}, batch {opts.batch}, save_every {opts.save_every})")
    if not (opts.conf >= 0 and opts.min_change >= 0):
        raise DataError(f"conf and min_change must be >= 0 (got {opts.conf}, {opts.min_change})")
    source, teacher, out_dir = Path(source), Path(teacher), Path(out_dir)
    src = open_source(source, out_dir)
    try:
        model = load_teacher(teacher, device)
        thr = _thresholds(opts, list(model.class_names))
        fp = _fingerprint(src, teacher, opts)
        out_dir.mkdir(parents=True, exist_ok=True)
        src.image_root.mkdir(parents=True, exist_ok=True)
        if restart:
            _clear(out_dir, src)
        state_path = out_dir / STATE_FILE
        state = _load_state(state_path, fp) or {
            "version": STATE_VERSION, "args": fp, "next_frame": 0, "done": False, "last_thumb": None,
            "counts": {"selected": 0, "static": 0, "bad": 0, "small": 0, "negatives": 0},
            "images": [], "annotations": []}
        if state["next_frame"]:
            log.info(f"{state_path}: resuming at source frame {state['next_frame']} ({len(state['images'])} images, "
                     f"{len(state['annotations'])} boxes so far)")
        if not state["done"]:
            _run(model, src, thr, opts, device, state, state_path, max_frames, progress)
    finally:
        if src.cap is not None:
            src.cap.release()
    if not state["images"] and state["done"]:
        raise DataError(f"{source}: no frame could be read (every image unreadable, or a video without frames)")
    d = {"info": {"description": "cvkd pseudo-labels", "source": str(source), "teacher": str(teacher),
                  "conf": opts.conf, "class_conf": opts.class_conf, "imgsz": opts.imgsz},
         "images": state["images"], "annotations": state["annotations"], "categories": categories(model.class_names)}
    json_path = write_json(d, out_dir / JSON_FILE)
    c = state["counts"]
    log.info(f"{source}: {c['selected']} frames looked at, {len(state['images'])} kept ({c['negatives']} without "
             f"boxes), {c['static']} dropped as unchanged, {c['bad']} unreadable skipped; "
             f"{len(state['annotations'])} boxes ({c['small']} under {MIN_BOX:g} px dropped)")
    return PseudoResult(json_path, src.image_root, len(state["images"]), len(state["annotations"]), c["negatives"],
                        state["next_frame"], state["done"], dict(c))


def _run(model, src: FrameSource, thr: torch.Tensor, opts: PseudoOptions, device, state: dict, state_path: Path,
         max_frames: int | None, progress: bool) -> None:
    """The frame loop: select, batch, label; the state advances (and is saved) only when no frame is pending."""
    start, counts = state["next_frame"], state["counts"]
    last = None if state["last_thumb"] is None else np.array(state["last_thumb"], np.uint8).reshape(THUMB[::-1])
    total = src.total if max_frames is None else min(src.total or max_frames, max_frames)
    buf: list[tuple[int, np.ndarray, str]] = []
    saved_at = start
    bar = tqdm(total=total, initial=start, unit="frame", desc=f"pseudo-labelling {src.path.name}",
               disable=not progress, mininterval=1)
    nxt = start
    for i, rgb, name in iter_frames(src, start, max_frames, opts.every, opts.skip_bad, counts):
        nxt = i + 1
        if rgb is not None:
            counts["selected"] += 1
            small = thumb(rgb) if opts.min_change > 0 else None  # (64, 64) grayscale
            if small is not None and last is not None and np.abs(small.astype(np.int16) - last).mean() < opts.min_change:
                counts["static"] += 1
            else:
                last = small
                buf.append((i, rgb, name))
        if len(buf) >= opts.batch:
            _label(model, buf, thr, opts, device, src, state)
            buf.clear()
        bar.update(1)
        if not buf:
            state["next_frame"], state["last_thumb"] = nxt, None if last is None else last.ravel().tolist()
            if nxt - saved_at >= opts.save_every:
                _save_state(state_path, state)
                saved_at = nxt
    bar.close()
    if buf:
        _label(model, buf, thr, opts, device, src, state)
    state["next_frame"], state["last_thumb"] = nxt, None if last is None else last.ravel().tolist()
    state["done"] = max_frames is None or nxt < max_frames or (src.total is not None and nxt >= src.total)
    _save_state(state_path, state)
