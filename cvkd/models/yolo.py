"""Ultralytics YOLO (v8, 11, 26) adapter: dense class logits, DFL bins, decoded boxes, neck features.

Builds on the training-mode output of ultralytics 8.4's ``Detect`` head (a dict of ``boxes`` (B, 4*R, A), ``scores``
(B, K, A) and ``feats``) and reuses ultralytics' task-aligned assigner and detection loss for the student's own loss.

YOLO26 (``yolo26n.yaml``, ...) has an end-to-end head: no DFL (``reg_max`` 1, boxes are l/t/r/b distances, L1 + IoU
loss) and a one-to-one branch beside the one-to-many one, computed on detached neck features in training, so only
the one-to-many branch shapes the neck. Its loss is ultralytics' end-to-end loss: the one-to-many branch assigned
top-10, the one-to-one top-7 then top-1, weighted ``w`` and ``1 - w`` with ``w`` decaying linearly from 0.8 to 0.1
over the epochs (ultralytics' ``E2ELoss``). Prediction is NMS-free: the top ``max_det`` (anchor, class) scores of the
one-to-one branch, as deployed (``e2e_nms=True``: the one-to-many branch with NMS instead, as ultralytics also reports).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no version checks, no downloads

import torch
from torch import Tensor, nn

from ..losses import dfl_expectation
from .base import Assignment, DetectorAdapter, DetOutputs, ModelError
from .registry import register_family

# ultralytics' default loss gains (box, cls, dfl; YOLO26's L1 term takes the dfl gain) the loss reads
LOSS_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
E2E_O2M_START, E2E_O2M_END = 0.8, 0.1  # one-to-many weight of the end-to-end loss, first and last epoch


def e2e_one2many_weight(epoch: int, epochs: int) -> float:
    """ultralytics' E2ELoss decay: 0.8 at epoch 0, linear to 0.1 at the last epoch."""
    return max(1 - epoch / max(epochs - 1, 1), 0) * (E2E_O2M_START - E2E_O2M_END) + E2E_O2M_END


def _ultralytics():
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import v8DetectionLoss
    from ultralytics.utils.tal import make_anchors

    return DetectionModel, v8DetectionLoss, make_anchors


def _arch_from_name(name: str, width: float | None = None, depth: float | None = None):
    """``yolov8n.yaml`` -> the ultralytics model dict, optionally with custom width/depth multipliers."""
    from ultralytics.nn.tasks import yaml_model_load

    try:
        cfg = yaml_model_load(name)
    except FileNotFoundError:
        raise ModelError(f"unknown YOLO architecture '{name}' (expected e.g. yolov8n.yaml, yolo11s.yaml)") from None
    if width is not None or depth is not None:
        scale = cfg.get("scale") or next(iter(cfg.get("scales", {"n": [0.33, 0.25, 1024]})))
        d0, w0, max_ch = cfg["scales"][scale]
        cfg["scales"] = {scale: [depth if depth is not None else d0, width if width is not None else w0, max_ch]}
    return cfg


def fold_conv_batchnorm(model: nn.Module) -> int:
    """Fold the BatchNorm of every ultralytics ``Conv``/``DWConv`` into its convolution with the running statistics,
    in place; the count. The folded convolution keeps its weight's ``requires_grad``: a frozen teacher stays frozen,
    a QAT student trains the folded weights (what its INT8 export runs)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights
    from ultralytics.nn.modules.conv import Conv, DWConv

    folded = 0
    for m in model.modules():
        # exactly act(bn(conv(x))): subclasses such as Conv2 add a branch before the BN and must stay unfolded
        if type(m) in (Conv, DWConv) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d):
            conv, bn = m.conv, m.bn
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True).to(conv.weight)
            fused.weight, fused.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                            bn.eps, bn.weight, bn.bias)
            fused.bias.requires_grad_(conv.weight.requires_grad)  # a conv without bias gets a fresh, frozen one
            # ultralytics' own convention for a fused Conv (no bn, forward_fuse): its fuse() then leaves it alone
            m.conv = fused
            delattr(m, "bn")
            m.forward = m.forward_fuse
            folded += 1
    return folded


@register_family("yolo", matches=lambda name: name.startswith("yolo"), example="yolov8n.yaml, yolo11s.yaml")
class YoloAdapter(DetectorAdapter):
    family = "yolo"
    teacher_assignment = True  # loss(assign_from=): its assigner can score a teacher's predictions

    def __init__(self, model, class_names: list[str], arch: str | dict):
        super().__init__()
        head = model.model[-1]
        if head.nc != len(class_names):
            raise ModelError(f"model has {head.nc} classes but the class list has {len(class_names)}: {class_names}")
        model.args = SimpleNamespace(**LOSS_GAINS)
        self.model = model
        self.arch = arch
        self.class_names = list(class_names)
        self.strides = [int(s) for s in head.stride.tolist()]
        self.reg_max = int(head.reg_max) if head.reg_max > 1 else None  # None: l/t/r/b distances, no DFL bins
        self.end2end = getattr(head, "one2one_cv2", None) is not None  # YOLO26: a one-to-one branch too
        self.e2e_nms = False  # end-to-end heads: predict with the one-to-many branch + NMS instead of one-to-one top-k
        self.one2many_weight = E2E_O2M_START
        self._criteria: dict[str, object] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_name(
        cls, name: str, class_names: list[str], width: float | None = None, depth: float | None = None
    ) -> "YoloAdapter":
        DetectionModel, _, _ = _ultralytics()
        cfg = _arch_from_name(name, width, depth)
        model = DetectionModel(cfg, nc=len(class_names), verbose=False)
        arch = {"name": name, "width": width, "depth": depth}
        return cls(model, class_names, arch)

    @classmethod
    def from_ultralytics_checkpoint(cls, path: str | Path) -> "YoloAdapter":
        """Load an ultralytics ``.pt`` (``ema`` weights if present, else ``model``)."""
        from ..checkpoint import CheckpointError, torch_load

        try:
            ck = torch_load(path)  # allowlisted unpickling: never runs code from the file
        except CheckpointError as e:
            raise ModelError(str(e)) from None
        model = (ck.get("ema") or ck.get("model")) if isinstance(ck, dict) else None
        if model is None or type(model).__name__ != "DetectionModel":
            raise ModelError(f"{path}: not an ultralytics detection checkpoint (got {type(model).__name__})")
        names = model.names if isinstance(model.names, list) else [model.names[i] for i in sorted(model.names)]
        arch = {"name": model.yaml.get("yaml_file", "yolo"), "yaml": model.yaml}
        adapter = cls(model.float(), names, arch)
        imgsz = (ck.get("train_args") or {}).get("imgsz")
        adapter.imgsz = imgsz if isinstance(imgsz, int) else None
        return adapter

    def arch_spec(self) -> dict:
        """What is needed to rebuild the network before loading a state dict."""
        return dict(self.arch) if isinstance(self.arch, dict) else {"name": self.arch}

    @classmethod
    def from_spec(cls, spec: dict, class_names: list[str]) -> "YoloAdapter":
        if "yaml" in spec:  # an architecture that came from an ultralytics checkpoint
            DetectionModel, _, _ = _ultralytics()
            model = DetectionModel(dict(spec["yaml"]), nc=len(class_names), verbose=False)
            return cls(model, class_names, spec)
        return cls.from_name(spec["name"], class_names, spec.get("width"), spec.get("depth"))

    def fold_batchnorm(self) -> int:
        if self.training:
            raise ModelError("fold_batchnorm is for a frozen model in eval mode (the BN statistics must not move)")
        return fold_conv_batchnorm(self.model)

    # ------------------------------------------------------------------ forward
    def _decode(self, branch: dict, anchor_points: Tensor, stride_t: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """One head branch -> class logits (B, A, K), DFL bins (B, A, 4, R) or None, xyxy boxes (B, A, 4) pixels."""
        B = branch["scores"].shape[0]
        cls_logits = branch["scores"].permute(0, 2, 1)  # (B, A, K)
        if self.reg_max:
            bins = branch["boxes"].permute(0, 2, 1).reshape(B, -1, 4, self.reg_max)  # (B, A, 4, R)
            dist = dfl_expectation(bins)  # (B, A, 4) ltrb in grid units
        else:
            bins, dist = None, branch["boxes"].permute(0, 2, 1)  # (B, A, 4) ltrb in grid units, directly
        lt, rb = dist[..., :2], dist[..., 2:]
        boxes = torch.cat([anchor_points - lt, anchor_points + rb], -1) * stride_t  # (B, A, 4) xyxy pixels
        return cls_logits, bins, boxes

    def forward(self, img: Tensor) -> DetOutputs:
        _, _, make_anchors = _ultralytics()
        preds = self.model(img)
        preds = preds[1] if isinstance(preds, tuple) else preds  # eval mode returns (decoded, raw dict)
        o2m = preds["one2many"] if self.end2end else preds
        feats = o2m["feats"]
        anchor_points, stride_t = make_anchors(feats, self.model.model[-1].stride, 0.5)  # (A, 2) grid units, (A, 1)
        cls_logits, bins, boxes = self._decode(o2m, anchor_points, stride_t)
        cls_o2o = boxes_o2o = None
        if self.end2end:
            cls_o2o, _, boxes_o2o = self._decode(preds["one2one"], anchor_points, stride_t)
        return DetOutputs(
            feats=list(feats),
            strides=self.strides,
            cls_logits=cls_logits,
            box_bins=bins,
            boxes=boxes,
            anchors=anchor_points * stride_t,
            anchor_strides=stride_t.squeeze(1),
            raw=preds,
            cls_logits_o2o=cls_o2o,
            boxes_o2o=boxes_o2o,
        )

    # ------------------------------------------------------------------ loss
    def _criterion(self, branch: str, device: torch.device):
        """ultralytics' v8 loss for one branch: top-10 assignment (one-to-many), top-7 then top-1 (one-to-one)."""
        crit = self._criteria.get(branch)
        if crit is None or crit.device != device:
            _, v8DetectionLoss, _ = _ultralytics()
            crit = v8DetectionLoss(self.model, tal_topk=10) if branch == "one2many" else \
                v8DetectionLoss(self.model, tal_topk=7, tal_topk2=1)
            self._criteria[branch] = crit
        return crit

    def _branch_loss(self, branch: str, raw: dict, ul_batch: dict, sum_across,
                     assign_from: DetOutputs | None = None) -> tuple[Tensor, tuple]:
        """Gain-scaled (box, cls, dfl|l1) of one branch, per image; under torchrun normalised over the global batch.
        ``assign_from``: the assigner scores those outputs' class probabilities and pixel boxes instead of this
        branch's own (its first two arguments; the loss is still this branch's against what it assigns)."""
        crit = self._criterion(branch, ul_batch["bboxes"].device)
        captured: dict = {}
        hooks = [crit.assigner.register_forward_hook(lambda m, i, o: captured.update(scores=o[2]))]
        if assign_from is not None:
            def other_predictions(module, args):
                scores, boxes = args[0], args[1]  # (B, A, K) probabilities, (B, A, 4) xyxy pixels
                scores_o = assign_from.cls_logits.detach().float().sigmoid().to(scores.dtype)
                boxes_o = assign_from.boxes.detach().to(boxes.dtype)
                if scores_o.shape != scores.shape or boxes_o.shape != boxes.shape:
                    raise ModelError(f"assign_from: outputs {tuple(scores_o.shape)} / {tuple(boxes_o.shape)} do not "
                                     f"match the student's anchors {tuple(scores.shape)} / {tuple(boxes.shape)}")
                return (scores_o, boxes_o, *args[2:])

            hooks.append(crit.assigner.register_forward_pre_hook(other_predictions))
        try:
            assigned, parts, _ = crit.get_assigned_targets_and_loss(raw, ul_batch)
        finally:
            for hook in hooks:
                hook.remove()
        if sum_across is not None:  # several processes: normalise like one process over the global batch would
            norm_local = captured["scores"].detach().sum()  # ultralytics' per-batch normaliser (clamped at 1)
            parts = parts * norm_local.clamp(min=1) / sum_across(norm_local).clamp(min=1)  # this process's share
        return parts, assigned

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.one2many_weight = e2e_one2many_weight(epoch, epochs)

    def loss(self, out: DetOutputs, batch: dict, sum_across: Callable[[Tensor], Tensor] | None = None,
             assign_from: DetOutputs | None = None) -> tuple[Tensor, dict[str, float], Assignment]:
        """ultralytics' v8 detection loss (TAL assigner, BCE + CIoU + DFL), summed and scaled by batch size as in
        ultralytics' trainer; for end-to-end heads its E2E loss (both branches, weighted by ``one2many_weight``).
        The assignment (what KD terms use) is the one-to-many branch's. ``assign_from`` (a teacher's outputs on the
        same anchors): the one-to-many assignment scores its predictions (label assignment distillation); the
        one-to-one branch keeps its own."""
        H, W = out.feats[0].shape[2] * self.strides[0], out.feats[0].shape[3] * self.strides[0]
        xyxy = batch["bboxes"].to(out.cls_logits.device).float()  # (M, 4) input pixels
        xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        norm = xywh / xywh.new_tensor([W, H, W, H])
        ul_batch = {"batch_idx": batch["batch_idx"].to(norm.device), "cls": batch["cls"].to(norm.device),
                    "bboxes": norm}
        raw = out.raw["one2many"] if self.end2end else out.raw
        parts, (fg_mask, _, target_boxes, _, _) = self._branch_loss("one2many", raw, ul_batch, sum_across, assign_from)
        if self.end2end:
            parts_o2o, _ = self._branch_loss("one2one", out.raw["one2one"], ul_batch, sum_across)
            parts = parts * self.one2many_weight + parts_o2o * (1 - self.one2many_weight)
        B = out.cls_logits.shape[0]
        if sum_across is not None:
            B = int(sum_across(torch.tensor(float(B), device=parts.device)))
        total = parts.sum() * B
        p = parts.detach()
        items = {"box": float(p[0]), "cls": float(p[1]), "dfl" if self.reg_max else "l1": float(p[2])}
        return total, items, Assignment(fg_mask=fg_mask.bool(), target_boxes=target_boxes)

    @torch.no_grad()
    def predict(self, img: Tensor, conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                out: DetOutputs | None = None) -> list[dict[str, Tensor]]:
        """End-to-end heads: NMS-free, the top ``max_det`` (anchor, class) scores of the one-to-one branch above
        ``conf`` (``iou`` unused); other heads, or ``e2e_nms``: :meth:`DetectorAdapter.predict` (class-aware NMS)."""
        out = out if out is not None else self(img)
        if not self.end2end or self.e2e_nms:
            return super().predict(img, conf, iou, max_det, out)
        scores_all = out.cls_logits_o2o.float().sigmoid()  # (B, A, K)
        A, K = scores_all.shape[1:]
        k = min(max_det, A)
        results = []
        for b in range(scores_all.shape[0]):
            top_anchors = scores_all[b].amax(-1).topk(k).indices  # (k,) the k most confident anchors
            scores, flat = scores_all[b, top_anchors].flatten().topk(k)  # (k,) over their k*K (anchor, class) pairs
            anchor_idx, labels = top_anchors[flat // K], flat % K
            keep = scores > conf
            results.append({"boxes": out.boxes_o2o[b, anchor_idx[keep]].float(), "scores": scores[keep],
                            "labels": labels[keep]})
        return results
