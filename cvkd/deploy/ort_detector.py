"""An ONNX Runtime detector with the adapter interface, so one evaluator scores PyTorch FP32, ONNX FP32 and ONNX INT8.

:class:`OrtDetector` loads a ``full`` ONNX file written by :func:`export_onnx` (FP32 or INT8) and returns
:class:`DetOutputs`; its ``predict`` is :meth:`DetectorAdapter.predict` itself (same multi-label, class-aware NMS).
The ONNX scores are post-sigmoid, so they are handed over as ``logit(score)``: ``predict`` applies the sigmoid back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor

from ..models.base import DetectorAdapter, DetOutputs
from .errors import ExportError
from .onnx_export import read_metadata
from .wrapper import anchor_grid


def ort_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session: ``threads`` intra-op threads, one inter-op thread, all graph optimisations."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise ExportError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {first})") from None


class OrtDetector(DetectorAdapter):
    """A ``full`` cvkd ONNX file (FP32 or INT8) behind the adapter interface; batch 1 graphs, looped over the batch."""

    family = "onnx"

    def __init__(self, path: str | Path, threads: int = 1):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: ONNX file not found")
        try:
            meta = read_metadata(path)
        except Exception as e:  # not an ONNX protobuf
            raise ExportError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
        if meta.get("cvkd_variant") not in ("full", "e2e"):
            raise ExportError(f"{path}: needs a 'full' or 'e2e' cvkd ONNX export (decoded boxes + scores), got "
                              f"variant '{meta.get('cvkd_variant', 'none')}'")
        self.path, self.meta = path, meta
        self.class_names = list(meta["class_names"])
        self.strides = [int(s) for s in meta["strides"]]
        self.imgsz = int(meta["imgsz"])
        self.baked_nms = bool(meta.get("nms", False)) or meta["cvkd_variant"] == "e2e"  # rows, not dense outputs
        self.e2e = meta["cvkd_variant"] == "e2e"
        self.precision = str(meta.get("precision", "fp32"))
        self.session = ort_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        points, strides = anchor_grid(self.imgsz, self.strides)  # (A, 2) grid units, (A, 1)
        self.register_buffer("anchors", points * strides, persistent=False)  # (A, 2) input pixels
        self.register_buffer("anchor_strides", strides.squeeze(1), persistent=False)  # (A,)

    def run(self, img: Tensor) -> list[np.ndarray]:
        """The ONNX output of each image of ``img`` (B, 3, S, S)."""
        if img.ndim != 4 or tuple(img.shape[1:]) != (3, self.imgsz, self.imgsz):
            S = self.imgsz
            raise ExportError(f"{self.path.name} takes (B, 3, {S}, {S}) input, got {tuple(img.shape)}")
        x = img.detach().float().cpu().numpy()  # (B, 3, S, S)
        return [self.session.run(None, {self.input_name: x[b : b + 1]})[0] for b in range(x.shape[0])]

    def forward(self, img: Tensor) -> DetOutputs:  # img (B, 3, S, S) RGB in [0, 1]
        if self.baked_nms:
            raise ExportError(f"{self.path.name} has NMS baked in: it has no dense outputs, use predict()")
        out = torch.from_numpy(np.concatenate(self.run(img), 0))  # (B, A, 4 + K)
        scores = out[..., 4:]  # (B, A, K) in [0, 1]
        return DetOutputs(feats=[], strides=self.strides, cls_logits=torch.logit(scores), box_bins=None,
                          boxes=out[..., :4], anchors=self.anchors, anchor_strides=self.anchor_strides)

    @torch.no_grad()
    def predict(self, img: Tensor, conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                out: DetOutputs | None = None) -> list[dict[str, Tensor]]:
        """As :meth:`DetectorAdapter.predict`; with NMS baked in, the file's own conf/iou/max_det apply; an ``e2e``
        file's sorted top-k rows are cut at ``conf`` and ``max_det``."""
        if not self.baked_nms:
            return super().predict(img, conf, iou, max_det, out)
        results = []
        for det in self.run(img):
            d = torch.from_numpy(det).reshape(-1, 6)  # (N, 6) x1, y1, x2, y2, score, label
            if self.e2e:
                d = d[d[:, 4] > conf][:max_det]
            results.append({"boxes": d[:, :4], "scores": d[:, 4], "labels": d[:, 5].long()})
        return results


def model_size_mb(path: str | Path) -> float:
    """Size on disk of an ONNX file (plus its external data, if any) in MB (10^6 bytes)."""
    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    extra = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    total += sum((path.parent / f).stat().st_size for f in extra if (path.parent / f).is_file())
    return total / 1e6
