"""Start a model from a pretrained one of other classes (a COCO ``yolo11n.pt`` for a person-only camera set).

Every tensor that is not class-specific and has the same shape is copied; the class outputs are re-initialised,
except the rows of classes the source also has by name, which are kept. With ``select=True`` (``model.init_from``:
weight selection from a larger model, :mod:`cvkd.models.weight_select`) the copied tensors are narrowed to the
student's shapes first.

Which tensors are class-specific is found, for any family, by building the destination's architecture with one class
more and comparing shapes: dimension 0 of such a tensor is ``lead + per * K`` (``per`` rows a class, e.g. 4 for
Faster R-CNN's per-class boxes; ``lead`` rows before the first class, e.g. its background).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import DetectorAdapter, ModelError
from .weight_select import select_tensor

log = logging.getLogger("cvkd")


@dataclass
class TransferReport:
    copied: int  # tensors taken from the source (narrowed when selecting)
    reinit: int  # tensors left at their fresh initialisation (no counterpart of that shape)
    class_tensors: int  # class-output tensors (rows of kept classes copied, the others fresh)
    kept_classes: list[str]  # destination classes whose rows came from the source

    def line(self, source: str, n_src_classes: int) -> str:
        kept = f"rows of {self.kept_classes} kept" if self.kept_classes else "no class in common: re-initialised"
        return (f"{source} ({n_src_classes} classes): {self.copied} tensors transferred, {self.reinit} re-initialised; "
                f"{self.class_tensors} class-output tensors: {kept}")


def class_tensor_layout(adapter: DetectorAdapter) -> dict[str, tuple[int, int]]:
    """State-dict key -> (rows per class, leading rows) for the tensors whose dimension 0 runs over classes."""
    names = list(adapter.class_names)
    probe = type(adapter).from_spec(adapter.arch_spec(), [*names, "__probe__"])  # same architecture, one more class
    state, state_p = adapter.model.state_dict(), probe.model.state_dict()
    layout = {}
    for key, t in state.items():
        t_p = state_p.get(key)
        if t_p is not None and t.dim() > 0 and t_p.shape[0] != t.shape[0]:
            per = t_p.shape[0] - t.shape[0]
            layout[key] = (per, t.shape[0] - per * len(names))
    return layout


def source_rows(dst_classes: list[str], src: DetectorAdapter) -> tuple[list[str], list[int | None]]:
    """(the source network's own class names, for each destination class the source class whose rows it takes or
    None). By name; a class-mapped teacher (``kd.teacher_classes``) gives each student class the first teacher class
    mapped onto it."""
    from .class_map import ClassMappedTeacher

    if isinstance(src, ClassMappedTeacher):
        names = list(src.teacher.class_names)
        return names, [int(row.nonzero()[0]) if row.any() else None for row in src.groups.cpu()]
    names = list(src.class_names)
    return names, [names.index(c) if c in names else None for c in dst_classes]


def _class_tensor(t_d: Tensor, t_s: Tensor, rows: list[int | None], per: int, lead: int, n_src: int,
                  select: bool) -> Tensor | None:
    """``t_d`` with its leading rows and the rows of kept classes taken from ``t_s`` (narrowed in the other dims when
    selecting); None when the other dimensions do not fit."""
    if t_s.dim() != t_d.dim() or t_s.shape[0] != lead + per * n_src:
        return None
    other_s, other_d = t_s.shape[1:], t_d.shape[1:]
    if other_s != other_d and not (select and all(a >= b for a, b in zip(other_s, other_d))):
        return None
    index, fresh = list(range(lead)), []
    for k, i in enumerate(rows):  # a re-initialised class borrows row 0 here and is overwritten below
        index += [lead + (i if i is not None else 0) * per + r for r in range(per)]
        if i is None:
            fresh += [lead + k * per + r for r in range(per)]
    gathered = t_s.index_select(0, torch.tensor(index, device=t_s.device))  # (lead + per * K_d, ...)
    out = select_tensor(gathered, t_d.shape).to(t_d.dtype).clone()
    out[fresh] = t_d[fresh]
    return out


def transfer_weights(dst: DetectorAdapter, src: DetectorAdapter, source: str, select: bool = False) -> TransferReport:
    """Load ``src``'s weights into ``dst`` (see the module docstring); ``dst`` keeps its fresh values elsewhere.
    With ``select``, every non-class tensor must have a counterpart at least as large (one-line :class:`ModelError`)."""
    layout = class_tensor_layout(dst)
    src_names, rows = source_rows(list(dst.class_names), src)
    state_d = dst.model.state_dict()
    device = next(iter(state_d.values())).device
    state_s = {k: v.detach().to(device) for k, v in src.model.state_dict().items()}
    new, copied, reinit = {}, 0, 0
    for key, t_d in state_d.items():
        t_s = state_s.get(key)
        if key in layout:
            t = None if t_s is None else _class_tensor(t_d, t_s, rows, *layout[key], len(src_names), select)
        elif t_s is not None and t_s.shape == t_d.shape:
            t = t_s.to(t_d.dtype).clone()
        elif select and t_s is not None and t_s.dim() == t_d.dim() and all(a >= b for a, b in zip(t_s.shape, t_d.shape)):
            t = select_tensor(t_s, t_d.shape).to(t_d.dtype).clone()
        else:
            t = None
        if t is None and select:
            what = "no counterpart" if t_s is None else f"{tuple(t_s.shape)} there, {tuple(t_d.shape)} in the student"
            raise ModelError(f"{source}: cannot initialise the student by weight selection: {key}: {what} (the "
                             "larger model needs the same layer structure, e.g. yolov8s for yolov8n)")
        copied, reinit = copied + (t is not None), reinit + (t is None)
        new[key] = t_d if t is None else t
    dst.model.load_state_dict(new)
    kept = [c for c, i in zip(dst.class_names, rows) if i is not None]
    return TransferReport(copied, reinit, len(layout), kept)


def start_from(dst: DetectorAdapter, src: DetectorAdapter, source: str, select: bool = False) -> None:
    """``transfer_weights`` with its log line; a plain copy when the classes and shapes agree."""
    report = transfer_weights(dst, src, source, select)
    log.info(("student initialised by weight selection from " if select else "student initialised from pretrained "
              "weights of ") + report.line(source, len(source_rows([], src)[0])))
