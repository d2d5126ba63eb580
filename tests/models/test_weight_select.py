import pytest
import torch

from cvkd.models import ModelError, build_detector
from cvkd.models.weight_select import evenly_spaced, init_from_larger, select_tensor, weight_selection


def test_evenly_spaced_indices():
    assert evenly_spaced(8, 4).tolist() == [0, 2, 4, 6]
    assert evenly_spaced(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert evenly_spaced(10, 3).tolist() == [0, 3, 6]


def test_select_tensor_by_hand():
    t = torch.arange(24.0).reshape(4, 6)
    assert select_tensor(t, torch.Size([2, 3])).tolist() == [[0.0, 2.0, 4.0], [12.0, 14.0, 16.0]]
    assert select_tensor(t, t.shape).equal(t)


def test_weight_selection_errors_name_the_source():
    small = {"a.weight": torch.zeros(2, 2)}
    with pytest.raises(ModelError, match="big.pt: .*no counterpart .*a.weight"):
        weight_selection(small, {"b.weight": torch.zeros(4, 4)}, "big.pt")
    with pytest.raises(ModelError, match="big.pt: .*a.weight is \\(1, 4\\)"):
        weight_selection(small, {"a.weight": torch.zeros(1, 4)}, "big.pt")
    with pytest.raises(ModelError, match="a.weight"):
        weight_selection(small, {"a.weight": torch.zeros(4)}, "big.pt")


def _widen(state_s: dict, state_l: dict) -> dict:
    """A 2x-wide copy of a model: every output channel twice (2i, 2i+1), input weights on the even copy only, so
    that the wide model computes the small one's function (each wide channel pair holds one small channel)."""
    out = {}
    for k, t in state_s.items():
        shape_l = state_l[k].shape
        if t.dim() >= 1 and shape_l[0] == 2 * t.shape[0]:
            t = t.repeat_interleave(2, dim=0)
        if t.dim() >= 2 and shape_l[1] == 2 * t.shape[1]:
            t = torch.stack([t, torch.zeros_like(t)], dim=2).flatten(1, 2)  # (O, 2*I, ...): even inputs only
        assert t.shape == shape_l, k
        out[k] = t
    return out


def test_every_second_channel_is_consistent_through_yolo():
    """YOLOv8n inside a YOLOv8s (each channel duplicated): the s model computes the same detections, which holds
    only if every second channel of each tensor lines up through C2f's chunks, SPPF and the neck's concatenations;
    weight selection then gives the n model back exactly."""
    torch.manual_seed(0)
    small, large = build_detector("yolov8n.yaml", ["person"]), build_detector("yolov8s.yaml", ["person"])
    for m in small.model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    large.model.load_state_dict(_widen(small.model.state_dict(), large.model.state_dict()))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y_s, y_l = small.model.eval()(x)[0], large.model.eval()(x)[0]  # (1, 4 + classes, anchors) each
    assert torch.allclose(y_s, y_l, atol=1e-4)

    fresh = build_detector("yolov8n.yaml", ["person"])
    narrowed = init_from_larger(fresh.model, large.model, "yolov8s")
    assert narrowed > 0
    for k, v in small.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[k], v), k
