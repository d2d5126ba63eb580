"""timm backbone + YOLOv8 head: shapes, own loss, KD from a YOLO teacher, checkpoints, offline, a distill smoke run."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvkd.checkpoint import save_checkpoint
from cvkd.engine.config import KDConfig
from cvkd.engine.distill import Distiller
from cvkd.models import ModelError, build_detector, load_detector

ROOT = Path(__file__).resolve().parents[2]
IMG = 64
NAME = "timm:mobilenetv3_small_100"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch():
    return {
        "batch_idx": torch.tensor([0.0, 1.0, 1.0]),
        "cls": torch.tensor([0.0, 0.0, 0.0]),
        "bboxes": torch.tensor([[4.0, 4.0, 40.0, 60.0], [10.0, 20.0, 30.0, 50.0], [32.0, 8.0, 60.0, 40.0]]),
    }


def _grad_ok(params) -> bool:
    return all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("name", [NAME, "timm:efficientnet_lite0", "timm:mobilenetv4_conv_small"])
def test_output_shapes_match_yolo(name):
    m = build_detector(name, ["person", "car"]).train()
    y = build_detector("yolov8n.yaml", ["person", "car"]).train()
    out, ref = m(torch.rand(2, 3, IMG, IMG)), y(torch.rand(2, 3, IMG, IMG))
    A = sum((IMG // s) ** 2 for s in (8, 16, 32))
    assert m.family == "timm" and m.strides == out.strides == [8, 16, 32] and m.reg_max == 16
    assert out.cls_logits.shape == (2, A, 2) and out.box_bins.shape == (2, A, 4, 16) and out.boxes.shape == (2, A, 4)
    assert [f.shape[1:] for f in out.feats] == [(96, 8, 8), (96, 4, 4), (96, 2, 2)]
    assert torch.equal(out.anchors, ref.anchors) and torch.equal(out.anchor_strides, ref.anchor_strides)
    assert torch.all(out.boxes[..., 2:] >= out.boxes[..., :2])
    preds = m.eval().predict(torch.rand(2, 3, IMG, IMG), conf=0.0)
    assert len(preds) == 2 and preds[0]["boxes"].shape[1] == 4


def test_width_scales_the_neck_and_depth_is_refused():
    small = build_detector(NAME, ["person"], width=0.5)
    assert small.feature_channels(IMG) == [48, 48, 48]
    with pytest.raises(ModelError, match="model.depth does not apply"):
        build_detector(NAME, ["person"], depth=0.5)


def test_bad_names_fail_in_one_line():
    for name, msg in [("timm:", "needs a backbone name"), ("timm:no_such_net", "Unknown model"),
                      ("timm:vit_tiny_patch16_224", "no stride-8 feature map")]:
        with pytest.raises(ModelError, match=msg) as e:
            build_detector(name, ["person"])
        assert "\n" not in str(e.value)


def test_own_loss_reaches_every_parameter():
    """Exceptions as for YOLO: the box branch of a level without assigned anchors; the fixed DFL projection."""
    torch.manual_seed(0)
    m = build_detector(NAME, ["person"]).train()
    out = m(torch.rand(2, 3, IMG, IMG))
    total, items, assign = m.loss(out, _batch())
    total.backward()
    assert set(items) == {"box", "cls", "dfl"} and assign.fg_mask.shape == (2, out.cls_logits.shape[1])
    fg_levels = {i for i, c in enumerate(assign.fg_mask.split(out.level_sizes, dim=1)) if c.any()}
    assert fg_levels
    idle = tuple(f"model.head.cv2.{i}." for i in range(3) if i not in fg_levels) or ("-",)
    missing = [n for n, p in m.named_parameters()
               if p.requires_grad and not n.startswith(idle) and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing[:5]


@pytest.mark.parametrize("term", ["logit", "feature", "box"])
def test_each_kd_term_from_a_yolo_teacher_reaches_the_student(term):
    torch.manual_seed(0)
    s = build_detector(NAME, ["person"]).train()
    t = build_detector("yolov8n.yaml", ["person"]).eval()
    kd = KDConfig(teacher="x", box_loss="ld+iou", **{term: 1.0})
    dist = Distiller(kd, s, t, IMG)
    assert dist.same_anchors  # anchor for anchor: same strides, same grid
    img = torch.rand(2, 3, IMG, IMG)
    out_s = s(img)
    _, _, assign = s.loss(out_s, _batch())
    terms = dist(out_s, t(img), assign, _batch())
    assert set(terms) == {term} and terms[term].item() > 0
    terms[term].backward()
    assert all(p.grad is None for p in t.parameters())
    assert _grad_ok(s.model.backbone.parameters()) and _grad_ok(s.model.neck.parameters())
    head = s.model.head
    if term == "logit":
        assert _grad_ok(head.cv3.parameters())
    if term == "box":
        assert _grad_ok(head.cv2.parameters())
    if term == "feature":
        assert len(dist.adapters) == 3 and all(a.proj.weight.grad.abs().sum() > 0 for a in dist.adapters)


def test_checkpoint_round_trip(tmp_path):
    m = build_detector(NAME, ["person", "car"], width=0.5).eval()
    path = tmp_path / "timm.pt"
    save_checkpoint(path, "detector", m.model.state_dict(),
                    {"family": m.family, "arch": m.arch_spec(), "class_names": m.class_names})
    build_detector("yolov8n.yaml", ["person"])  # flips ultralytics' global Detect.legacy: must not change our head
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
    m = build_detector("timm:efficientnet_lite0", ["person"]).train()
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


def test_distill_smoke_yolo_teacher_to_timm_student(tmp_path):
    t = build_detector("yolov8s.yaml", ["person"])
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, "detector", t.model.state_dict(),
                    {"family": "yolo", "arch": t.arch_spec(), "class_names": ["person"]})
    args = [*_tiny_run(tmp_path), "name=kd", f"model.name={NAME}", f"kd.teacher={teacher}", "kd.logit=1",
            "kd.feature=1", "kd.box=1", "kd.box_loss=ld+iou"]
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "distill.py"), *args], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    header, row = (tmp_path / "runs" / "kd" / "results.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    for key in ("loss_box", "loss_cls", "loss_dfl", "loss_kd_logit", "loss_kd_feature", "loss_kd_box", "map"):
        assert values[key] not in ("", "nan"), key
    back = load_detector(tmp_path / "runs" / "kd" / "final.pt")
    assert back.family == "timm" and back.class_names == ["person"]
