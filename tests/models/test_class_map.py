"""A teacher of other classes: merged logits ("any of them") against hand-computed values, the class map's one-line
errors, and every KD term computed through a mapped teacher."""
import math

import pytest
import torch

from cvkd.engine.config import KDConfig
from cvkd.engine.distill import Distiller
from cvkd.losses import merge_class_logits
from cvkd.models import ModelError, build_detector
from cvkd.models.class_map import ClassMappedTeacher, class_groups, map_teacher
from cvkd.models.class_transfer import source_rows


def test_merged_logits_are_any_of_the_members():
    z = torch.tensor([[2.0, -1.0, 0.5]])
    groups = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    p1, p2, p3 = (1 / (1 + math.exp(-v)) for v in (2.0, -1.0, 0.5))
    any12 = 1 - (1 - p1) * (1 - p2)  # 0.91286...
    out = merge_class_logits(z, groups)
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(math.log(any12 / (1 - any12)), abs=1e-5)
    assert out[0, 1].item() == pytest.approx(0.5, abs=1e-6)  # a one-member group is the identity
    wide = torch.linspace(-25, 25, 51)[:, None]
    torch.testing.assert_close(merge_class_logits(wide, torch.ones(1, 1)), wide, atol=1e-4, rtol=0)


def test_class_groups_and_errors():
    assert class_groups(["a", "b"], ["a", "b"], None) is None
    g = class_groups(["person", "car", "dog"], ["person"], None)  # by name
    assert g.tolist() == [[1.0, 0.0, 0.0]]
    g = class_groups(["0", "1", "car"], ["person", "car"], {"0": "person", "1": "person", "car": "car"})
    assert g.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    for teacher, student, cmap, msg in [
        (["a", "b"], ["x"], None, "map them with kd.teacher_classes"),
        (["a"], ["x"], {"z": "x"}, r"\['z'\] not among the teacher's classes"),
        (["a"], ["x"], {"a": "y"}, r"\['y'\] not among the student's classes"),
        (["a", "b"], ["x", "y"], {"a": "x", "b": None}, r"student class\(es\) \['y'\] get no teacher class"),
    ]:
        with pytest.raises(ModelError, match=msg) as e:
            class_groups(teacher, student, cmap)
        assert "\n" not in str(e.value)


def test_every_kd_term_through_a_mapped_teacher():
    torch.manual_seed(0)
    s = build_detector("yolov8n.yaml", ["person"]).train()
    t = map_teacher(build_detector("yolov8s.yaml", ["0", "1"]).eval(), ["person"], {"0": "person", "1": "person"})
    assert isinstance(t, ClassMappedTeacher) and t.class_names == ["person"]
    img = torch.rand(2, 3, 64, 64)
    out_t = t(img)
    assert out_t.cls_logits.shape[-1] == 1
    torch.testing.assert_close(out_t.cls_logits, merge_class_logits(t.teacher(img).cls_logits, t.groups))
    dist = Distiller(KDConfig(teacher="x", logit=1.0, feature=1.0, box=1.0, box_loss="ld+iou"), s, t, 64)
    batch = {"batch_idx": torch.tensor([0.0]), "cls": torch.tensor([0.0]), "bboxes": torch.tensor([[4.0, 4, 40, 60]])}
    out_s = s(img)
    _, _, assign = s.loss(out_s, batch)
    terms = dist(out_s, out_t, assign, batch)
    assert set(terms) == {"logit", "feature", "box"} and all(torch.isfinite(v) and v > 0 for v in terms.values())
    assert len(t.predict(img, conf=0.0)[0]["labels"].unique()) == 1
    # weight selection from it gives person the rows of the first teacher class merged onto it
    assert source_rows(["person"], t) == (["0", "1"], [0])
    by_name = map_teacher(build_detector("yolov8s.yaml", ["car", "person"]).eval(), ["person"], None)
    assert source_rows(["person"], by_name) == (["car", "person"], [1])


@pytest.mark.parametrize("e2e_nms", [False, True])
def test_a_mapped_end_to_end_teacher_predicts_as_it_does_unmapped(e2e_nms):
    """A YOLO26 teacher seen through a class map keeps its own decoding: NMS-free top-k of the one-to-one branch (or
    its one-to-many + NMS path when asked), on the merged classes; a one-class rename changes no detection."""
    torch.manual_seed(0)
    teacher = build_detector("yolo26n.yaml", ["a"]).eval()
    teacher.e2e_nms = e2e_nms
    mapped = map_teacher(teacher, ["b"], {"a": "b"})
    img = torch.rand(1, 3, 64, 64)  # (B, 3, S, S)
    with torch.no_grad():
        want, got = teacher.predict(img, conf=0.0)[0], mapped.predict(img, conf=0.0)[0]
    assert len(got["scores"]) == len(want["scores"]) > 0
    torch.testing.assert_close(got["scores"], want["scores"])
    torch.testing.assert_close(got["boxes"], want["boxes"])
