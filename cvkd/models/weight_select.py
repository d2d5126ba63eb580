"""Weight selection: start a small model from evenly spaced elements of a larger one with the same layer structure.

Xu, Zhuang, Liu, Xie, Darrell, Liu, Cui, "Initializing Models with Larger Ones" (ICLR 2024): every tensor of the small
model takes, along each dimension, ``n_small`` evenly spaced indices of the large model's tensor. The same rule on
every tensor keeps the layers consistent: the input channels a layer keeps are the output channels its producer kept.
For a width ratio of exactly 2 (YOLOv8s -> YOLOv8n, 11s -> 11n) the rule picks every second channel, which also
stays consistent through ``chunk`` / ``concat`` (a C2f block's halves, SPPF's four copies, the neck's concatenations),
since each part of a concatenation keeps every second channel of its own. Dimensions of equal size (YOLO's box branch,
the class outputs, DFL) are copied whole.

Works on state dicts: knows nothing about detectors.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ModelError


def evenly_spaced(n_large: int, n_small: int) -> Tensor:
    """``n_small`` indices spread over ``range(n_large)``: ``floor(i * n_large / n_small)``; every k-th index when
    ``n_large = k * n_small``."""
    return torch.arange(n_small) * n_large // n_small  # (n_small,)


def select_tensor(t_large: Tensor, shape_small: torch.Size) -> Tensor:
    """The elements of ``t_large`` at evenly spaced indices of each dimension, shaped ``shape_small``."""
    out = t_large
    for dim, (n_l, n_s) in enumerate(zip(t_large.shape, shape_small)):
        if n_l != n_s:
            out = out.index_select(dim, evenly_spaced(n_l, n_s).to(out.device))
    return out


def weight_selection(state_s: dict[str, Tensor], state_l: dict[str, Tensor], source: str = "larger model") -> dict:
    """A state dict shaped like ``state_s`` whose tensors are selected from ``state_l`` (same keys, same number of
    dimensions, no dimension smaller). Raises one-line :class:`ModelError` naming ``source`` otherwise."""
    missing = [k for k in state_s if k not in state_l]
    if missing:
        raise ModelError(f"{source}: cannot initialise the student by weight selection: {len(missing)} of its "
                         f"{len(state_s)} tensors have no counterpart (first: {missing[0]}); the larger model needs "
                         "the same layer structure (e.g. yolov8s for yolov8n)")
    out = {}
    for key, t_s in state_s.items():
        t_l = state_l[key]
        if t_l.dim() != t_s.dim() or any(n_l < n_s for n_l, n_s in zip(t_l.shape, t_s.shape)):
            raise ModelError(f"{source}: cannot initialise the student by weight selection: {key} is "
                             f"{tuple(t_l.shape)} there, {tuple(t_s.shape)} in the student (needs a larger or equal "
                             "size in every dimension)")
        out[key] = select_tensor(t_l, t_s.shape).to(dtype=t_s.dtype).clone()
    return out


def init_from_larger(model_s: nn.Module, model_l: nn.Module, source: str) -> int:
    """Overwrite ``model_s``'s parameters and buffers with a weight selection of ``model_l``; returns how many
    tensors changed shape in the selection (0 = a plain copy)."""
    state_s = model_s.state_dict()
    with torch.no_grad():
        state_l = {k: v.detach().to(next(iter(state_s.values())).device) for k, v in model_l.state_dict().items()}
    selected = weight_selection(state_s, state_l, source)
    model_s.load_state_dict(selected)
    return sum(tuple(state_l[k].shape) != tuple(v.shape) for k, v in selected.items())
