"""YOLO26 (end-to-end head, no DFL) in the YOLO adapter: both branches' outputs, ultralytics' own E2E loss and
NMS-free prediction reproduced, the KD terms on this head (and across families), weight selection 26s -> 26n."""
import pytest
import torch

from cvkd.engine.config import KDConfig
from cvkd.engine.distill import Distiller
from cvkd.models import ModelError, build_detector
from cvkd.models.weight_select import init_from_larger
from cvkd.models.yolo import e2e_one2many_weight

IMG = 64
A = sum((IMG // s) ** 2 for s in (8, 16, 32))


def _batch():
    return {"batch_idx": torch.tensor([0.0, 1.0, 1.0]), "cls": torch.tensor([0.0, 1.0, 0.0]),
            "bboxes": torch.tensor([[4.0, 4.0, 40.0, 60.0], [10.0, 20.0, 30.0, 50.0], [32.0, 8.0, 60.0, 40.0]])}


def _ul_batch(b):
    """The same boxes as ultralytics' loss takes them: normalised xywh."""
    xyxy = b["bboxes"]
    xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1) / IMG
    return {"batch_idx": b["batch_idx"], "cls": b["cls"], "bboxes": xywh}


def test_both_branches_shapes_and_no_bins():
    m = build_detector("yolo26n.yaml", ["person", "car"]).train()
    assert m.end2end and m.reg_max is None and m.strides == [8, 16, 32]
    out = m(torch.rand(2, 3, IMG, IMG))
    assert out.box_bins is None
    for logits, boxes in ((out.cls_logits, out.boxes), (out.cls_logits_o2o, out.boxes_o2o)):
        assert logits.shape == (2, A, 2) and boxes.shape == (2, A, 4)
    assert [f.shape[-1] for f in out.feats] == [8, 4, 2]
    plain = build_detector("yolov8n.yaml", ["person"]).train()(torch.rand(1, 3, IMG, IMG))
    assert plain.cls_logits_o2o is None and plain.boxes_o2o is None


def test_loss_is_ultralytics_e2e_loss_and_its_weight_decays():
    from ultralytics.utils.loss import E2ELoss

    torch.manual_seed(0)
    m = build_detector("yolo26n.yaml", ["person", "car"]).train()
    img, b = torch.rand(2, 3, IMG, IMG), _batch()
    for epoch, epochs in ((0, 10), (4, 10), (9, 10)):
        m.start_epoch(epoch, epochs)
        out = m(img)
        total, items, assign = m.loss(out, b)
        ref = E2ELoss(m.model)
        ref.one2many.hyp.epochs = epochs
        for _ in range(epoch):  # ultralytics' trainer calls update() after each epoch
            ref.update()
        assert ref.o2m == pytest.approx(m.one2many_weight, abs=1e-9)
        ref_total, _ = ref(out.raw, _ul_batch(b))
        torch.testing.assert_close(total, ref_total.sum(), rtol=1e-5, atol=1e-5)
        assert set(items) == {"box", "cls", "l1"} and assign.fg_mask.any()
    assert e2e_one2many_weight(0, 10) == pytest.approx(0.8) and e2e_one2many_weight(9, 10) == pytest.approx(0.1)


def canonical(rows: torch.Tensor) -> torch.Tensor:
    """(N, 6) x1 y1 x2 y2 score class -> the rows scoring above the lowest score, sorted by (-score, box)."""
    keep = rows[rows[:, 4] > rows[:, 4].min() + 1e-6]
    keys = sorted(range(len(keep)), key=lambda i: (-round(float(keep[i, 4]), 6), *keep[i, :4].tolist()))
    return keep[keys]


def test_predict_is_nms_free_top_k_of_the_one_to_one_branch():
    torch.manual_seed(0)
    m = build_detector("yolo26n.yaml", ["person", "car"]).eval()
    img = torch.rand(2, 3, IMG, IMG)
    head = m.model.model[-1]
    with torch.no_grad():  # distinct scores: a fresh head's equal biases leave ties whose order is arbitrary
        for p in head.one2one_cv3.parameters():
            p.add_(0.3 * torch.randn_like(p))
    head.max_det = 20
    m.model.end2end = True  # what ultralytics' validator and exporter set for NMS-free inference
    with torch.no_grad():
        ref = m.model(img)[0]  # (B, 20, 6): ultralytics' own end-to-end output, x1 y1 x2 y2 score class
    preds = m.predict(img, conf=0.0, max_det=20)
    for b in range(2):
        mine = torch.cat([preds[b]["boxes"], preds[b]["scores"][:, None], preds[b]["labels"][:, None].float()], 1)
        # equal scores (background cells of a random net) come in any order, and a tie at the 20th place may pick
        # either cell: compare the rows above the 20th score, each tie group sorted by its boxes
        torch.testing.assert_close(mine[:, 4], ref[b, :, 4].sort(descending=True).values, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(canonical(mine), canonical(ref[b]), rtol=1e-4, atol=1e-3)
    m.e2e_nms = True  # the one-to-many branch + NMS, as ultralytics also reports
    assert all(len(p["boxes"]) <= 20 for p in m.predict(img, conf=0.0, max_det=20))


@pytest.mark.parametrize("teacher_name", ["yolo26s.yaml", "yolov8s.yaml"])
def test_kd_terms_reach_every_student_parameter_and_not_the_teacher(teacher_name):
    torch.manual_seed(0)
    s = build_detector("yolo26n.yaml", ["person", "car"]).train()
    t = build_detector(teacher_name, ["person", "car"]).eval()
    kd = KDConfig(teacher="x", logit=1.0, logit_branch="both", feature=1.0, feature_loss="hint", box=1.0,
                  box_loss="iou")
    dist = Distiller(kd, s, t, IMG)
    img = torch.rand(2, 3, IMG, IMG)
    out_s = s(img)
    _, _, assign = s.loss(out_s, _batch())
    terms = dist(out_s, t(img), assign, _batch())
    assert set(terms) == {"logit", "feature", "box"} and all(v.item() > 0 for v in terms.values())
    sum(terms.values()).backward()
    assert all(p.grad is None for p in t.parameters())
    missing = [n for n, p in s.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    # box KD imitates the one-to-many boxes; the one-to-one box branch learns from the detection loss alone
    assert missing and all(".one2one_cv2." in n for n in missing), missing[:5]
    for n, p in s.named_parameters():
        p.grad = None
    out_s = s(img)
    s.loss(out_s, _batch())[0].backward()
    assert all(p.grad is not None for p in s.parameters())


def test_ld_is_refused_in_one_line_and_logit_branch_needs_an_e2e_student():
    s = build_detector("yolo26n.yaml", ["person"])
    for t in (build_detector("yolo26s.yaml", ["person"]), build_detector("yolov8s.yaml", ["person"])):
        with pytest.raises(ModelError, match="LD distils DFL bins, and the student .* has none"):
            Distiller(KDConfig(teacher="x", box=1.0, box_loss="ld"), s, t, IMG)
    with pytest.raises(ModelError, match="LD distils DFL bins, and the teacher"):
        Distiller(KDConfig(teacher="x", box=1.0, box_loss="ld+iou"), build_detector("yolov8n.yaml", ["person"]),
                  build_detector("yolo26s.yaml", ["person"]), IMG)
    with pytest.raises(ModelError, match="kd.logit_branch=both needs a student with a one-to-one branch"):
        Distiller(KDConfig(teacher="x", logit=1.0, logit_branch="both"), build_detector("yolov8n.yaml", ["person"]),
                  build_detector("yolo26s.yaml", ["person"]), IMG)


def test_weight_selection_from_yolo26s_into_yolo26n():
    torch.manual_seed(0)
    big, small = build_detector("yolo26s.yaml", ["person"]), build_detector("yolo26n.yaml", ["person"])
    n = init_from_larger(small.model, big.model, "yolo26s")
    assert n > 0
    w_big, w_small = big.model.model[0].conv.weight, small.model.model[0].conv.weight  # (32, 3, 3, 3) -> (16, ...)
    assert w_small.shape[0] * 2 == w_big.shape[0] and torch.equal(w_small, w_big[::2])
    o2o_big, o2o_small = big.model.model[-1].one2one_cv3, small.model.model[-1].one2one_cv3
    assert sum(p.numel() for p in o2o_small.parameters()) < sum(p.numel() for p in o2o_big.parameters())
    out = small.train()(torch.rand(1, 3, IMG, IMG))
    assert torch.isfinite(out.cls_logits).all() and torch.isfinite(out.cls_logits_o2o).all()


def _rows(det: dict) -> list[tuple]:
    """Detections as sorted (score, label, box) rows: equal scores (ties) may come in either order."""
    return sorted((round(float(s), 5), int(k), *[round(float(v), 2) for v in b])
                  for s, k, b in zip(det["scores"], det["labels"], det["boxes"]))


def test_onnx_exports_match_pytorch(tmp_path):
    """e2e: NMS-free top-k inside the graph, no NMS op, equal to predict(); full: the one-to-many branch decoded as
    forward() does; raw: the one-to-many per-level distances and logits; INT8 of the e2e file runs."""
    import onnx

    from cvkd.deploy import export_onnx
    from cvkd.deploy.ort_detector import OrtDetector

    torch.manual_seed(0)
    m = build_detector("yolo26n.yaml", ["person", "car"]).eval()
    with torch.no_grad():
        for p in [*m.model.model[-1].one2one_cv3.parameters(), *m.model.model[-1].cv3.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    x = torch.rand(1, 3, IMG, IMG)
    e2e = export_onnx(m, tmp_path / "e2e.onnx", IMG, "e2e", max_det=20)
    ops = {n.op_type for n in onnx.load(str(e2e)).graph.node}
    assert "TopK" in ops and "NonMaxSuppression" not in ops
    assert _rows(OrtDetector(e2e).predict(x, conf=0.0, max_det=20)[0]) == _rows(m.predict(x, conf=0.0, max_det=20)[0])
    full = export_onnx(m, tmp_path / "full.onnx", IMG, "full")
    with torch.no_grad():
        out = m(x)
    got = torch.from_numpy(OrtDetector(full).run(x)[0][0])  # (A, 4 + K)
    torch.testing.assert_close(got[:, :4], out.boxes[0], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(got[:, 4:], out.cls_logits[0].sigmoid(), atol=1e-5, rtol=1e-4)
    raw = onnx.load(str(export_onnx(m, tmp_path / "raw.onnx", IMG, "raw")))
    assert [o.name for o in raw.graph.output] == ["box_s8", "cls_s8", "box_s16", "cls_s16", "box_s32", "cls_s32"]
    dims = [d.dim_value for d in raw.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 4, IMG // 8, IMG // 8]  # distances, no DFL bins
    with pytest.raises(Exception, match="needs an end-to-end head"):
        export_onnx(build_detector("yolov8n.yaml", ["person"]), tmp_path / "no.onnx", IMG, "e2e")
