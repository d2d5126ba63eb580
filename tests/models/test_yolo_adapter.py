import socket
from dataclasses import replace

import pytest
import torch

from cvkd.engine.config import KDConfig
from cvkd.engine.distill import Distiller
from cvkd.models import (
    ModelError,
    build_detector,
    check_pair,
    load_detector,
    pair_levels,
)

IMG = 64


def _batch():
    return {
        "batch_idx": torch.tensor([0.0, 1.0, 1.0]),
        "cls": torch.tensor([0.0, 0.0, 0.0]),
        "bboxes": torch.tensor([[4.0, 4.0, 40.0, 60.0], [10.0, 20.0, 30.0, 50.0], [32.0, 8.0, 60.0, 40.0]]),
    }


def test_the_assigner_scores_a_teachers_predictions_when_asked():
    """Label assignment distillation: the student's loss against the positives (and target scores) that the task-
    aligned assigner gives the teacher's predictions; its own outputs as ``assign_from`` change nothing."""
    torch.manual_seed(0)
    s, t = build_detector("yolov8n.yaml", ["person"]).train(), build_detector("yolov8s.yaml", ["person"]).eval()
    x = torch.rand(2, 3, IMG, IMG)
    out_s = s(x)
    with torch.no_grad():
        out_t = t(x)
    own, _, assign_own = s.loss(out_s, _batch())
    same, _, assign_same = s.loss(out_s, _batch(), assign_from=out_s)
    # the same up to rounding: the adapter's decoded pixel boxes are ultralytics' computed in another order
    torch.testing.assert_close(same, own, rtol=1e-5, atol=0)
    assert torch.equal(assign_own.fg_mask, assign_same.fg_mask)
    total, _, assign = s.loss(out_s, _batch(), assign_from=out_t)
    _, _, assign_t = t.train().loss(out_t, _batch())  # the teacher's own assignment of the same labels
    assert torch.equal(assign.fg_mask, assign_t.fg_mask) and not torch.equal(assign.fg_mask, assign_own.fg_mask)
    total.backward()
    assert all(p.grad is not None for p in s.parameters() if p.requires_grad)
    assert all(p.grad is None for p in t.parameters())
    wrong = replace(out_t, cls_logits=out_t.cls_logits[:, :-1], boxes=out_t.boxes[:, :-1])
    with pytest.raises(ModelError, match="do not match the student's anchors"):
        s.loss(s(x), _batch(), assign_from=wrong)


def test_only_yolo_students_take_the_teachers_assignment():
    fcos = build_detector("fcos_mobilenet_v3_small_fpn", ["person"], width=0.25).train()
    yolo = build_detector("yolov8n.yaml", ["person"])
    with pytest.raises(ModelError, match="kd.assign=teacher: a torchvision student assigns its own labels"):
        Distiller(KDConfig(assign="teacher"), fcos, yolo, IMG)
    out = fcos(torch.rand(1, 3, IMG, IMG))
    with pytest.raises(ModelError, match="assigns its own labels"):
        fcos.loss(out, _batch(), assign_from=out)


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo11n.yaml"])
def test_output_shapes(name):
    m = build_detector(name, ["person"]).train()
    out = m(torch.rand(2, 3, IMG, IMG))
    A = sum((IMG // s) ** 2 for s in (8, 16, 32))
    assert out.strides == [8, 16, 32] and m.strides == [8, 16, 32]
    assert out.cls_logits.shape == (2, A, 1)
    assert out.box_bins.shape == (2, A, 4, 16)
    assert out.boxes.shape == (2, A, 4) and out.anchors.shape == (A, 2) and out.anchor_strides.shape == (A,)
    assert [f.shape[-1] for f in out.feats] == [8, 4, 2]
    assert torch.all(out.boxes[..., 2:] >= out.boxes[..., :2])  # xyxy
    preds = m.eval().predict(torch.rand(2, 3, IMG, IMG), conf=0.0)
    assert len(preds) == 2 and preds[0]["boxes"].shape[1] == 4


def test_detection_loss_reaches_every_parameter():
    m = build_detector("yolov8n.yaml", ["person"]).train()
    out = m(torch.rand(2, 3, IMG, IMG))
    total, items, assign = m.loss(out, _batch())
    total.backward()
    assert set(items) == {"box", "cls", "dfl"} and assign.fg_mask.shape == out.cls_logits.shape[:2]
    # box-branch parameters of a level only learn from anchors assigned to objects on that level
    sizes = [f.shape[2] * f.shape[3] for f in out.feats]
    fg_levels = {i for i, chunk in enumerate(assign.fg_mask.split(sizes, dim=1)) if chunk.any()}
    assert fg_levels
    idle = tuple(f"model.model.22.cv2.{i}." for i in range(3) if i not in fg_levels)
    missing = [n for n, p in m.named_parameters()
               if p.requires_grad and not n.startswith(idle or ("-",)) and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing[:5]


def _params_of(model, part):
    head = model.model.model[-1]
    mod = {"cls": head.cv3, "box": head.cv2}[part]
    return [p for p in mod.parameters() if p.requires_grad]


@pytest.mark.parametrize("term", ["logit", "feature", "box"])
def test_each_kd_term_reaches_student_and_adapter_not_teacher(term):
    torch.manual_seed(0)
    s = build_detector("yolov8n.yaml", ["person"]).train()
    t = build_detector("yolov8s.yaml", ["person"]).eval()
    kd = KDConfig(teacher="x", **{term: 1.0})
    dist = Distiller(kd, s, t, IMG)
    img = torch.rand(2, 3, IMG, IMG)
    out_s = s(img)
    _, _, assign = s.loss(out_s, _batch())
    out_t = t(img)
    terms = dist(out_s, out_t, assign, _batch())
    assert set(terms) == {term} and terms[term].item() > 0
    terms[term].backward()
    assert all(p.grad is None for p in t.parameters())
    backbone = [p for p in s.model.model[0].parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone)
    if term == "logit":
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _params_of(s, "cls"))
    if term == "box":
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _params_of(s, "box"))
    if term == "feature":
        assert len(dist.adapters) == 3
        assert all(p.grad.abs().sum() > 0 for a in dist.adapters for p in a.parameters())


def test_all_terms_together_reach_every_student_parameter():
    torch.manual_seed(0)
    s = build_detector("yolov8n.yaml", ["person"]).train()
    t = build_detector("yolov8s.yaml", ["person"]).eval()
    dist = Distiller(KDConfig(teacher="x", logit=1.0, feature=1.0, box=1.0, box_loss="ld+iou"), s, t, IMG)
    img = torch.rand(2, 3, IMG, IMG)
    out_s = s(img)
    _, _, assign = s.loss(out_s, _batch())
    sum(dist(out_s, t(img), assign, _batch()).values()).backward()
    missing = [n for n, p in s.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing[:5]


def test_bounded_box_term():
    s = build_detector("yolov8n.yaml", ["person"]).train()
    t = build_detector("yolov8n.yaml", ["person"]).eval()
    dist = Distiller(KDConfig(teacher="x", box=1.0, box_loss="bounded"), s, t, IMG)
    img = torch.rand(2, 3, IMG, IMG)
    out_s = s(img)
    _, _, assign = s.loss(out_s, _batch())
    val = dist(out_s, t(img), assign, _batch())["box"]
    assert torch.isfinite(val)


def test_unpairable_models_fail_in_one_line():
    s = build_detector("yolov8n.yaml", ["person"])
    t = build_detector("yolov8n.yaml", ["person", "car"])
    with pytest.raises(ModelError, match="teacher classes"):
        check_pair(s, t)
    with pytest.raises(ModelError, match="no common feature stride"):
        pair_levels([8, 16], [32, 64])
    assert pair_levels([8, 16, 32], [16, 32, 64]) == [(1, 0), (2, 1)]


def test_width_override_makes_a_smaller_student():
    small = build_detector("yolov8n.yaml", ["person"], width=0.125)
    base = build_detector("yolov8n.yaml", ["person"])
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(p.numel() for p in base.parameters())


def test_wrong_checkpoints_fail_in_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="bad.pt"):
        load_detector(bad)
    clf = tmp_path / "clf.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, clf)
    with pytest.raises(ModelError, match="not an ultralytics detection checkpoint"):
        load_detector(clf)
    from cvkd.checkpoint import save_checkpoint

    lm = tmp_path / "lm.pt"
    save_checkpoint(lm, "lm", {}, {})
    with pytest.raises(ModelError, match="expected a 'detector' checkpoint"):
        load_detector(lm)
    with pytest.raises(ModelError, match="not found"):
        load_detector(tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="unknown"):
        build_detector("resnet50", ["person"])


def test_nothing_reaches_the_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    m = build_detector("yolo11n.yaml", ["person"]).train()
    out = m(torch.rand(1, 3, IMG, IMG))
    m.loss(out, {"batch_idx": torch.zeros(1), "cls": torch.zeros(1), "bboxes": torch.tensor([[1.0, 1, 30, 30]])})
    m.eval().predict(torch.rand(1, 3, IMG, IMG))


def test_teacher_score_mask_and_mlp_adapter():
    """feature_mask=teacher_score weights each cell by the teacher's max class probability (ultralytics' score-weighted
    L2); the MLP adapter's both convs get gradients."""
    from cvkd.losses import feature_hint

    torch.manual_seed(0)
    s = build_detector("yolov8n.yaml", ["person"]).train()
    t = build_detector("yolov8s.yaml", ["person"]).eval()
    kd = KDConfig(teacher="x", feature=1.0, feature_loss="hint", feature_mask="teacher_score", feature_adapter="mlp")
    dist = Distiller(kd, s, t, IMG)
    img = torch.rand(2, 3, IMG, IMG)
    out_s, out_t = s(img), t(img)
    _, _, assign = s.loss(out_s, _batch())
    loss = dist(out_s, out_t, assign, _batch())["feature"]
    expected, start = [], 0
    for lvl, (f_s, f_t) in enumerate(zip(out_s.feats, out_t.feats)):
        n = f_t.shape[-2] * f_t.shape[-1]
        score = out_t.cls_logits[:, start:start + n].sigmoid().amax(-1).reshape(2, *f_t.shape[-2:])  # (B, H, W)
        start += n
        sq = (dist.adapters[lvl](f_s) - f_t).pow(2).mean(1)  # (B, H, W)
        expected.append((sq * score).sum() / score.sum())
        assert torch.allclose(feature_hint(dist.adapters[lvl](f_s), f_t, score), expected[-1])
    assert torch.allclose(loss, torch.stack(expected).mean(), rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for a in dist.adapters for p in a.parameters())
    # feature_norm=joint: one score-weighted mean over the cells of all levels
    joint = Distiller(replace(kd, feature_norm="joint"), s, t, IMG)
    joint.adapters.load_state_dict(dist.adapters.state_dict())
    num = den = 0.0
    start = 0
    for lvl, (f_s, f_t) in enumerate(zip(out_s.feats, out_t.feats)):
        n = f_t.shape[-2] * f_t.shape[-1]
        score = out_t.cls_logits[:, start:start + n].sigmoid().amax(-1).reshape(2, *f_t.shape[-2:])  # (B, H, W)
        start += n
        num = num + ((joint.adapters[lvl](f_s) - f_t).pow(2).mean(1) * score).sum()
        den = den + score.sum()
    loss_joint = joint(out_s, out_t, assign, _batch())["feature"]
    assert torch.allclose(loss_joint, num / den, rtol=1e-5)


def test_no_adapter_distils_the_features_as_they_are_and_needs_the_teachers_channels():
    """kd.feature_adapter=none (self-distillation): CWD between the student's own features and the teacher's, no
    parameters of its own; zero against a copy of itself, and every student parameter that shapes the distilled
    features gets a gradient once they differ; a teacher of other channels is refused in one line."""
    import copy

    from cvkd.losses import cwd_loss

    torch.manual_seed(0)
    s = build_detector("yolov8n.yaml", ["person"]).train()
    t = copy.deepcopy(s)  # in train mode too: both normalise by the batch's statistics, so equal weights match
    kd = KDConfig(teacher="x", feature=1.0, feature_loss="cwd", feature_t=4.0, feature_adapter="none")
    dist = Distiller(kd, s, t, IMG)
    assert not list(dist.adapters.parameters())
    img = torch.rand(2, 3, IMG, IMG)
    out_s = s(img)
    with torch.no_grad():
        out_t = t(img)
    _, _, assign = s.loss(out_s, _batch())
    assert dist(out_s, out_t, assign, _batch())["feature"].abs() < 1e-6  # the FP32 copy of itself
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out_s = s(img)
    loss = dist(out_s, out_t, assign, _batch())["feature"]
    expected = torch.stack([cwd_loss(f_s, f_t, 4.0) for f_s, f_t in zip(out_s.feats, out_t.feats)]).mean()
    assert torch.allclose(loss, expected, rtol=1e-5) and loss > 0
    loss.backward()
    assert not any(p.grad is not None for p in t.parameters())
    backbone_neck = [p for n, p in s.named_parameters() if not n.startswith("model.model.22")]  # the head: not distilled
    assert backbone_neck and all(p.grad is not None for p in backbone_neck)
    with pytest.raises(ModelError, match="kd.feature_adapter=none needs the teacher's channels: student level 0"):
        Distiller(kd, s, build_detector("yolov8s.yaml", ["person"]).eval(), IMG)


def test_gt_feature_mask_weighs_background_by_feature_bg():
    """feature_mask=gt: cells inside GT boxes weigh 1, the others kd.feature_bg (default 0.5, as FGD), so the term is
    not the unmasked mean (the old default of 1 made gt the same as feature_mask=all)."""
    from cvkd.losses import box_mask

    torch.manual_seed(0)
    s = build_detector("yolov8n.yaml", ["person"]).train()
    t = build_detector("yolov8s.yaml", ["person"]).eval()
    kd = KDConfig(teacher="x", feature=1.0, feature_loss="hint", feature_mask="gt")
    dist = Distiller(kd, s, t, IMG)
    img = torch.rand(2, 3, IMG, IMG)
    out_s, out_t = s(img), t(img)
    _, _, assign = s.loss(out_s, _batch())
    loss = dist(out_s, out_t, assign, _batch())["feature"]
    expected, plain = [], []
    boxes, bidx = _batch()["bboxes"], _batch()["batch_idx"]
    for lvl, (f_s, f_t) in enumerate(zip(out_s.feats, out_t.feats)):
        fg = box_mask(boxes, bidx, 2, f_t.shape[-2:], out_t.strides[lvl])  # (B, H, W)
        w = fg + 0.5 * (1 - fg)
        sq = (dist.adapters[lvl](f_s) - f_t).pow(2).mean(1)  # (B, H, W)
        expected.append((sq * w).sum() / w.sum())
        plain.append(sq.mean())
    assert torch.allclose(loss, torch.stack(expected).mean(), rtol=1e-5)
    assert not torch.allclose(loss, torch.stack(plain).mean(), rtol=1e-3)


@pytest.mark.parametrize("avx512_bf16,amx", [(False, False), (True, False), (False, True)])
def test_auto_teacher_precision_asks_for_native_bf16(monkeypatch, avx512_bf16, amx):
    """kd.teacher_precision=auto picks bf16 only where the CPU has bf16 instructions: oneDNN also says "supported"
    where it emulates bf16 on AVX-512, which made the teacher's pass ~2x slower than fp32."""
    from cvkd.engine.distill import cpu_bf16_teacher

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert cpu_bf16_teacher("auto", torch.device("cpu")) == (avx512_bf16 or amx)
    assert cpu_bf16_teacher("bf16", torch.device("cpu")) and not cpu_bf16_teacher("fp32", torch.device("cpu"))


def test_bf16_teacher_forward_matches_fp32_and_feeds_every_term():
    """kd.teacher_precision: the bf16 + channels_last teacher pass returns contiguous fp32 outputs close to the fp32
    pass, carries no gradient, and every KD term computed from it is close to the fp32 one."""
    import copy

    from cvkd.engine.distill import cpu_bf16_teacher, teacher_forward

    assert cpu_bf16_teacher("bf16", torch.device("cpu")) and not cpu_bf16_teacher("fp32", torch.device("cpu"))
    assert not cpu_bf16_teacher("auto", torch.device("cuda")) and not cpu_bf16_teacher("bf16", torch.device("cuda"))
    assert not cpu_bf16_teacher("auto", torch.device("cpu"), smooth=False)  # two-stage teachers stay fp32 on auto
    torch.manual_seed(0)
    s = build_detector("yolov8n.yaml", ["person"]).train()
    t = build_detector("yolov8s.yaml", ["person"]).eval()
    t_cl = copy.deepcopy(t).to(memory_format=torch.channels_last)
    img = torch.rand(2, 3, IMG, IMG)
    ref, out = teacher_forward(t, img, False), teacher_forward(t_cl, img, True)
    for a, b in [*zip(ref.feats, out.feats), (ref.cls_logits, out.cls_logits), (ref.box_bins, out.box_bins)]:
        assert b.dtype == torch.float32 and b.is_contiguous() and not b.requires_grad
        assert (a - b).norm() / a.norm() < 0.05
    assert (ref.cls_logits.sigmoid() - out.cls_logits.sigmoid()).abs().max() < 0.02
    kd = KDConfig(teacher="x", logit=1.0, feature=1.0, feature_loss="hint", feature_mask="teacher_score", box=1.0)
    dist = Distiller(kd, s, t, IMG)
    out_s = s(img)
    _, _, assign = s.loss(out_s, _batch())
    terms_ref, terms = dist(out_s, ref, assign, _batch()), dist(out_s, out, assign, _batch())
    for k in terms_ref:
        assert torch.isfinite(terms[k]) and abs(float((terms[k] - terms_ref[k]).detach())) < 0.05 * abs(float(terms_ref[k].detach())) + 1e-4, k
    sum(terms.values()).backward()
    assert all(p.grad is None for p in t_cl.parameters())


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo26n.yaml"])
def test_folding_batchnorm_keeps_the_teachers_outputs(name):
    torch.manual_seed(0)
    m = build_detector(name, ["person"])
    for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):  # statistics far from identity
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
    with pytest.raises(ModelError, match="eval mode"):
        m.train().fold_batchnorm()
    m.eval().requires_grad_(False)  # as the trainer's teacher
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        before = m(x)
        assert m.fold_batchnorm() > 50
    assert not any(p.requires_grad for p in m.parameters())  # the folded teacher stays frozen
    # ultralytics' convention for a fused Conv (its fuse() skips a Conv without bn)
    assert not any(hasattr(mod, "bn") for mod in m.modules() if type(mod).__name__ in ("Conv", "DWConv"))
    with torch.no_grad():
        after = m(x)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    for a, b in zip(before.feats + [before.cls_logits, before.boxes], after.feats + [after.cls_logits, after.boxes]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-3)
    if before.cls_logits_o2o is not None:
        torch.testing.assert_close(after.cls_logits_o2o, before.cls_logits_o2o, rtol=1e-4, atol=1e-3)
