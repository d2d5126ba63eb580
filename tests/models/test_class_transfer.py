"""A pretrained model of other classes as the student's start: what is copied, what is re-initialised, class rows kept
by name, for a plain start and for weight selection, and through the trainer."""
import pytest
import torch

from cvkd.models import ModelError, build_detector
from cvkd.models.class_transfer import class_tensor_layout, transfer_weights
from cvkd.models.weight_select import init_from_larger


def _randomised(m):
    torch.manual_seed(1)
    with torch.no_grad():
        for t in m.model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    return m


def test_layout_finds_the_class_outputs_of_each_family():
    yolo = class_tensor_layout(build_detector("yolov8n.yaml", ["a", "b"]))
    assert sorted(yolo) == sorted(f"model.22.cv3.{i}.2.{p}" for i in range(3) for p in ("weight", "bias"))
    assert set(yolo.values()) == {(1, 0)}
    e2e = class_tensor_layout(build_detector("yolo26n.yaml", ["a"]))
    assert len(e2e) == 12 and sum("one2one" in k for k in e2e) == 6  # both branches
    rcnn = class_tensor_layout(build_detector("fasterrcnn_mobilenet_v3_small_fpn", ["a", "b"]))
    assert rcnn == {"roi_heads.box_predictor.cls_score.weight": (1, 1), "roi_heads.box_predictor.cls_score.bias": (1, 1),
                    "roi_heads.box_predictor.bbox_pred.weight": (4, 4), "roi_heads.box_predictor.bbox_pred.bias": (4, 4)}


def test_pretrained_of_other_classes_keeps_shared_rows_by_name():
    src = _randomised(build_detector("yolov8n.yaml", ["person", "car", "dog"]))
    dst = build_detector("yolov8n.yaml", ["dog", "person", "bike"])
    fresh = {k: v.clone() for k, v in dst.model.state_dict().items()}
    report = transfer_weights(dst, src, "coco.pt")
    s, d = src.model.state_dict(), dst.model.state_dict()
    layout = class_tensor_layout(dst)
    assert report.class_tensors == 6 and report.kept_classes == ["dog", "person"]
    assert report.copied == len(d) and report.reinit == 0
    for key in d:
        if key in layout:
            torch.testing.assert_close(d[key][0], s[key][2])  # dog <- dog
            torch.testing.assert_close(d[key][1], s[key][0])  # person <- person
            torch.testing.assert_close(d[key][2], fresh[key][2])  # bike: fresh (ultralytics' prior bias kept)
        else:
            torch.testing.assert_close(d[key], s[key])


def test_faster_rcnn_background_and_per_class_boxes():
    src = _randomised(build_detector("fasterrcnn_mobilenet_v3_small_fpn", ["car", "person"]))
    dst = build_detector("fasterrcnn_mobilenet_v3_small_fpn", ["person"])
    transfer_weights(dst, src, "rcnn.pt")
    s, d = src.model.state_dict(), dst.model.state_dict()
    w = "roi_heads.box_predictor."
    torch.testing.assert_close(d[w + "cls_score.weight"], s[w + "cls_score.weight"][[0, 2]])  # background, person
    torch.testing.assert_close(d[w + "bbox_pred.weight"], s[w + "bbox_pred.weight"][[0, 1, 2, 3, 8, 9, 10, 11]])


def test_weight_selection_with_other_classes():
    big = _randomised(build_detector("yolov8s.yaml", ["car", "person"]))
    small = build_detector("yolov8n.yaml", ["person"])
    transfer_weights(small, big, "yolov8s.pt", select=True)
    same = build_detector("yolov8n.yaml", ["person"])
    big_person = build_detector("yolov8s.yaml", ["person"])
    sb, layout = big.model.state_dict(), class_tensor_layout(big)
    with torch.no_grad():  # the same network with only its person rows: plain weight selection must agree
        big_person.model.load_state_dict({k: (v[1:] if k in layout else v) for k, v in sb.items()})
    init_from_larger(same.model, big_person.model, "x")
    for k, v in small.model.state_dict().items():
        torch.testing.assert_close(v, same.model.state_dict()[k])
    with pytest.raises(ModelError, match="cannot initialise the student by weight selection"):
        transfer_weights(build_detector("yolov8s.yaml", ["person"]), build_detector("yolov8n.yaml", ["person"]), "n",
                         select=True)
