"""torchvision FCOS adapter: shapes, faithful loss, KD with a YOLO teacher both ways, checkpoints, offline, smoke."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from cvkd.checkpoint import save_checkpoint
from cvkd.engine.config import KDConfig
from cvkd.engine.distill import Distiller
from cvkd.models import ModelError, build_detector, load_detector

ROOT = Path(__file__).resolve().parents[2]
IMG = 64
NAME = "fcos_mobilenet_v3_small_fpn"  # smallest FCOS; width 0.25 = 64-channel FPN and head


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(last_class: int = 0):
    return {
        "batch_idx": torch.tensor([0.0, 1.0, 1.0]),
        "cls": torch.tensor([0.0, float(last_class), 0.0]),
        "bboxes": torch.tensor([[4.0, 4.0, 40.0, 60.0], [10.0, 20.0, 30.0, 50.0], [32.0, 8.0, 60.0, 40.0]]),
    }


def _fcos(classes=("person",)):
    torch.manual_seed(0)
    return build_detector(NAME, list(classes), width=0.25)


def _grad_ok(params) -> bool:
    return all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_output_shapes_and_yolo_aligned_anchors():
    m = _fcos(["person", "car"]).train()
    out = m(torch.rand(2, 3, IMG, IMG))
    sizes = [(IMG // 8) ** 2, (IMG // 16) ** 2, (IMG // 32) ** 2, 1, 1]  # P6, P7: 1x1 at 64 px
    A = sum(sizes)
    assert m.family == "torchvision" and m.strides == out.strides == [8, 16, 32, 64, 128] and m.reg_max is None
    assert out.level_sizes == sizes and all(f.shape[1] == 64 for f in out.feats)
    assert out.cls_logits.shape == (2, A, 2) and out.box_bins is None and out.boxes.shape == (2, A, 4)
    assert out.anchors.shape == (A, 2) and out.anchor_strides.shape == (A,)
    assert torch.all(out.boxes[..., 2:] >= out.boxes[..., :2])
    ref = build_detector("yolov8n.yaml", ["person", "car"])(torch.rand(1, 3, IMG, IMG))
    n = sum(sizes[:3])  # P3-P5: the same cells, in the same order, as the YOLO grid
    assert torch.equal(out.anchors[:n], ref.anchors) and torch.equal(out.anchor_strides[:n], ref.anchor_strides)
    preds = m.eval().predict(torch.rand(2, 3, IMG, IMG), conf=0.0)
    assert len(preds) == 2 and preds[0]["boxes"].shape[1] == 4


def test_scores_are_fcos_ranking_scores():
    m = _fcos().eval()
    out = m(torch.rand(1, 3, IMG, IMG))
    head = out.raw["head"]
    expected = (head["cls_logits"].sigmoid() * head["bbox_ctrness"].sigmoid()).sqrt()  # torchvision's postprocess
    assert torch.allclose(out.cls_logits.sigmoid(), expected, atol=1e-5)


def test_loss_is_torchvision_fcos_loss():
    """Our matching + the head's compute_loss == torchvision's FCOS.compute_loss (its own matching) on our anchors."""
    m = _fcos(["person", "car"]).train()
    out = m(torch.rand(2, 3, IMG, IMG))
    b = _batch(last_class=1)
    total, items, assign = m.loss(out, b)
    targets = [{"boxes": b["bboxes"][b["batch_idx"] == i], "labels": b["cls"][b["batch_idx"] == i].long()}
               for i in range(2)]
    ref = m.model.compute_loss(targets, out.raw["head"], [out.raw["anchor_boxes"]] * 2, out.level_sizes)
    assert items == pytest.approx({"cls": ref["classification"].item(), "box": ref["bbox_regression"].item(),
                                   "ctr": ref["bbox_ctrness"].item()}, rel=1e-5)
    assert total.item() == pytest.approx(2 * sum(v.item() for v in ref.values()), rel=1e-5)
    assert assign.fg_mask.shape == (2, out.cls_logits.shape[1]) and assign.fg_mask.any(1).all()
    fg_boxes = assign.target_boxes[assign.fg_mask]  # (n, 4) each a GT box of its image
    assert all((fg_boxes[i] == b["bboxes"]).all(1).any() for i in range(len(fg_boxes)))


def test_own_loss_reaches_every_parameter():
    m = _fcos().train()
    out = m(torch.rand(2, 3, IMG, IMG))
    total, _, _ = m.loss(out, _batch())
    total.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing[:5]


def test_batch_without_boxes_gives_a_finite_loss():
    m = _fcos().train()
    out = m(torch.rand(2, 3, IMG, IMG))
    total, items, assign = m.loss(out, {"batch_idx": torch.zeros(0), "cls": torch.zeros(0), "bboxes": torch.zeros(0, 4)})
    total.backward()
    assert torch.isfinite(total) and items["box"] == 0.0 and not assign.fg_mask.any()


@pytest.mark.parametrize("term", ["logit", "feature", "box"])
def test_each_kd_term_from_a_yolo_teacher_reaches_the_student(term):
    """Levels are paired by stride (P3-P5); P6/P7 have no teacher level and get no KD gradient (by design)."""
    s = _fcos().train()
    t = build_detector("yolov8n.yaml", ["person"]).eval()
    dist = Distiller(KDConfig(teacher="x", box_loss="iou", **{term: 1.0}), s, t, IMG)
    assert dist.pairs == [(0, 0), (1, 1), (2, 2)] and not dist.same_anchors
    img = torch.rand(2, 3, IMG, IMG)
    out_s = s(img)
    _, _, assign = s.loss(out_s, _batch())
    terms = dist(out_s, t(img), assign, _batch())
    assert set(terms) == {term} and terms[term].item() > 0
    terms[term].backward()
    assert all(p.grad is None for p in t.parameters())
    assert _grad_ok(s.model.backbone.body.parameters())
    assert _grad_ok(s.model.backbone.fpn.inner_blocks.parameters())
    head = s.model.head
    if term == "logit":
        assert _grad_ok(head.classification_head.parameters())
        assert head.regression_head.bbox_ctrness.weight.grad.abs().sum() > 0  # the score includes centerness
    if term == "box":
        assert _grad_ok(head.regression_head.bbox_reg.parameters())
    if term == "feature":
        assert len(dist.adapters) == 3 and all(a.proj.weight.grad.abs().sum() > 0 for a in dist.adapters)


def test_ld_is_refused_and_fcos_can_teach_a_yolo_student():
    fcos, yolo = _fcos().eval(), build_detector("yolov8n.yaml", ["person"]).train()
    for s, t in ((fcos, yolo), (yolo, fcos)):
        with pytest.raises(ModelError, match="LD distils DFL bins, and the (student|teacher) .* has none"):
            Distiller(KDConfig(teacher="x", box=1.0, box_loss="ld"), s, t, IMG)
    dist = Distiller(KDConfig(teacher="x", logit=1.0, feature=1.0, box=1.0, box_loss="iou"), yolo, fcos, IMG)
    img = torch.rand(2, 3, IMG, IMG)
    out_s = yolo(img)
    _, _, assign = yolo.loss(out_s, _batch())
    terms = dist(out_s, fcos(img), assign, _batch())
    assert set(terms) == {"logit", "feature", "box"} and all(torch.isfinite(v) for v in terms.values())


def test_unsupported_torchvision_models_fail_in_one_line():
    for name, msg in [("fasterrcnn_vgg16_fpn", "unknown Faster R-CNN"),
                      ("torchvision:retinanet_resnet50_fpn", "RetinaNet: not supported yet"),
                      ("fcos_vgg16_fpn", "unknown torchvision detector")]:
        with pytest.raises(ModelError, match=msg) as e:
            build_detector(name, ["person"])
        assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="model.depth does not apply"):
        build_detector(NAME, ["person"], depth=0.5)


def test_resnet_fcos_has_torchvision_weight_names():
    """``fcos_resnet*_fpn`` is torchvision's architecture: its state-dict keys and shapes are torchvision's."""
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    body = torchvision.models.resnet18(weights=None)
    fpn = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    ref = torchvision.models.detection.FCOS(fpn, num_classes=1).state_dict()
    ours = build_detector("torchvision:fcos_resnet18_fpn", ["person"]).model.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}


def test_checkpoint_round_trip(tmp_path):
    m = _fcos(["person", "car"]).eval()
    path = tmp_path / "fcos.pt"
    save_checkpoint(path, "detector", m.model.state_dict(),
                    {"family": m.family, "arch": m.arch_spec(), "class_names": m.class_names})
    back = load_detector(path).eval()
    assert type(back) is type(m) and back.class_names == ["person", "car"] and back.arch_spec() == m.arch_spec()
    img = torch.rand(1, 3, IMG, IMG)
    assert torch.allclose(back(img).cls_logits, m(img).cls_logits, atol=1e-6)


def test_nothing_reaches_the_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    m = build_detector("fcos_resnet18_fpn", ["person"], width=0.25).train()
    out = m(torch.rand(1, 3, IMG, IMG))
    m.loss(out, {"batch_idx": torch.zeros(1), "cls": torch.zeros(1), "bboxes": torch.tensor([[1.0, 1, 30, 30]])})
    m.eval().predict(torch.rand(1, 3, IMG, IMG))


def _tiny_run(tmp: Path) -> list[str]:
    """Overrides for 3 train / 2 val real frames of datasets/cctv_mini at 64 px (as tests/engine's ``tiny_run``)."""
    mini = ROOT / "datasets" / "cctv_mini"
    for split, n in (("train", 3), ("val", 2)):
        d = json.loads((mini / f"{split}.json").read_text())
        ids = {im["id"] for im in d["images"][:n]}
        sub = {"images": d["images"][:n], "annotations": [a for a in d["annotations"] if a["image_id"] in ids],
               "categories": d["categories"]}
        (tmp / f"{split}.json").write_text(json.dumps(sub))
    return [f"data.train_json={tmp / 'train.json'}", f"data.train_images={mini / 'images' / 'train'}",
            f"data.val_json={tmp / 'val.json'}", f"data.val_images={mini / 'images' / 'val'}",
            "data.class_map={'0': person, '1': person}", "data.imgsz=64", "data.workers=0", "data.close_mosaic=1",
            "train.batch=2", "train.eval_batch=2", "train.threads=1", "train.epochs=1", f"out={tmp / 'runs'}"]


def test_distill_smoke_yolo_teacher_to_fcos_student(tmp_path):
    t = build_detector("yolov8s.yaml", ["person"])
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, "detector", t.model.state_dict(),
                    {"family": "yolo", "arch": t.arch_spec(), "class_names": ["person"]})
    args = [*_tiny_run(tmp_path), "name=kd", f"model.name={NAME}", "model.width=0.25", f"kd.teacher={teacher}",
            "kd.logit=1", "kd.feature=1", "kd.feature_loss=pkd", "kd.box=1", "kd.box_loss=iou"]
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "distill.py"), *args], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    header, row = (tmp_path / "runs" / "kd" / "results.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    for key in ("loss_cls", "loss_box", "loss_ctr", "loss_kd_logit", "loss_kd_feature", "loss_kd_box", "map"):
        assert values[key] not in ("", "nan"), key
    back = load_detector(tmp_path / "runs" / "kd" / "final.pt")
    assert back.family == "torchvision" and back.arch_spec() == {"name": NAME, "width": 0.25}
