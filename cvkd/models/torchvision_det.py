"""torchvision FCOS as a cvkd detector: FPN features at strides 8..128, dense class scores, decoded boxes, own loss.

``fcos_resnet50_fpn`` (torchvision's architecture), ``fcos_resnet18_fpn``, ``fcos_resnet34_fpn``,
``fcos_mobilenet_v3_large_fpn`` and ``fcos_mobilenet_v3_small_fpn`` (also with a ``torchvision:`` prefix) build a
``torchvision.models.detection.FCOS`` with random weights (``weights=None, weights_backbone=None``, nothing is
downloaded). ``model.width`` multiplies the FPN/head width (256).

torchvision's ``GeneralizedRCNNTransform`` is bypassed: the letterboxed batch is normalised with ImageNet mean/std
here and fed to backbone + head at its own size, so the P3-P5 grids are the YOLO grids. Anchor points are cell
centres ``(i + 0.5) * stride`` (YOLO's and the FCOS paper's convention; torchvision's generator puts them at cell
corners), one per cell, row-major per level: anchor ``a`` of a level is the same cell in both families.

``cls_logits`` is the logit of FCOS's ranking score ``sqrt(sigmoid(cls) * sigmoid(centerness))`` (what torchvision's
FCOS thresholds and sorts by), the analogue of YOLO's IoU-aware class score: ``predict()`` and logit KD use it as is.
The raw head outputs are in ``raw["head"]``. There are no DFL bins (``box_bins`` is None, ``reg_max`` is None).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .base import Assignment, DetectorAdapter, DetOutputs, ModelError
from .registry import register_family

STRIDES = [8, 16, 32, 64, 128]  # P3-P5 from the FPN, P6-P7 from LastLevelP6P7
FPN_CHANNELS = 256  # at width=1.0; a multiple of 32 (the head's GroupNorm has 32 groups)
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREFIXES = ("torchvision:", "fcos", "retinanet", "ssd", "keypointrcnn", "maskrcnn")  # Faster R-CNN: rcnn_det.py


def is_rcnn_name(name: str) -> bool:
    """A torchvision Faster R-CNN name (the rcnn family's, rcnn_det.py)."""
    return name.removeprefix("torchvision:").startswith("fasterrcnn")


def parse_name(name: str) -> str:
    """``[torchvision:]fcos_<backbone>_fpn`` -> ``<backbone>``; one-line errors for unsupported torchvision kinds."""
    arch = name.split(":", 1)[1] if name.startswith("torchvision:") else name
    if arch.startswith("retinanet"):
        raise ModelError("RetinaNet: not supported yet (9 anchors per cell do not align with YOLO's grid; use FCOS)")
    backbone = arch[len("fcos_"):-len("_fpn")] if arch.startswith("fcos_") and arch.endswith("_fpn") else ""
    if backbone not in BACKBONES:
        choices = ", ".join(f"fcos_{b}_fpn" for b in BACKBONES)
        raise ModelError(f"unknown torchvision detector '{name}': expected one of {choices}")
    return backbone


def _stage_ends(features: nn.Sequential) -> dict[str, str]:
    """Return layers of a strided ``nn.Sequential`` (MobileNet ``features``): the last child at stride 8, 16, 32."""
    x, last = torch.zeros(1, 3, 64, 64), {}
    features.eval()
    with torch.no_grad():
        for name, child in features.named_children():
            x = child(x)
            last[64 // x.shape[-1]] = name
    features.train()
    return {last[s]: str(i) for i, s in enumerate(STRIDES[:3])}


def fpn_backbone(backbone: str, channels: int, extra_blocks: nn.Module | None = None) -> nn.Module:
    """Backbone body + FPN over its stride-8/16/32 maps + ``extra_blocks`` (default P6/P7 convs, as torchvision's
    ``fcos_resnet50_fpn``; Faster R-CNN uses a max-pooled P6)."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    net = getattr(torchvision.models, backbone)(weights=None)  # random init, BatchNorm trainable
    if backbone.startswith("resnet"):
        body, return_layers = net, {"layer2": "0", "layer3": "1", "layer4": "2"}
    else:
        body = net.features
        return_layers = _stage_ends(body)
    with torch.no_grad():  # channels of the picked maps, from a throwaway getter that shares the modules
        maps = IntermediateLayerGetter(body, return_layers).eval()(torch.zeros(1, 3, 64, 64))
    body.train()
    in_channels = [m.shape[1] for m in maps.values()]
    extra_blocks = extra_blocks if extra_blocks is not None else LastLevelP6P7(channels, channels)
    return BackboneWithFPN(body, return_layers, in_channels, channels, extra_blocks=extra_blocks)


def fcos_match(anchors: Tensor, gt: Tensor, level_sizes: list[int], radius: float = 1.5) -> Tensor:
    """torchvision FCOS's anchor-to-GT rule (``FCOS.compute_loss``): centre sampling within ``radius`` strides, point
    inside the box, per-level scale range (4..8 anchor sizes, open at P3/P7), smallest box wins.

    Args: anchors (A, 4) xyxy, one square per cell of side = stride; gt (M, 4) xyxy. Returns (A,) GT index, -1 = bg.
    """
    if gt.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
    sizes = anchors[:, 2] - anchors[:, 0]  # (A,)
    gt_centres = (gt[:, :2] + gt[:, 2:]) / 2  # (M, 2)
    match = (centres[:, None] - gt_centres[None]).abs().amax(2) < radius * sizes[:, None]  # (A, M)
    x, y = centres[:, 0:1], centres[:, 1:2]  # (A, 1)
    dist = torch.stack([x - gt[None, :, 0], y - gt[None, :, 1], gt[None, :, 2] - x, gt[None, :, 3] - y], 2)  # (A, M, 4)
    match &= dist.amin(2) > 0
    lower, upper = sizes * 4, sizes * 8  # (A,)
    lower[: level_sizes[0]] = 0
    upper[-level_sizes[-1]:] = float("inf")
    far = dist.amax(2)  # (A, M)
    match &= (far > lower[:, None]) & (far < upper[:, None])
    areas = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])  # (M,)
    best, idx = (match.float() * (1e8 - areas[None])).max(1)  # (A,)
    idx[best < 1e-5] = -1
    return idx


def quality_logits(cls: Tensor, ctr: Tensor) -> Tensor:
    """``logit(sqrt(sigmoid(cls) * sigmoid(ctr)))`` computed in log space: (B, A, K), (B, A, 1) -> (B, A, K)."""
    logp = 0.5 * (F.logsigmoid(cls.float()) + F.logsigmoid(ctr.float()))  # (B, A, K) log score
    return logp - torch.log1p(-logp.exp().clamp(max=1 - 1e-6))


def fpn_width(name: str, width: float | None, depth: float | None) -> int:
    """FPN/head channels for ``model.width`` (a multiple of 32, at least 32); one-line errors for bad overrides."""
    if depth is not None:
        raise ModelError(f"model.depth does not apply to torchvision models ({name})")
    if width is not None and width <= 0:
        raise ModelError(f"model.width must be > 0, got {width}")
    return max(32, int(round(FPN_CHANNELS * (width or 1.0) / 32)) * 32)


def register_imagenet_norm(module: nn.Module) -> None:
    """``module.mean`` / ``module.std`` buffers (not saved): torchvision backbones expect ImageNet-normalised input."""
    module.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)


def cell_centres(shapes: list, strides: list[int], device=None) -> tuple[Tensor, Tensor]:
    """Cell centres ``(i + 0.5) * stride`` (A, 2) and their strides (A,), row-major per level (the YOLO order)."""
    points, per_anchor = [], []
    for (h, w), s in zip(shapes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        points.append((torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * s)  # (h*w, 2)
        per_anchor.append(torch.full((h * w,), float(s), device=device))  # (h*w,)
    return torch.cat(points), torch.cat(per_anchor)


@register_family("torchvision", matches=lambda name: name.startswith(PREFIXES) and not is_rcnn_name(name),
                 example="fcos_resnet50_fpn")
class TorchvisionAdapter(DetectorAdapter):
    """torchvision FCOS; ``.model`` is the ``torchvision.models.detection.FCOS`` holding every weight."""

    family = "torchvision"
    reg_max = None  # no DFL bins: LD is refused by the distiller, GIoU / bounded box KD work

    def __init__(self, model: nn.Module, class_names: list[str], arch: dict):
        super().__init__()
        self.model = model
        self.arch = arch
        self.class_names = list(class_names)
        self.strides = list(STRIDES)
        register_imagenet_norm(self)

    @classmethod
    def from_name(
        cls, name: str, class_names: list[str], width: float | None = None, depth: float | None = None
    ) -> "TorchvisionAdapter":
        backbone = parse_name(name)
        channels = fpn_width(name, width, depth)
        model = torchvision.models.detection.FCOS(fpn_backbone(backbone, channels), num_classes=len(class_names))
        return cls(model, class_names, {"name": f"fcos_{backbone}_fpn", "width": width})

    def arch_spec(self) -> dict:
        return dict(self.arch)

    @classmethod
    def from_spec(cls, spec: dict, class_names: list[str]) -> "TorchvisionAdapter":
        return cls.from_name(spec["name"], class_names, spec.get("width"))

    def forward(self, img: Tensor) -> DetOutputs:  # img (B, 3, S, S) RGB in [0, 1]
        feats = list(self.model.backbone((img - self.mean) / self.std).values())  # 5 x (B, C, S/s, S/s)
        head = self.model.head(feats)  # cls_logits (B, A, K), bbox_regression (B, A, 4) >= 0, bbox_ctrness (B, A, 1)
        points, strides = cell_centres([f.shape[-2:] for f in feats], self.strides, img.device)  # (A, 2), (A,)
        ltrb = head["bbox_regression"] * strides[None, :, None]  # (B, A, 4) pixels (anchor size = stride)
        boxes = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)  # (B, A, 4) xyxy pixels
        anchor_boxes = torch.cat([points - strides[:, None] / 2, points + strides[:, None] / 2], 1)  # (A, 4)
        return DetOutputs(
            feats=feats,
            strides=self.strides,
            cls_logits=quality_logits(head["cls_logits"], head["bbox_ctrness"]),
            box_bins=None,
            boxes=boxes,
            anchors=points,
            anchor_strides=strides,
            raw={"head": head, "anchor_boxes": anchor_boxes},
        )

    def loss(self, out: DetOutputs, batch: dict, sum_across: Callable[[Tensor], Tensor] | None = None,
             assign_from: DetOutputs | None = None) -> tuple[Tensor, dict[str, float], Assignment]:
        """torchvision's FCOS loss (focal + GIoU + centerness BCE, each over the foreground count), summed and scaled by
        the batch size like the YOLO loss; the assignment is FCOS's own anchor matching."""
        if assign_from is not None:
            raise ModelError(f"a {self.family} student assigns its own labels (kd.assign=teacher is for YOLO students)")
        dev = out.boxes.device
        B = out.boxes.shape[0]
        boxes = batch["bboxes"].to(dev).float()  # (M, 4) xyxy input pixels
        labels = batch["cls"].to(dev).long().view(-1)  # (M,)
        bidx = batch["batch_idx"].to(dev).long().view(-1)  # (M,)
        anchors = out.raw["anchor_boxes"]  # (A, 4)
        targets = [{"boxes": boxes[bidx == b], "labels": labels[bidx == b]} for b in range(B)]
        radius = float(self.model.center_sampling_radius)
        matched = [fcos_match(anchors, t["boxes"], out.level_sizes, radius) for t in targets]  # B x (A,)
        parts = self.model.head.compute_loss(targets, out.raw["head"], [anchors] * B, matched)
        total = (parts["classification"] + parts["bbox_regression"] + parts["bbox_ctrness"]) * B
        fg = torch.stack(matched) >= 0  # (B, A)
        target_boxes = torch.stack([
            t["boxes"][m.clamp(min=0)] if len(t["boxes"]) else anchors.new_zeros(anchors.shape)
            for t, m in zip(targets, matched)
        ]) * fg[..., None]  # (B, A, 4), zero on background
        p = {k: float(v.detach()) for k, v in parts.items()}
        items = {"cls": p["classification"], "box": p["bbox_regression"], "ctr": p["bbox_ctrness"]}
        return total, items, Assignment(fg_mask=fg, target_boxes=target_boxes)
