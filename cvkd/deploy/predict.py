"""What a model detects on images, folders, video files and camera streams, as the camera would run it.

One frame at a time (batch 1, as deployed): letterbox, the model's ``predict`` (class-aware NMS, or the NMS baked
into an ONNX file), boxes back to frame pixels. Models: cvkd or ultralytics ``.pt`` (PyTorch), ``full`` cvkd ONNX
files (FP32 or INT8, ONNX Runtime) and OpenVINO IR converted from them. Sources: an image, a folder (sorted,
recursive), a video file, an RTSP/HTTP(S) URL or a webcam index; a live stream that drops is reopened a bounded
number of times. Drawing uses OpenCV (already a dependency, and it writes the video too).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.errors import DataError
from ..data.images import read_rgb
from ..data.transforms import letterbox, unletterbox_boxes
from ..data.yolo import IMAGE_EXTS, list_images

log = logging.getLogger("cvkd")

STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
# BGR colours, one per class (cycled): distinct on grey CCTV footage
PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
           (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0)]


@dataclass
class PredictOptions:
    imgsz: int | None = None  # None: the model's own (ONNX/IR files fix it; checkpoints record it)
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    classes: list[str] | None = None  # class names or indices to keep; None keeps all
    every: int = 1  # run on every Nth frame of a video or stream
    max_frames: int = 0  # stop after this many processed frames (0: no limit)
    reconnect: int = 3  # a live stream that stops delivering frames is reopened this many times
    reconnect_wait: float = 1.0  # seconds before each reopen
    annotate: bool = True  # write annotated images / an annotated video
    device: str = "auto"  # PyTorch models: auto, cpu, cuda, cuda:N, mps
    threads: int = 1  # ONNX Runtime / OpenVINO intra-op threads
    e2e_nms: bool = False  # end-to-end PyTorch models (YOLO26): one-to-many branch + NMS instead of one-to-one top-k


@dataclass
class PredictResult:
    predictions: list[dict]  # COCO results entries, each with "file_name" (images) or "frame" (video)
    frames: int
    latency_ms: list[float] = field(default_factory=list)  # per processed frame: letterbox + model + boxes back
    wall_s: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C: how a live stream is normally stopped; what was done is still written

    def summary(self) -> str:
        if not self.latency_ms:
            return "0 frames processed"
        lat = np.asarray(self.latency_ms)
        return (f"{self.frames} frames: latency mean {lat.mean():.1f} ms, p50 {np.percentile(lat, 50):.1f} ms, "
                f"p95 {np.percentile(lat, 95):.1f} ms; {1000 / lat.mean():.1f} FPS model, "
                f"{self.frames / max(self.wall_s, 1e-9):.1f} FPS end to end (decode + draw + write)")


# --- models --------------------------------------------------------------------------------------------------------

def load_predictor(path: str | Path, device: str = "cpu", threads: int = 1):
    """A detector with ``predict``, ``class_names`` and ``imgsz`` (None when the file does not fix it)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    if path.suffix == ".onnx":
        from .ort_detector import OrtDetector

        return OrtDetector(path, threads)
    if path.suffix == ".xml":
        return OpenVinoDetector(path, threads)
    from ..models import load_detector

    return load_detector(path, device).eval()


class OpenVinoDetector:
    """An OpenVINO IR (``.xml``) converted by ``cvkd export --openvino`` from a ``full`` ONNX file; the metadata
    (classes, strides, imgsz) is read from that ONNX file beside it."""

    def __init__(self, path: Path, threads: int = 1):
        from .ort_detector import OrtDetector
        from .pipeline import _openvino

        onnx_path = path.with_suffix(".onnx")
        if not onnx_path.is_file():
            raise DataError(f"{path}: the ONNX file it was converted from ({onnx_path.name}) must lie beside it "
                            "(it holds the class names and input size)")
        self.ref = OrtDetector(onnx_path, threads)  # metadata and the shared predict/NMS code
        ov = _openvino()
        core = ov.Core()
        self.compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
        self.path, self.class_names, self.imgsz = path, self.ref.class_names, self.ref.imgsz
        self.ref.run = lambda img: [self.compiled(img.detach().float().cpu().numpy()[b: b + 1])[0]
                                    for b in range(img.shape[0])]

    def predict(self, img: torch.Tensor, conf: float = 0.001, iou: float = 0.7, max_det: int = 300):
        return self.ref.predict(img, conf=conf, iou=iou, max_det=max_det)


def class_filter(classes: list[str] | None, names: list[str]) -> set[int] | None:
    """Class indices to keep from names or indices; one-line error for an unknown one."""
    if not classes:
        return None
    keep = set()
    for c in classes:
        if c in names:
            keep.add(names.index(c))
        elif c.isdigit() and int(c) < len(names):
            keep.add(int(c))
        else:
            raise DataError(f"--classes: unknown class '{c}' (the model's classes: {names})")
    return keep


# --- sources -------------------------------------------------------------------------------------------------------

def is_stream(source: str) -> bool:
    return source.isdigit() or source.lower().startswith(STREAM_PREFIXES)


def open_capture(source: str) -> cv2.VideoCapture:
    return cv2.VideoCapture(int(source) if source.isdigit() else source)


def image_frames(source: Path) -> Iterator[tuple[int, np.ndarray, str]]:
    """(index, RGB, name relative to the source) of an image or of every image of a folder."""
    files = [source] if source.is_file() else list_images(source)
    if not files:
        raise DataError(f"{source}: no images found ({', '.join(IMAGE_EXTS)})")
    for i, f in enumerate(files):
        yield i, read_rgb(f), f.name if source.is_file() else f.relative_to(source).as_posix()


def video_frames(source: str, opts: PredictOptions,
                 opener: Callable[[str], cv2.VideoCapture] = open_capture) -> Iterator[tuple[int, np.ndarray, str]]:
    """(frame index, RGB, name) of every ``opts.every``-th frame. A file ends at its last frame; a live stream that
    stops delivering is reopened up to ``opts.reconnect`` times (frames keep counting), then stops in one line."""
    live = is_stream(source)
    cap = opener(source)
    if not cap.isOpened():
        raise DataError(f"{source}: cannot open " + ("the stream (URL, credentials, camera index?)" if live else
                                                     "the video (not a video, unsupported codec or corrupt)"))
    i, tries = 0, 0
    try:
        while True:
            ok, bgr = cap.read() if i % opts.every == 0 else (cap.grab(), None)
            if not ok:
                if not live:
                    return
                if tries >= opts.reconnect:
                    raise DataError(f"{source}: the stream stopped delivering frames at frame {i}; gave up after "
                                    f"{opts.reconnect} reconnect(s)")
                tries += 1
                log.warning(f"{source}: no frame, reconnecting ({tries}/{opts.reconnect})")
                cap.release()
                time.sleep(opts.reconnect_wait)
                cap = opener(source)
                continue
            tries = 0
            if bgr is not None:
                yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"frame_{i:06d}"
            i += 1
    finally:
        cap.release()


# --- drawing -------------------------------------------------------------------------------------------------------

def draw(rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, names: list[str]) -> np.ndarray:
    """A BGR copy of the frame with one labelled box per detection (line width scales with the frame)."""
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    lw = max(1, round(sum(img.shape[:2]) / 900))
    for (x1, y1, x2, y2), s, k in zip(boxes.round().astype(int).tolist(), scores.tolist(), labels.tolist()):
        color = PALETTE[k % len(PALETTE)]
        cv2.rectangle(img, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        text = f"{names[k]} {s:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, lw / 3, max(lw - 1, 1))
        y_text = y1 - 2 if y1 - th - 4 >= 0 else y1 + th + 2  # label inside the box at the top edge
        cv2.rectangle(img, (x1, y_text - th - 2), (x1 + tw + 2, y_text + 2), color, -1)
        cv2.putText(img, text, (x1 + 1, y_text), cv2.FONT_HERSHEY_SIMPLEX, lw / 3, (255, 255, 255),
                    max(lw - 1, 1), cv2.LINE_AA)
    return img


# --- the run -------------------------------------------------------------------------------------------------------

def detect(model, rgb: np.ndarray, imgsz: int, opts: PredictOptions, keep: set[int] | None, device: str):
    """One frame -> (boxes (n, 4) xyxy frame pixels, scores (n,), labels (n,)) as numpy."""
    boxed, r, pad = letterbox(rgb, imgsz)  # (S, S, 3)
    x = torch.from_numpy(boxed).to(device).permute(2, 0, 1)[None].float() / 255  # (1, 3, S, S)
    p = model.predict(x, conf=opts.conf, iou=opts.iou, max_det=opts.max_det)[0]
    boxes = unletterbox_boxes(p["boxes"].detach().cpu().double().numpy().reshape(-1, 4), r, pad)  # (n, 4)
    h, w = rgb.shape[:2]
    boxes = np.clip(boxes, 0, [w, h, w, h])
    scores = p["scores"].detach().cpu().float().numpy().reshape(-1)
    labels = p["labels"].detach().cpu().numpy().astype(np.int64).reshape(-1)
    if keep is not None:
        m = np.isin(labels, list(keep))
        boxes, scores, labels = boxes[m], scores[m], labels[m]
    return boxes, scores, labels


def coco_entries(boxes, scores, labels, image_id: int, extra: dict) -> list[dict]:
    """COCO results entries (category_id = class index + 1, as cvkd's COCO files number them)."""
    return [{"image_id": image_id, "category_id": int(k) + 1, "bbox": [round(x1, 2), round(y1, 2),
             round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(float(s), 5), **extra}
            for (x1, y1, x2, y2), s, k in zip(boxes.tolist(), scores.tolist(), labels.tolist())]


def predict(model_path: str | Path, source: str | Path, out_dir: str | Path | None, opts: PredictOptions | None = None,
            progress: bool = True, opener: Callable[[str], cv2.VideoCapture] = open_capture) -> PredictResult:
    """Run a model over a source; writes ``out_dir/predictions.json`` and the annotated images or video."""
    from tqdm import tqdm

    opts = opts or PredictOptions()
    if opts.every < 1:
        raise DataError(f"--every must be >= 1, got {opts.every}")
    device = _device(opts.device)
    model = load_predictor(model_path, device, opts.threads)
    if opts.e2e_nms:
        model.e2e_nms = True
    names = list(model.class_names)
    imgsz = opts.imgsz or model.imgsz or 640
    if model.imgsz and opts.imgsz and opts.imgsz != model.imgsz and Path(model_path).suffix in (".onnx", ".xml"):
        raise DataError(f"{model_path}: exported for imgsz {model.imgsz}, --imgsz {opts.imgsz} given")
    if imgsz % 32:
        raise DataError(f"--imgsz must be a multiple of 32, got {imgsz}")
    keep = class_filter(opts.classes, names)
    src = str(source)
    video = is_stream(src) or (Path(src).is_file() and Path(src).suffix.lower() not in IMAGE_EXTS)
    if not video and not Path(src).exists():
        raise DataError(f"source {src} not found (an image, a folder, a video file, a stream URL or a webcam index)")
    frames = video_frames(src, opts, opener) if video else image_frames(Path(src))
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    result, writer = PredictResult([], 0), None
    t_start = time.perf_counter()
    bar = tqdm(frames, desc="predict", unit="frame", disable=not progress, mininterval=1)
    try:
        for i, rgb, name in bar:
            t0 = time.perf_counter()
            boxes, scores, labels = detect(model, rgb, imgsz, opts, keep, device)
            result.latency_ms.append((time.perf_counter() - t0) * 1000)
            result.frames += 1
            extra = {"frame": i} if video else {"file_name": name}
            result.predictions.extend(coco_entries(boxes, scores, labels, result.frames, extra))
            if out and opts.annotate:
                img = draw(rgb, boxes, scores, labels, names)
                if video:
                    if writer is None:
                        writer, path = _video_writer(out, src, img.shape[1], img.shape[0], opts.every, opener)
                        result.outputs.append(path)
                    writer.write(img)
                else:
                    dst = out / name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(dst), img)
                    result.outputs.append(dst)
            if opts.max_frames and result.frames >= opts.max_frames:
                break
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        bar.close()
        if writer is not None:
            writer.release()
    result.wall_s = time.perf_counter() - t_start
    if out:
        (out / "predictions.json").write_text(json.dumps(result.predictions))
        result.outputs.append(out / "predictions.json")
    return result


def _device(name: str) -> str:
    from ..runs import pick_device

    return str(pick_device(name, key="--device"))


def _video_writer(out: Path, source: str, w: int, h: int, every: int, opener) -> tuple[cv2.VideoWriter, Path]:
    """An MP4 (mp4v) writer at the source's frame rate divided by ``every`` (25 FPS when the source does not say)."""
    fps = 0.0
    if not is_stream(source):
        cap = opener(source)
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        cap.release()
    fps = (fps if 0 < fps < 1000 else 25.0) / every
    stem = "webcam" + source if source.isdigit() else Path(source.split("?")[0]).stem or "stream"
    path = out / f"{stem}_annotated.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise DataError(f"{path}: OpenCV cannot write an MP4 video here")
    return writer, path
