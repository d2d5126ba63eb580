"""torchvision Faster R-CNN as a cvkd detector: trainable with ``cvkd train``, and a *teacher* for dense students.

Faster R-CNN's predictions are not dense: its RPN scores anchors, then its ROI head classifies a few hundred
proposals. The dense KD terms need one class score and one box per student anchor, so this adapter renders them from
its final detections (prediction-level distillation, as in the pseudo-box/score methods that distil two-stage
teachers into one-stage students). At every cell of every FPN level, the class-k score is the highest score of a
class-k detection whose box holds the cell centre within ``CENTER_RADIUS`` strides of the box centre (YOLOX's centre
prior), and the cell's box is the box of its best detection. What a student can learn from it:

- feature hints on the FPN maps P3-P5 (strides 8, 16, 32) through the distiller's 1x1 adapters (``kd.feature``);
- logit KD against the rendered score map, a dense soft pseudo-label (``kd.logit``; background cells target ~0);
- box KD by IoU imitation of the rendered boxes (``kd.box_loss=iou`` or ``bounded``; there are no DFL bins, so LD is
  refused), weighted by the rendered score;
- hard pseudo-labels offline (``cvkd pseudo-label``): ``predict()`` returns the ROI head's detections.

It cannot be a distillation *student* (its training outputs are sampled proposals, not a dense map).

Names: ``fasterrcnn_<backbone>_fpn`` (also with a ``torchvision:`` prefix), backbone one of resnet18/34/50,
mobilenet_v3_small/large, random weights (nothing is downloaded). As in ``torchvision_det.py``, torchvision's
resizing transform is bypassed: the letterboxed batch is normalised here and fed at its own size, so P3-P5 are the
YOLO grids. FPN levels P3-P5 plus a max-pooled P6 (stride 64); anchors of 2 sizes (2 and 4 strides) x 3 ratios.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .base import Assignment, DetectorAdapter, DetOutputs, ModelError
from .registry import register_family
from .torchvision_det import (
    BACKBONES,
    cell_centres,
    fpn_backbone,
    fpn_width,
    is_rcnn_name,
    register_imagenet_norm,
)

STRIDES = [8, 16, 32, 64]  # P3-P5 from the FPN, P6 = max-pool of P5
CENTER_RADIUS = 2.5  # a detection paints the cells within this many strides of its centre (and inside its box)
EPS = 1e-4  # rendered scores are clamped to [EPS, 1 - EPS] before the logit


def parse_name(name: str) -> str:
    """``[torchvision:]fasterrcnn_<backbone>_fpn`` -> ``<backbone>``; one-line error otherwise."""
    arch = name.split(":", 1)[1] if name.startswith("torchvision:") else name
    backbone = arch[len("fasterrcnn_"):-len("_fpn")] if arch.startswith("fasterrcnn_") and arch.endswith("_fpn") else ""
    if backbone not in BACKBONES:
        choices = ", ".join(f"fasterrcnn_{b}_fpn" for b in BACKBONES)
        raise ModelError(f"unknown Faster R-CNN '{name}': expected one of {choices}")
    return backbone


def render_dense(
    dets: list[dict[str, Tensor]], points: Tensor, strides: Tensor, num_classes: int, radius: float = CENTER_RADIUS
) -> tuple[Tensor, Tensor]:
    """Dense (score, box) targets from sparse detections.

    Args: dets per image ``boxes`` (n, 4) xyxy, ``scores`` (n,), ``labels`` (n,) in [0, K); points (A, 2) cell
    centres; strides (A,). Returns scores (B, A, K) in [0, 1] (0 where no detection paints the cell) and boxes
    (B, A, 4): the best painting detection's box, or the cell itself (side = stride) where none does.
    """
    B, A = len(dets), points.shape[0]
    scores = points.new_zeros(B, A, num_classes)  # (B, A, K)
    own = torch.cat([points - strides[:, None] / 2, points + strides[:, None] / 2], 1)  # (A, 4)
    boxes = own[None].repeat(B, 1, 1)  # (B, A, 4)
    for b, d in enumerate(dets):
        if d["boxes"].numel() == 0:
            continue
        box, score = d["boxes"].float(), d["scores"].float()  # (n, 4), (n,)
        x, y = points[:, 0:1], points[:, 1:2]  # (A, 1)
        inside = (x > box[None, :, 0]) & (x < box[None, :, 2]) & (y > box[None, :, 1]) & (y < box[None, :, 3])
        centre = (box[:, :2] + box[:, 2:]) / 2  # (n, 2)
        near = (points[:, None] - centre[None]).abs().amax(2) < radius * strides[:, None]  # (A, n)
        painted = (inside & near).float() * score[None]  # (A, n)
        onehot = torch.nn.functional.one_hot(d["labels"].long(), num_classes).float()  # (n, K)
        scores[b] = (painted[:, :, None] * onehot[None]).amax(1)  # (A, K)
        best, idx = painted.max(1)  # (A,)
        boxes[b] = torch.where(best[:, None] > 0, box[idx], own)
    return scores, boxes


@register_family("rcnn", matches=is_rcnn_name, example="fasterrcnn_resnet50_fpn")
class RcnnAdapter(DetectorAdapter):
    """torchvision Faster R-CNN; ``.model`` is the ``torchvision.models.detection.FasterRCNN`` holding every weight."""

    family = "rcnn"
    reg_max = None  # no DFL bins
    dense_student = False  # refused as a KD student by the distiller
    bf16_teacher = False  # bf16 flips which proposals survive top-k/NMS, so rendered scores jump

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
    ) -> RcnnAdapter:
        backbone = parse_name(name)
        channels = fpn_width(name, width, depth)
        anchors = AnchorGenerator(sizes=tuple((2 * s, 4 * s) for s in STRIDES), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
        model = torchvision.models.detection.FasterRCNN(
            fpn_backbone(backbone, channels, LastLevelMaxPool()), num_classes=len(class_names) + 1,  # + background
            rpn_anchor_generator=anchors, box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
            rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500, rpn_pre_nms_top_n_test=1000,
            rpn_post_nms_top_n_test=300, box_batch_size_per_image=256, box_score_thresh=0.001,
            box_detections_per_img=300)
        return cls(model, class_names, {"name": f"fasterrcnn_{backbone}_fpn", "width": width})

    def arch_spec(self) -> dict:
        return dict(self.arch)

    @classmethod
    def from_spec(cls, spec: dict, class_names: list[str]) -> RcnnAdapter:
        return cls.from_name(spec["name"], class_names, spec.get("width"))

    def forward(self, img: Tensor) -> DetOutputs:  # img (B, 3, S, S) RGB in [0, 1]
        x = (img - self.mean) / self.std  # (B, 3, S, S)
        maps = self.model.backbone(x)  # OrderedDict of 4 x (B, C, S/s, S/s)
        feats = list(maps.values())
        images = ImageList(x, [tuple(x.shape[-2:])] * x.shape[0])
        dets = [{"boxes": x.new_zeros(0, 4), "scores": x.new_zeros(0), "labels": x.new_zeros(0, dtype=torch.long)}
                for _ in range(x.shape[0])]
        if not self.training:  # training runs RPN/ROI with targets in loss(); inference runs them here
            proposals, _ = self.model.rpn(images, maps)
            raw_dets, _ = self.model.roi_heads(maps, proposals, images.image_sizes)
            dets = [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in raw_dets]
        points, strides = cell_centres([f.shape[-2:] for f in feats], self.strides, x.device)  # (A, 2), (A,)
        scores, boxes = render_dense(dets, points, strides, self.num_classes)  # (B, A, K), (B, A, 4)
        p = scores.clamp(EPS, 1 - EPS)
        return DetOutputs(feats=feats, strides=self.strides, cls_logits=torch.log(p) - torch.log1p(-p), box_bins=None,
                          boxes=boxes, anchors=points, anchor_strides=strides,
                          raw={"maps": maps, "images": images, "detections": dets})

    def loss(self, out: DetOutputs, batch: dict, sum_across: Callable[[Tensor], Tensor] | None = None,
             assign_from: DetOutputs | None = None) -> tuple[Tensor, dict[str, float], Assignment]:
        """torchvision's Faster R-CNN losses (RPN objectness + box, ROI classifier + box), summed and scaled by the
        batch size like the other adapters. There is no dense assignment: the returned one is all background."""
        if assign_from is not None:
            raise ModelError(f"a {self.family} student assigns its own labels (kd.assign=teacher is for YOLO students)")
        if not self.training:
            raise ModelError("Faster R-CNN loss needs train mode (RPN/ROI sampling)")
        B = out.feats[0].shape[0]
        dev = out.feats[0].device
        boxes = batch["bboxes"].to(dev).float()  # (M, 4) xyxy input pixels
        labels = batch["cls"].to(dev).long().view(-1) + 1  # (M,), 0 is torchvision's background
        bidx = batch["batch_idx"].to(dev).long().view(-1)  # (M,)
        targets = [{"boxes": boxes[bidx == b], "labels": labels[bidx == b]} for b in range(B)]
        proposals, rpn = self.model.rpn(out.raw["images"], out.raw["maps"], targets)
        _, roi = self.model.roi_heads(out.raw["maps"], proposals, out.raw["images"].image_sizes, targets)
        parts = {**rpn, **roi}
        total = sum(parts.values()) * B
        p = {k: float(v.detach()) for k, v in parts.items()}
        items = {"rpn_obj": p["loss_objectness"], "rpn_box": p["loss_rpn_box_reg"],
                 "cls": p["loss_classifier"], "box": p["loss_box_reg"]}
        A = out.cls_logits.shape[1]
        return total, items, Assignment(fg_mask=torch.zeros(B, A, dtype=torch.bool, device=dev),
                                        target_boxes=out.boxes.new_zeros(B, A, 4))

    @torch.no_grad()
    def predict(
        self, img: Tensor, conf: float = 0.001, iou: float = 0.7, max_det: int = 300, out: DetOutputs | None = None
    ) -> list[dict[str, Tensor]]:
        """The ROI head's detections (class-wise NMS at torchvision's 0.5 IoU inside the head) above ``conf``."""
        out = out if out is not None else self(img)
        results = []
        for d in out.raw["detections"]:
            keep = (d["scores"] > conf).nonzero().view(-1)[:max_det]
            results.append({"boxes": d["boxes"][keep], "scores": d["scores"][keep], "labels": d["labels"][keep]})
        return results
