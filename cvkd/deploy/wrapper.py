"""Export wrappers: small ``nn.Module``s over a YOLO adapter whose traced graph is clean ONNX.

``RawHead``: the per-level head outputs before DFL/decode, for NPU toolchains that add their own post-processing
(YOLO26: the one-to-many branch, l/t/r/b distances instead of DFL bins).
``FullHead``: decoded ``(1, A, 4 + K)`` = xyxy boxes in input pixels + per-class sigmoid scores, decode written in plain
ops for YOLO (softmax over bins, expectation, constant anchors; YOLO26: the one-to-many distances), other adapter
families traced through their own ``forward``; optionally class-aware NMS baked in (``(N, 6)`` rows ``x1, y1, x2, y2,
score, label``).
``E2EHead``: YOLO26's NMS-free output, ``(1, k, 6)`` rows of the top ``k = min(max_det, A)`` (anchor, class) scores of
the one-to-one branch, top-k inside the graph and no NMS op: what the camera runs.
"""
from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from ..models.base import DetectorAdapter
from .errors import ExportError

NMS_MAX_CANDIDATES = 30000  # as DetectorAdapter.predict: bound NMS work on (anchor, class) candidates


def anchor_grid(imgsz: int, strides: list[int]) -> tuple[Tensor, Tensor]:
    """Anchor centres in grid units (A, 2) and the stride of each anchor (A, 1), levels in ``strides`` order.

    Same order as the adapter: per level row-major over (H, W), x fastest; centre of cell (x, y) is (x + .5, y + .5).
    """
    points, per_anchor = [], []
    for s in strides:
        n = imgsz // s
        ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")  # (n, n) each
        points.append(torch.stack([xs, ys], -1).reshape(-1, 2))  # (n*n, 2)
        per_anchor.append(torch.full((n * n, 1), float(s)))  # (n*n, 1)
    return torch.cat(points).float(), torch.cat(per_anchor).float()


def head_inputs(det_model: nn.Module, x: Tensor) -> list[Tensor]:
    """Run an ultralytics DetectionModel up to its Detect head; returns the head's per-level inputs."""
    saved: list[Tensor | None] = []
    layers = list(det_model.model)
    for m in layers[:-1]:
        if m.f != -1:  # this layer reads earlier outputs
            x = saved[m.f] if isinstance(m.f, int) else [x if j == -1 else saved[j] for j in m.f]
        x = m(x)
        saved.append(x if m.i in det_model.save else None)
    return [x if j == -1 else saved[j] for j in layers[-1].f]


def distances_to_boxes(dist: Tensor, points: Tensor, strides: Tensor) -> Tensor:
    """(1, A, 4) l/t/r/b grid-unit distances -> (1, A, 4) xyxy input pixels, anchors (1, A, 2) and strides (1, A, 1)."""
    return torch.cat([points - dist[..., :2], points + dist[..., 2:]], 2) * strides


class RawHead(nn.Module):
    """img (1, 3, S, S) -> per level: box branch (1, 4R, H, W), class logits (1, K, H, W); order box_s8, cls_s8, ..."""

    def __init__(self, adapter: DetectorAdapter):
        super().__init__()
        if getattr(adapter, "family", None) != "yolo":
            raise ExportError(f"the raw variant is for YOLO heads only (family '{getattr(adapter, 'family', '?')}'): "
                              "export the full variant")
        self.model = adapter.model
        self.head = adapter.model.model[-1]

    def levels(self, img: Tensor) -> list[tuple[Tensor, Tensor]]:
        feats = head_inputs(self.model, img)  # per level (1, C_l, H_l, W_l)
        return [(self.head.cv2[i](f), self.head.cv3[i](f)) for i, f in enumerate(feats)]  # (1,4R,H,W), (1,K,H,W)

    def forward(self, img: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for pair in self.levels(img) for t in pair)


class FullHead(nn.Module):
    """img (1, 3, S, S) -> (1, A, 4 + K) decoded xyxy boxes in input pixels and sigmoid class scores.

    With ``nms=True``: (N, 6) rows ``x1, y1, x2, y2, score, label`` after the same multi-label, class-aware NMS as
    :meth:`DetectorAdapter.predict` (candidates above ``conf``, IoU ``iou``, at most ``max_det``).
    """

    def __init__(self, adapter: DetectorAdapter, imgsz: int, nms: bool = False, conf: float = 0.001,
                 iou: float = 0.7, max_det: int = 300):
        super().__init__()
        if not getattr(adapter, "dense_student", True):
            raise ExportError(f"a {adapter.family} model has no dense head to export (cvkd uses it as a teacher): "
                              "export the student")
        plain = getattr(adapter, "family", None) == "yolo"
        self.raw = RawHead(adapter) if plain else None
        self.adapter = None if plain else adapter  # other families: traced through their own forward()
        self.reg_max = int(getattr(adapter, "reg_max", None) or 0)
        self.num_classes = adapter.num_classes
        self.nms, self.conf, self.iou, self.max_det = nms, conf, iou, max_det
        points, strides = anchor_grid(imgsz, adapter.strides)
        self.register_buffer("anchor_points", points.unsqueeze(0))  # (1, A, 2) grid units
        self.register_buffer("anchor_strides", strides.unsqueeze(0))  # (1, A, 1)
        self.register_buffer("proj", torch.arange(self.reg_max, dtype=torch.float32).view(1, 1, self.reg_max, 1))

    def decode(self, img: Tensor) -> tuple[Tensor, Tensor]:
        """(1, A, 4) xyxy boxes in input pixels and (1, A, K) scores."""
        if self.raw is None:
            out = self.adapter(img)
            return out.boxes.float(), out.cls_logits.float().sigmoid()  # (1, A, 4), (1, A, K)
        levels = self.raw.levels(img)
        box_out = torch.cat([b.flatten(2) for b, _ in levels], 2)  # (1, 4R, A), or (1, 4, A) distances without DFL
        logits = torch.cat([c.flatten(2) for _, c in levels], 2)  # (1, K, A)
        if self.reg_max:
            bins = box_out.view(1, 4, self.reg_max, -1).softmax(2)  # (1, 4, R, A) probability per bin
            dist = (bins * self.proj).sum(2).transpose(1, 2)  # (1, A, 4) ltrb in grid units
        else:
            dist = box_out.transpose(1, 2)  # (1, A, 4) ltrb in grid units
        boxes = distances_to_boxes(dist, self.anchor_points, self.anchor_strides)  # (1, A, 4)
        return boxes, logits.sigmoid().transpose(1, 2)  # (1, A, 4), (1, A, K)

    def forward(self, img: Tensor) -> Tensor:
        boxes, scores = self.decode(img)
        if not self.nms:
            return torch.cat([boxes, scores], 2)  # (1, A, 4 + K)
        return self.baked_nms(boxes[0], scores[0])

    def baked_nms(self, boxes: Tensor, scores: Tensor) -> Tensor:
        """boxes (A, 4), scores (A, K) -> (N, 6); static top-k bound so the graph has no data-dependent sizes but N."""
        flat = scores.flatten()  # (A*K,) index = anchor * K + class
        if flat.shape[0] > NMS_MAX_CANDIDATES:
            flat, order = flat.topk(NMS_MAX_CANDIDATES)  # (C,)
        else:
            order = torch.arange(flat.shape[0], device=flat.device)  # (C,)
        keep = flat > self.conf
        vals, order = flat[keep], order[keep]  # (n,)
        anchor_idx, cls_idx = order // self.num_classes, order % self.num_classes  # (n,), (n,)
        cand = boxes[anchor_idx]  # (n, 4)
        kept = torchvision.ops.batched_nms(cand, vals, cls_idx, self.iou)[: self.max_det]  # (N,)
        return torch.cat([cand[kept], vals[kept, None], cls_idx[kept, None].float()], 1)  # (N, 6)


class E2EHead(nn.Module):
    """img (1, 3, S, S) -> (1, k, 6) rows ``x1, y1, x2, y2, score, label``: the one-to-one branch of a YOLO26 head,
    the k most confident anchors, then the top k of their (anchor, class) scores (as :meth:`YoloAdapter.predict`;
    rows are sorted by score and not thresholded: the camera applies its own confidence)."""

    def __init__(self, adapter: DetectorAdapter, imgsz: int, max_det: int = 300):
        super().__init__()
        if not getattr(adapter, "end2end", False):
            raise ExportError("the e2e variant (NMS-free one-to-one top-k) needs an end-to-end head (YOLO26); this "
                              "model has none: export the full variant (add --nms to bake NMS in)")
        self.model = adapter.model
        self.head = adapter.model.model[-1]
        self.num_classes = adapter.num_classes
        points, strides = anchor_grid(imgsz, adapter.strides)
        self.k = min(max_det, points.shape[0])
        self.register_buffer("anchor_points", points.unsqueeze(0))  # (1, A, 2) grid units
        self.register_buffer("anchor_strides", strides.unsqueeze(0))  # (1, A, 1)

    def forward(self, img: Tensor) -> Tensor:
        feats = head_inputs(self.model, img)  # per level (1, C_l, H_l, W_l)
        dist = torch.cat([self.head.one2one_cv2[i](f).flatten(2) for i, f in enumerate(feats)], 2)  # (1, 4, A)
        logits = torch.cat([self.head.one2one_cv3[i](f).flatten(2) for i, f in enumerate(feats)], 2)  # (1, K, A)
        boxes = distances_to_boxes(dist.transpose(1, 2), self.anchor_points, self.anchor_strides)  # (1, A, 4)
        scores = logits.sigmoid().transpose(1, 2)  # (1, A, K)
        top_anchors = scores.amax(-1).topk(self.k, dim=1).indices  # (1, k)
        cand = scores.gather(1, top_anchors[..., None].expand(-1, -1, self.num_classes))  # (1, k, K)
        vals, flat = cand.flatten(1).topk(self.k, dim=1)  # (1, k) over the k*K (anchor, class) pairs
        anchor_idx = top_anchors.gather(1, flat // self.num_classes)  # (1, k)
        labels = (flat % self.num_classes).float()  # (1, k)
        picked = boxes.gather(1, anchor_idx[..., None].expand(-1, -1, 4))  # (1, k, 4)
        return torch.cat([picked, vals[..., None], labels[..., None]], 2)  # (1, k, 6)
