"""The loss core: pure functions on tensors, shared by the detector and the language-model branches."""
from .box_kd import dfl_expectation, distribution_kd, iou_imitation, teacher_bounded_l2
from .feature_kd import (
    HintAdapter,
    attention_masks,
    box_mask,
    cwd_loss,
    feature_hint,
    feature_hint_levels,
    fgd_loss,
    hint_parts,
    pkd_loss,
    pkd_normalize,
    pkd_parts,
    resize_to,
)
from .logit_kd import (
    DIVERGENCES,
    kd_divergence,
    logit_kd,
    merge_class_logits,
    sigmoid_kd,
    teacher_score_weights,
)

__all__ = [
    "DIVERGENCES", "HintAdapter", "attention_masks", "box_mask", "cwd_loss", "dfl_expectation", "distribution_kd",
    "feature_hint", "feature_hint_levels", "fgd_loss", "hint_parts", "iou_imitation", "kd_divergence", "logit_kd",
    "merge_class_logits", "pkd_loss", "pkd_normalize", "pkd_parts", "resize_to", "sigmoid_kd", "teacher_bounded_l2",
    "teacher_score_weights",
]
