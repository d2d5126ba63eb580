"""A teacher of other classes, seen through a class map: what lets a generic multi-class teacher (a COCO model, or
one trained with a camera's own label set) distil a student with the data's classes.

``kd.teacher_classes`` maps teacher class names to student class names (several may merge into one; a teacher class
left out, or mapped to null, is ignored). Without it, a teacher with the student's classes is used as it is, and one
whose classes contain every student class by name is mapped by name. The mapped teacher's class logits are
:func:`cvkd.losses.merge_class_logits` of its own ("any of the merged classes"); features and boxes are unchanged, so
every KD term and the pseudo-labels of unlabelled frames (its ``predict``) see the student's classes.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging

import torch
from torch import Tensor

from ..losses import merge_class_logits
from .base import DetectorAdapter, DetOutputs, ModelError

log = logging.getLogger("cvkd")


def class_groups(teacher_classes: list[str], student_classes: list[str], class_map: dict | None) -> Tensor | None:
    """(K_s, K_t) 0/1 membership of teacher classes in student classes; None when the class lists are equal and no map
    is given (no mapping needed). One-line :class:`ModelError` for an unknown name or a student class left empty."""
    if not class_map:
        if list(teacher_classes) == list(student_classes):
            return None
        if not set(student_classes) <= set(teacher_classes):
            raise ModelError(f"teacher classes {teacher_classes} differ from student classes {student_classes}: "
                             "map them with kd.teacher_classes={teacher class: student class, ...}")
        class_map = {c: c for c in student_classes}  # by name: the student's classes, the others ignored
        log.info(f"teacher classes mapped to the student's by name ({len(class_map)} of {len(teacher_classes)} kept)")
    if not isinstance(class_map, dict):
        raise ModelError(f"kd.teacher_classes must be a mapping {{teacher class: student class}}, got {class_map!r}")
    unknown = [t for t in class_map if str(t) not in teacher_classes]
    if unknown:
        raise ModelError(f"kd.teacher_classes: {unknown} not among the teacher's classes {teacher_classes}")
    bad = [s for s in class_map.values() if s is not None and str(s) not in student_classes]
    if bad:
        raise ModelError(f"kd.teacher_classes: {bad} not among the student's classes {student_classes}")
    groups = torch.zeros(len(student_classes), len(teacher_classes))
    for t, s in class_map.items():
        if s is not None:
            groups[student_classes.index(str(s)), teacher_classes.index(str(t))] = 1.0
    empty = [c for c, row in zip(student_classes, groups) if row.sum() == 0]
    if empty:
        raise ModelError(f"kd.teacher_classes: student class(es) {empty} get no teacher class: the teacher cannot "
                         "teach them")
    return groups


class ClassMappedTeacher(DetectorAdapter):
    """``teacher`` with its class logits merged onto the student's classes (``groups`` from :func:`class_groups`)."""

    dense_student = False  # a teacher view: nothing here trains

    def __init__(self, teacher: DetectorAdapter, groups: Tensor, class_names: list[str]):
        super().__init__()
        self.teacher = teacher
        self.register_buffer("groups", groups, persistent=False)  # (K_s, K_t)
        self.class_names = list(class_names)
        self.strides = teacher.strides
        self.family = teacher.family
        self.reg_max = getattr(teacher, "reg_max", None)
        self.end2end = getattr(teacher, "end2end", False)
        self.bf16_teacher = teacher.bf16_teacher

    @property
    def model(self):  # weight selection and parameter counts look at the wrapped network
        return self.teacher.model

    def forward(self, img: Tensor) -> DetOutputs:
        out = self.teacher(img)
        o2o = out.cls_logits_o2o
        return dataclasses.replace(out, cls_logits=merge_class_logits(out.cls_logits, self.groups),  # (B, A, K_s)
                                   cls_logits_o2o=None if o2o is None else merge_class_logits(o2o, self.groups))

    def feature_channels(self, imgsz: int = 64) -> list[int]:
        return self.teacher.feature_channels(imgsz)

    def fold_batchnorm(self) -> int:
        return self.teacher.fold_batchnorm()

    def predict(self, img: Tensor, conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                out: DetOutputs | None = None) -> list[dict[str, Tensor]]:
        """The teacher's own decoding on the merged classes: an end-to-end head's NMS-free one-to-one top-k (or its
        ``e2e_nms`` path), as it deploys and as it predicts unmapped; class-aware NMS for every other head."""
        out = out if out is not None else self(img)
        if getattr(self.teacher, "end2end", False):
            return self.teacher.predict(img, conf, iou, max_det, out)
        return DetectorAdapter.predict(self, img, conf, iou, max_det, out)


def map_teacher(teacher: DetectorAdapter, student_classes: list[str], class_map: dict | None) -> DetectorAdapter:
    """The teacher as the student's classes see it: itself, or a :class:`ClassMappedTeacher`."""
    groups = class_groups(list(teacher.class_names), list(student_classes), class_map)
    if groups is None:
        return teacher
    kept = int(groups.sum())
    log.info(f"teacher classes -> student classes: {kept} of {len(teacher.class_names)} teacher classes used, merged "
             f"into {list(student_classes)}")
    tensor = next(itertools.chain(teacher.parameters(), teacher.buffers()), None)  # an ONNX teacher has no parameters
    return ClassMappedTeacher(teacher, groups.to(tensor.device if tensor is not None else "cpu"), student_classes)
