"""Faster R-CNN adapter: dense rendering of its detections, its own loss, KD into a YOLO student, checkpoints, smoke."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvkd.checkpoint import save_checkpoint
from cvkd.engine.config import KDConfig
from cvkd.engine.distill import Distiller
from cvkd.models import ModelError, build_detector, load_detector
from cvkd.models.rcnn_det import render_dense
from cvkd.models.torchvision_det import cell_centres

ROOT = Path(__file__).resolve().parents[2]
IMG = 64
NAME = "fasterrcnn_mobilenet_v3_small_fpn"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(last_class: int = 1):
    return {"batch_idx": torch.tensor([0.0, 1.0, 1.0]), "cls": torch.tensor([0.0, float(last_class), 0.0]),
            "bboxes": torch.tensor([[4.0, 4.0, 40.0, 60.0], [10.0, 20.0, 30.0, 50.0], [32.0, 8.0, 60.0, 40.0]])}


def _rcnn(classes=("person", "car")):
    torch.manual_seed(0)
    return build_detector(NAME, list(classes), width=0.25)


def test_render_dense_by_hand():
    """One 16x16 grid of stride 8 (cells centred at 4, 12, ...): a person box and an overlapping, weaker car box."""
    points, strides = cell_centres([(2, 2)], [8])  # centres (4,4) (12,4) (4,12) (12,12)
    assert points.tolist() == [[4, 4], [12, 4], [4, 12], [12, 12]]
    dets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 16.0], [0.0, 0.0, 16.0, 8.0]]),
             "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([0, 1])},
            {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    scores, boxes = render_dense(dets, points, strides, num_classes=2, radius=10.0)
    # person box holds centres (4,4), (4,12); car box holds (4,4), (12,4)
    assert torch.allclose(scores[0], torch.tensor([[0.9, 0.5], [0.0, 0.5], [0.9, 0.0], [0.0, 0.0]]))
    assert boxes[0, 0].tolist() == [0, 0, 10, 16] and boxes[0, 1].tolist() == [0, 0, 16, 8]  # the best painter's box
    assert boxes[0, 3].tolist() == [8, 8, 16, 16]  # unpainted: the cell itself
    assert scores[1].abs().sum() == 0 and boxes[1, 0].tolist() == [0, 0, 8, 8]
    tight, _ = render_dense(dets[:1], points, strides, num_classes=2, radius=0.5)  # centre (5,8): no cell that near
    assert tight.abs().sum() == 0


def test_shapes_and_own_loss_reaches_every_parameter():
    m = _rcnn().train()
    out = m(torch.rand(2, 3, IMG, IMG))
    sizes = [(IMG // s) ** 2 for s in (8, 16, 32, 64)]
    assert m.family == "rcnn" and out.strides == [8, 16, 32, 64] and out.level_sizes == sizes and m.reg_max is None
    assert out.cls_logits.shape == (2, sum(sizes), 2) and out.boxes.shape == (2, sum(sizes), 4) and out.box_bins is None
    total, items, assign = m.loss(out, _batch())
    total.backward()
    assert set(items) == {"rpn_obj", "rpn_box", "cls", "box"} and torch.isfinite(total)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert assign.fg_mask.shape == (2, sum(sizes)) and not assign.fg_mask.any()


def test_eval_outputs_are_its_detections_rendered():
    m = _rcnn().eval()
    img = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        out = m(img)
    dets = out.raw["detections"]
    assert len(dets[0]["boxes"]) > 0 and int(dets[0]["labels"].max()) < 2  # 0-based classes, background removed
    scores, _ = render_dense(dets, out.anchors, out.anchor_strides, 2)
    assert torch.allclose(out.cls_logits.sigmoid(), scores.clamp(1e-4, 1 - 1e-4), atol=1e-6)
    pred = m.predict(img, conf=0.2, out=out)[0]
    assert torch.equal(pred["scores"], dets[0]["scores"][dets[0]["scores"] > 0.2])


@pytest.mark.parametrize("term", ["logit", "feature", "box"])
def test_each_kd_term_from_an_rcnn_teacher_reaches_a_yolo_student(term):
    t = _rcnn(["person"]).eval()
    s = build_detector("yolov8n.yaml", ["person"]).train()
    dist = Distiller(KDConfig(teacher="x", box_loss="iou", **{term: 1.0}), s, t, IMG)
    assert dist.pairs == [(0, 0), (1, 1), (2, 2)]
    img = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        out_t = t(img)
    out_s = s(img)
    _, _, assign = s.loss(out_s, _batch(0))
    terms = dist(out_s, out_t, assign, _batch(0))
    assert set(terms) == {term} and terms[term].item() > 0
    terms[term].backward()
    assert all(p.grad is None for p in t.parameters())
    assert sum(float(p.grad.abs().sum()) for p in s.parameters() if p.grad is not None) > 0


def test_ld_and_rcnn_students_are_refused_in_one_line():
    rcnn, yolo = _rcnn(["person"]), build_detector("yolov8n.yaml", ["person"])
    with pytest.raises(ModelError, match="LD distils DFL bins, and the (student|teacher) .* has none"):
        Distiller(KDConfig(teacher="x", box=1.0, box_loss="ld"), yolo, rcnn, IMG)
    with pytest.raises(ModelError, match="cannot be a distillation student") as e:
        Distiller(KDConfig(teacher="x", logit=1.0), rcnn, yolo, IMG)
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="unknown Faster R-CNN"):
        build_detector("torchvision:fasterrcnn_vgg_fpn", ["person"])


def test_checkpoint_round_trip(tmp_path):
    m = _rcnn().eval()
    path = tmp_path / "rcnn.pt"
    save_checkpoint(path, "detector", m.model.state_dict(),
                    {"family": m.family, "arch": m.arch_spec(), "class_names": m.class_names})
    back = load_detector(path).eval()
    assert type(back) is type(m) and back.arch_spec() == {"name": NAME, "width": 0.25}
    img = torch.rand(1, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.allclose(back(img).cls_logits, m(img).cls_logits, atol=1e-5)


def test_train_rcnn_then_distill_it_into_yolo(tmp_path):
    """tools/train.py trains a Faster R-CNN; tools/distill.py uses it as the teacher of a YOLO student."""
    from tests.models.test_torchvision_adapter import _tiny_run

    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    base = _tiny_run(tmp_path)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), *base, "name=rcnn", f"model.name={NAME}",
                        "model.width=0.25"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    teacher = tmp_path / "runs" / "rcnn" / "final.pt"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "distill.py"), *base, "name=kd", "model.name=yolov8n.yaml",
                        f"kd.teacher={teacher}", "kd.logit=1", "kd.feature=1", "kd.box=1", "kd.box_loss=iou"],
                       capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    header, row = (tmp_path / "runs" / "kd" / "results.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    for key in ("loss_kd_logit", "loss_kd_feature", "loss_kd_box", "map"):
        assert values[key] not in ("", "nan"), key


def test_rcnn_teacher_stays_fp32_with_auto_precision():
    """bf16 flips which proposals survive top-k/NMS, so kd.teacher_precision=auto keeps a Faster R-CNN teacher in fp32
    (the dense one-stage adapters may use bf16)."""
    from cvkd.engine.distill import cpu_bf16_teacher

    assert _rcnn().bf16_teacher is False
    assert not cpu_bf16_teacher("auto", torch.device("cpu"), _rcnn().bf16_teacher)
    assert build_detector("yolov8n.yaml", ["person"]).bf16_teacher is True
