"""QAT building blocks: fake-quant convolutions where the scheme says, BatchNorm folded, straight-through gradients,
and an ONNX QDQ export that ONNX Runtime runs with INT8 kernels and that matches the fake-quant PyTorch model."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from cvkd.deploy import export_onnx
from cvkd.deploy.qat import (
    FakeQuantConv,
    FakeQuantSiLU,
    RangeObserver,
    dequantize_after_views,
    fold_weight_quantization,
    freeze_ranges,
    learned_range_summary,
    prepare_qat,
    quantize_biases,
    start_learning,
)
from cvkd.models import build_detector

IMG = 64


def calibrated(scheme: str, lively: bool = False, arch: str = "yolov8n.yaml", ranges: str = "minmax"):
    """A calibrated fake-quant YOLOv8n; ``lively``: weights drawn wider than the init, whose deep activations are
    nearly constant (quantized to one level, leaving the head convs without a gradient); ``ranges="learned"``: its
    scales then learned, each moved by a factor of 1-1.35 as training would (not shrunk: the deep activations of a
    random model are near-constant, and a smaller grid would clip all of them)."""
    torch.manual_seed(0)
    m = build_detector(arch, ["person"])
    if lively:
        with torch.no_grad():
            for name, p in m.model.named_parameters():
                if p.dim() == 4 and ".dfl." not in name:
                    p.normal_(0, (2 / p[0].numel()) ** 0.5)  # He init
    n = prepare_qat(m.model, scheme, ranges=ranges)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(2, 3, IMG, IMG))
        if ranges == "learned":
            start_learning(m.model)
            for name, p in m.model.named_parameters():
                if name.endswith("log_scale"):
                    p.add_(torch.empty_like(p).uniform_(0.0, 0.3))
    freeze_ranges(m.model)
    return m.eval(), n


def test_every_conv_but_dfl_is_fake_quantized_and_bn_folded():
    m, n = calibrated("per_channel")
    wrapped = {name for name, mod in m.model.named_modules() if isinstance(mod, FakeQuantConv)}
    bare = [name for name, mod in m.model.named_modules()
            if isinstance(mod, torch.nn.Conv2d) and name.rsplit(".", 1)[0] not in wrapped]
    assert n == len(wrapped) == 63 and bare == ["model.22.dfl.conv"]  # DFL's fixed expectation stays float
    # every conv block's SiLU (57: the head's last convs have none), each its own module (ultralytics shares one)
    silus = [mod for mod in m.model.modules() if isinstance(mod, FakeQuantSiLU)]
    assert len(silus) == len({id(s) for s in silus}) == 57
    assert not any(type(mod) is torch.nn.SiLU for mod in m.model.modules())
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.model.modules())
    # the folded weights and biases (a bias the BN gave a conv that had none) are what QAT trains
    frozen = [name for name, p in m.model.named_parameters() if not p.requires_grad and ".dfl." not in name]
    assert frozen == []


@pytest.mark.parametrize("symmetric", [True, False])
def test_training_reads_the_same_scale_as_export_without_leaving_the_device(symmetric):
    obs = RangeObserver(symmetric)
    x = torch.tensor([-0.7, 0.05, 1.3, 2.9])
    obs.train()(x)  # the first batch sets the range: [-0.7, 2.9]
    scale, zero, _, _ = obs.qparams()
    assert scale == pytest.approx(2.9 / 127 if symmetric else 3.6 / 255) and zero == (0 if symmetric else 50)
    scale_t, zero_t = obs.qparams_tensor()
    assert scale_t.item() == pytest.approx(scale) and zero_t.item() == zero and zero_t.dtype == torch.int32
    obs.frozen = True
    # tensor (training, float32 scale) and float (export, float64 scale) paths agree to rounding
    torch.testing.assert_close(obs.train()(x), obs.eval()(x), rtol=0, atol=1e-6)
    fresh = RangeObserver(symmetric)
    fresh.load_state_dict(obs.state_dict())
    assert fresh.calibrated and torch.equal(fresh.eval()(x), obs(x))
    assert not RangeObserver(symmetric).calibrated


def test_a_learned_range_starts_at_its_calibration_and_gets_the_lsq_gradient():
    obs = RangeObserver(True, learned=True).train()
    x = torch.tensor([0.26, -0.33, 13.0, -13.0])
    fixed = RangeObserver(True).train()
    fixed(x), obs(x)
    obs.start_learning()
    fixed.frozen = True
    assert obs.is_learning and obs.qparams()[0] == pytest.approx(fixed.qparams()[0], rel=1e-6)  # 13 / 127
    torch.testing.assert_close(obs(x), fixed(x), rtol=0, atol=1e-6)
    obs(x * 3)
    assert obs.qparams()[0] == pytest.approx(13 / 127, rel=1e-6)  # min/max no longer moves it
    with torch.no_grad():
        obs.log_scale.fill_(torch.log(torch.tensor(0.1)).item())
    obs(x).sum().backward()
    # d x_q / d s: round(x/s) - x/s inside the grid (3 - 2.6, -3 + 3.3), q_max / q_min where clipped (130, -130);
    # d / d log s = s * d / d s
    assert obs.log_scale.grad.item() == pytest.approx(0.1 * (0.4 + 0.3 + 127 - 128), abs=1e-5)
    assert obs.qparams()[0] == pytest.approx(0.1) and obs.qparams_tensor()[0].item() == pytest.approx(0.1)
    fresh = RangeObserver(True, learned=True)
    fresh.load_state_dict(obs.state_dict())  # a checkpoint's learned range is the one exported
    assert fresh.is_learning and fresh.qparams() == obs.qparams()
    obs.frozen, obs.log_scale.grad = True, None
    obs(x.clone().requires_grad_()).sum().backward()
    assert obs.log_scale.grad is None  # frozen: the last epochs train against fixed scales


def test_learned_ranges_train_with_their_own_optimizer_and_every_used_scale_gets_a_gradient():
    from cvkd.engine.config import TrainConfig
    from cvkd.engine.optim import build_optimizer, build_range_optimizer

    m, _ = calibrated("npu", lively=True, ranges="learned")
    scales = {id(p) for k, p in m.model.named_parameters() if k.endswith("log_scale")}
    assert len(scales) == 246  # every observer: conv inputs and outputs, SiLUs' sigmoid and product, residual sums
    cfg = TrainConfig(optimizer="sgd", qat_range_lr=0.02)
    opt, _, _ = build_optimizer([m.model], cfg, 1, 1)
    ranges = build_range_optimizer([m.model], cfg)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & scales and {id(p) for p in ranges.param_groups[0]["params"]} == scales
    assert isinstance(ranges, torch.optim.Adam) and ranges.param_groups[0]["lr"] == 0.02
    assert build_range_optimizer([build_detector("yolov8n.yaml", ["person"]).model], cfg) is None
    m.train()
    freeze_ranges(m.model, False)
    out = m(torch.rand(2, 3, IMG, IMG))
    (out.cls_logits.sigmoid().sum() + out.boxes.sum() * 1e-3).backward()
    # unused: the input scales of convs that read their producer's grid
    grads = [o.log_scale.grad is not None and bool(o.log_scale.grad.abs() > 0) for o in m.model.modules()
             if isinstance(o, RangeObserver)]
    readers = sum(1 for mod in m.model.modules() if isinstance(mod, FakeQuantConv) and int(mod.input_grid) == 1)
    assert sum(grads) == 246 - readers and readers > 0
    before = {k: p.detach().clone() for k, p in m.model.named_parameters() if k.endswith("log_scale")}
    ranges.step()
    moved = [k for k, p in m.model.named_parameters() if k.endswith("log_scale") and not torch.equal(p, before[k])]
    assert len(moved) == 246 - readers
    assert "of 246 scales in use" in learned_range_summary(m.model)


def test_straight_through_gradients_reach_every_student_weight():
    m, _ = calibrated("npu", lively=True)
    m.train()
    freeze_ranges(m.model, False)
    out = m(torch.rand(2, 3, IMG, IMG))
    (out.cls_logits.sigmoid().sum() + out.boxes.sum() * 1e-3).backward()
    params = [(k, p) for k, p in m.named_parameters() if ".dfl." not in k]
    assert all(p.requires_grad for _, p in params)  # folded convolutions train too
    assert not [k for k, p in params if p.grad is None or not p.grad.abs().sum()]


def run_in_ort_as_the_fake_quant_model(path, x, ref) -> collections.Counter:
    """Run the exported QDQ file in ORT, check its output against the fake-quant model's ``ref``; the op counts of
    the graph ORT optimised (fused) from it."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(path.parent / "opt.onnx")
    out = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    # ORT's integer kernels round like the fake-quant model; a value on a rounding boundary may land one level off,
    # which moves a few outputs by a step: all close, nearly all equal to float rounding. How many land off depends on
    # the CPU's int8 instructions (ORT picks its kernels by them): 0.96-0.99 equal on one machine, over 0.99 on another
    for got, want, fine in ((out[..., :4], ref.boxes.numpy(), 1e-3 * IMG),
                            (out[..., 4:], ref.cls_logits.sigmoid().numpy(), 1e-5)):
        np.testing.assert_allclose(got, want, atol=10 * fine)
        assert (np.abs(got - want) <= fine).mean() >= 0.95
    return collections.Counter(nd.op_type for nd in onnx.load(str(path.parent / "opt.onnx")).graph.node)


@pytest.mark.parametrize("scheme,ranges", [("per_channel", "minmax"), ("npu", "minmax"), ("npu", "learned")])
def test_qdq_export_runs_in_ort_and_matches_the_fake_quant_model(scheme, ranges, tmp_path):
    # lively weights: a trained model's activation ranges (the default init's deep activations are ~0, and ORT's fused
    # sigmoid and product are not exact on grids of 1e-8)
    m, n = calibrated(scheme, lively=True, ranges=ranges)
    x = torch.rand(1, 3, IMG, IMG)
    with torch.no_grad():
        ref = m(x)
    path = export_onnx(m, tmp_path / "q.onnx", IMG, "full", opset=13)
    model = onnx.load(str(path))
    # the two chunks of each of the 8 C2f blocks, and the head's box and class maps flattened at each of 3 levels
    assert dequantize_after_views(model) == 16 + 6
    assert quantize_biases(model) == n  # every conv: an int32 bias, as ORT's own quantizer writes
    fp32_size = path.stat().st_size
    assert fold_weight_quantization(model) == n  # int8 weights stored, float weights gone
    onnx.save(model, str(path))
    assert path.stat().st_size < 0.4 * fp32_size
    ops = run_in_ort_as_the_fake_quant_model(path, x, ref)
    if scheme == "per_channel":  # ORT fuses DQ -> Conv -> Q into its INT8 kernel for every convolution
        assert ops["QLinearConv"] == n and ops["Conv"] == 0  # (the export writes DFL as softmax + expectation)
        # and runs every SiLU, residual sum and nearly every concat in INT8 too: no float sigmoid but the decode
        # tail's, a quantize only where the graph starts and where the head concatenates levels
        assert ops["QLinearSigmoid"] == ops["QLinearMul"] == 57 and ops["Sigmoid"] <= 1
        assert ops["QLinearAdd"] == 6 and ops["QLinearConcat"] >= 11 and ops["QuantizeLinear"] <= 3
    else:  # per-tensor symmetric: scales are single numbers (ORT's CPU runs most of these convs dequantized)
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        produced = {o: nd for nd in model.graph.node for o in nd.output}
        w_dq = [produced[nd.input[1]] for nd in model.graph.node if nd.op_type == "Conv" and nd.input[1] in produced]
        assert len(w_dq) == n and all(inits[d.input[1]].size == 1 for d in w_dq if d.input[1] in inits)


def test_a_tensor_is_quantized_once_where_it_is_made(tmp_path):
    """conv -> SiLU -> conv: the second conv reads the SiLU's grid (Mul -> Q -> DQ -> Conv), not a grid of its own
    (no DQ -> Q requantization between them), as ORT's own quantizer places QDQ."""
    from ultralytics.nn.modules import Conv

    torch.manual_seed(0)
    net = torch.nn.Sequential(Conv(3, 8, 3), Conv(8, 8, 3), torch.nn.Conv2d(8, 4, 1))
    assert prepare_qat(net, "per_channel") == 3
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, 3, 16, 16))
    assert [int(c.input_grid) for c in net.modules() if isinstance(c, FakeQuantConv)] == [0, 1, 1]
    net.eval()
    torch.onnx.export(net, (torch.rand(1, 3, 16, 16),), str(tmp_path / "n.onnx"), dynamo=False, opset_version=13)
    g = onnx.load(str(tmp_path / "n.onnx")).graph
    producer = {o: nd for nd in g.node for o in nd.output}
    convs = [nd for nd in g.node if nd.op_type == "Conv"]
    for conv in convs[1:]:
        dq = producer[conv.input[0]]
        q = producer[dq.input[0]]
        assert (dq.op_type, q.op_type, producer[q.input[0]].op_type) == ("DequantizeLinear", "QuantizeLinear", "Mul")
    requantized = [nd for nd in g.node if nd.op_type == "QuantizeLinear" and nd.input[0] in producer
                   and producer[nd.input[0]].op_type == "DequantizeLinear"]
    assert requantized == []


def test_yolo26_qat_exports_its_one_to_one_head_as_int8_and_matches_the_fake_quant_model(tmp_path):
    m, n = calibrated("per_channel", lively=True, arch="yolo26n.yaml")
    head = f"model.{len(m.model.model) - 1}."
    one_to_many = [k for k, mod in m.model.named_modules() if isinstance(mod, FakeQuantConv)
                   and k.startswith(head) and k.split(".")[2] in ("cv2", "cv3")]
    assert n == 126 and len(one_to_many) == 24  # both branches train quantized
    x = torch.rand(1, 3, IMG, IMG)
    with torch.no_grad():
        ref = m(x)
    path = export_onnx(m, tmp_path / "q.onnx", IMG, "full", opset=13)
    model = onnx.load(str(path))
    # the deployed graph holds the one-to-one branch only: the one-to-many convs are not exported
    dequantize_after_views(model)
    assert quantize_biases(model) == fold_weight_quantization(model) == n - len(one_to_many)
    onnx.save(model, str(path))
    ops = run_in_ort_as_the_fake_quant_model(path, x, ref)
    assert ops["QLinearConv"] == n - len(one_to_many) and ops["Conv"] == 0


def test_kd_terms_reach_the_quantized_student_and_not_the_teacher():
    from cvkd.engine.config import KDConfig
    from cvkd.engine.distill import Distiller

    s, _ = calibrated("per_channel", lively=True)
    s.train()
    t = build_detector("yolov8s.yaml", ["person"]).eval()
    for p in t.parameters():
        p.requires_grad_(False)
    dist = Distiller(KDConfig(teacher="x", logit=1.0, feature=1.0, box=1.0, box_loss="ld+iou"), s, t, IMG)
    img = torch.rand(2, 3, IMG, IMG)
    batch = {"batch_idx": torch.tensor([0.0]), "cls": torch.tensor([0.0]), "bboxes": torch.tensor([[4.0, 4, 40, 60]])}
    out_s = s(img)
    with torch.no_grad():
        out_t = t(img)
    _, _, assign = s.loss(out_s, batch)
    terms = dist(out_s, out_t, assign, batch)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values()) and terms["feature"] > 0 and terms["box"] > 0, terms
    params = [p for k, p in s.named_parameters() if ".dfl." not in k]
    reached = sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)
    assert reached >= 0.9 * len(params)  # through the fake-quant modules (straight-through)
    assert all(p.grad is None for p in t.parameters())
