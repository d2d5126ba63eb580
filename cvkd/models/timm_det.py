"""timm backbones as camera students: any timm CNN + a light PAN neck + ultralytics' anchor-free ``Detect`` head.

``timm:<model_name>`` (e.g. ``timm:mobilenetv3_small_100``, ``timm:efficientnet_lite0``,
``timm:mobilenetv4_conv_small``) takes the backbone's feature maps at strides 8/16/32, maps them to one width with a
small top-down + bottom-up neck and runs YOLOv8's ``Detect`` head on them (DFL with reg_max 16). Outputs, anchors
(cell centres, row-major per level) and the loss (TAL assigner, BCE + CIoU + DFL) are exactly those of
:class:`~cvkd.models.yolo.YoloAdapter`, which this adapter subclasses: a YOLO teacher distils into it anchor for
anchor (logit, LD and feature KD). Weights are random; ``model.pretrained=`` loads ImageNet backbone weights
(:mod:`cvkd.models.pretrained`, offline unless asked).
"""
from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no version checks, no downloads

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from ultralytics.nn.modules import Conv
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.torch_utils import initialize_weights

from .base import ModelError
from .registry import register_family
from .yolo import YoloAdapter

STRIDES = (8, 16, 32)
NECK_CHANNELS = 96  # neck width at width=1.0; ``model.width`` multiplies it
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def neck_channels(width: float | None) -> int:
    """Neck width for a ``model.width`` multiplier (None = 1.0), a multiple of 8, at least 16."""
    w = 1.0 if width is None else float(width)
    if w <= 0:
        raise ModelError(f"model.width must be > 0 for timm models, got {width}")
    return max(16, int(round(NECK_CHANNELS * w / 8)) * 8)


def timm_backbone(model_name: str) -> tuple[nn.Module, list[int], list[int]]:
    """A randomly initialised timm feature extractor, the positions of its stride-8/16/32 outputs and their channels."""
    import timm

    try:
        body = timm.create_model(model_name, pretrained=False, features_only=True)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ModelError(f"timm model '{model_name}': {e}") from None
    except Exception as e:  # a model timm cannot cut into feature maps (e.g. some transformers)
        raise ModelError(f"timm model '{model_name}' has no features_only mode ({type(e).__name__}: {e})") from None
    reductions, channels = body.feature_info.reduction(), body.feature_info.channels()
    picks = []
    for s in STRIDES:
        hits = [i for i, r in enumerate(reductions) if r == s]
        if not hits:
            raise ModelError(
                f"timm model '{model_name}' has no stride-{s} feature map (strides {reductions}): pick a CNN backbone"
            )
        picks.append(hits[-1])  # the deepest map at that stride
    return body, picks, [channels[i] for i in picks]


class LightPAN(nn.Module):
    """1x1 laterals to one width ``c``, a top-down path (upsample + add) and a bottom-up path (stride-2 conv + add),
    a 3x3 conv after every merge. In: 3 maps at strides 8/16/32, out: 3 maps of ``c`` channels at the same strides."""

    def __init__(self, in_channels: list[int], c: int):
        super().__init__()
        self.lateral = nn.ModuleList(Conv(ci, c, 1) for ci in in_channels)
        self.top_down = nn.ModuleList(Conv(c, c, 3) for _ in range(2))  # after the merges at P4, P3
        self.down = nn.ModuleList(Conv(c, c, 3, 2) for _ in range(2))  # P3 -> P4, P4 -> P5
        self.bottom_up = nn.ModuleList(Conv(c, c, 3) for _ in range(2))  # after the merges at P4, P5

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        l3, l4, l5 = (conv(f) for conv, f in zip(self.lateral, x))  # (B, c, H/8, W/8), (.., H/16, ..), (.., H/32, ..)
        p4 = self.top_down[0](l4 + F.interpolate(l5, size=l4.shape[-2:], mode="nearest"))  # (B, c, H/16, W/16)
        p3 = self.top_down[1](l3 + F.interpolate(p4, size=l3.shape[-2:], mode="nearest"))  # (B, c, H/8, W/8)
        n4 = self.bottom_up[0](p4 + self.down[0](p3))  # (B, c, H/16, W/16)
        n5 = self.bottom_up[1](l5 + self.down[1](n4))  # (B, c, H/32, W/32)
        return [p3, n4, n5]


class TimmDetect(Detect):
    """ultralytics' ``Detect`` with its class-level ``legacy`` flag pinned to False (YOLO11-style depthwise class
    branch): ultralytics flips ``Detect.legacy`` globally whenever it builds a YOLOv8, which would otherwise change
    this head's layers (and checkpoint keys) depending on what was built before it in the process."""

    legacy = False


class TimmDetModel(nn.Module):
    """backbone -> neck -> ``Detect``; ``forward`` returns the head's raw dict (``boxes`` (B, 4R, A), ``scores``
    (B, K, A), ``feats`` = the neck maps) in train and eval mode, like an ultralytics ``DetectionModel`` in training."""

    def __init__(self, model_name: str, num_classes: int, channels: int):
        super().__init__()
        self.backbone, self.picks, in_channels = timm_backbone(model_name)
        self.neck = LightPAN(in_channels, channels)
        self.head = TimmDetect(nc=num_classes, reg_max=16, ch=(channels,) * len(STRIDES))
        self.head.stride = torch.tensor(STRIDES, dtype=torch.float32)
        self.head.bias_init()
        initialize_weights(self.neck)  # ultralytics' BN settings (eps 1e-3, momentum 0.03) for neck and head
        initialize_weights(self.head)
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def model(self) -> list[nn.Module]:
        """What ultralytics' loss and :class:`YoloAdapter` read: ``model.model[-1]`` is the ``Detect`` head."""
        return [self.backbone, self.neck, self.head]

    def forward(self, img: Tensor) -> dict[str, Tensor | list[Tensor]]:  # img (B, 3, S, S) RGB in [0, 1]
        maps = self.backbone((img - self.mean) / self.std)  # per backbone stage (B, C_i, S/r_i, S/r_i)
        feats = self.neck([maps[i] for i in self.picks])  # 3 x (B, c, S/s, S/s), s = 8, 16, 32
        return self.head.forward_head(feats, **self.head.one2many)


@register_family("timm", matches=lambda name: name.startswith("timm:"), example="timm:mobilenetv3_small_100")
class TimmAdapter(YoloAdapter):
    """A timm backbone under YOLOv8's head: the YOLO adapter's forward and loss on a :class:`TimmDetModel`."""

    family = "timm"

    @classmethod
    def from_name(
        cls, name: str, class_names: list[str], width: float | None = None, depth: float | None = None
    ) -> "TimmAdapter":
        """``timm:<model_name>``; ``width`` multiplies the neck width (96 channels); ``depth`` does not apply."""
        model_name = name.split(":", 1)[1] if name.startswith("timm:") else name
        if not model_name:
            raise ModelError("timm detector needs a backbone name: timm:<model_name> (e.g. timm:mobilenetv3_small_100)")
        if depth is not None:
            raise ModelError(f"model.depth does not apply to timm models ({name}): pick a deeper timm backbone instead")
        model = TimmDetModel(model_name, len(class_names), neck_channels(width))
        return cls(model, class_names, {"name": f"timm:{model_name}", "width": width})

    @classmethod
    def from_spec(cls, spec: dict, class_names: list[str]) -> "TimmAdapter":
        return cls.from_name(spec["name"], class_names, spec.get("width"))
