"""Detector families register themselves here (a decorator and a dict, as timm's ``register_model``).

A family is an adapter class plus the model names it builds::

    @register_family("yolo", matches=lambda name: name.startswith("yolo"), example="yolov8n.yaml")
    class YoloAdapter(DetectorAdapter): ...

``build_detector(name)`` picks the family whose ``matches(name)`` is true; ``load_detector`` picks it by the
checkpoint's ``meta["family"]``. cvkd's own families live in ``FAMILY_MODULES`` and are imported on first use (so
``import cvkd`` stays light); a new family in another package registers the same way before it is used.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

FAMILY_MODULES = ("yolo", "timm_det", "torchvision_det", "rcnn_det")  # modules of cvkd.models that register one


@dataclass(frozen=True)
class Family:
    name: str
    adapter: type  # a DetectorAdapter subclass with from_name(name, class_names, width, depth) and from_spec
    matches: Callable[[str], bool]  # whether build_detector(name) is this family's
    example: str  # a name it builds, for error messages


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, matches: Callable[[str], bool], example: str):
    """Class decorator: make an adapter class the family ``name``."""
    def deco(cls: type) -> type:
        if name in _FAMILIES and _FAMILIES[name].adapter is not cls:
            raise ValueError(f"detector family '{name}' is registered twice")
        cls.family = name
        _FAMILIES[name] = Family(name, cls, matches, example)
        return cls
    return deco


def families() -> dict[str, Family]:
    """Every registered family (cvkd's own imported on the first call)."""
    for module in FAMILY_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return _FAMILIES


def family_of_name(name: str) -> Family | None:
    """The family that builds ``name``, or None."""
    found = [f for f in families().values() if f.matches(name)]
    if len(found) > 1:  # matchers must be disjoint: a name that two families claim is a bug in one of them
        raise ValueError(f"model name '{name}' is claimed by families {[f.name for f in found]}")
    return found[0] if found else None
