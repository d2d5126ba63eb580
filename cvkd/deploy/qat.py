"""Quantization-aware training (QAT): fake-quantized convolutions that export to ONNX QDQ and run as INT8 in ONNX
Runtime.

Why not ``torch.ao.quantization`` (FX / PT2E) or torchao: the ``torch.ao`` workflows are deprecated in favour of
torchao, and torchao's QAT targets its own kernels and ExecuTorch rather than ONNX QDQ. The building block both use
is stable ATen: ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` (straight-through gradients),
which ``torch.onnx.export`` writes as ``QuantizeLinear`` / ``DequantizeLinear`` pairs. So each convolution is wrapped
in :class:`FakeQuantConv`, placed exactly where ONNX Runtime's own static quantization puts QDQ (the conv's input,
weights and output), so that ORT fuses ``DQ -> Conv -> Q`` into an INT8 ``QLinearConv``. The SiLU after a convolution
is quantized the same way (:class:`FakeQuantSiLU`: the sigmoid's output and the product, which ORT runs as
``QLinearSigmoid`` and ``QLinearMul``): left float, each of them would cost a dequantize, a float sigmoid and product
and a quantize in the deployed graph (the first QAT files ran 16-18 ms against PTQ's 11.6 ms for that reason).

Recipe (Jacob et al. 2018; Krishnamoorthi 2018): start from a trained FP32 model, fold BatchNorm into the convolution
weights first (the deployed weights are the folded ones), calibrate the activation ranges on a few batches (moving
min/max), fine-tune with the ranges still moving, freeze them for the last epochs. Weight scales follow the weights
(abs-max, per output channel or per tensor). Schemes as in :data:`cvkd.deploy.quantize.SCHEMES`: ``per_channel``
(per-channel int8 weights, asymmetric uint8 activations) and ``npu`` (per-tensor symmetric int8 everywhere).
The decode tail (DFL's fixed convolution and everything after the head's last convolutions) stays float.

Activation ranges are either moving min/max (``ranges="minmax"``, above) or learned (``ranges="learned"``, the
gradient of LSQ: Esser et al. 2020, "Learned Step Size Quantization"): after calibration each activation's scale
becomes a parameter ``s = exp(log_s)`` trained by the task loss, ``d x_q / d s = round(x/s) - x/s`` inside the grid and
``q_min`` / ``q_max`` where clipped. Where min/max is dominated by a few outliers (per-tensor symmetric grids, the
``npu`` scheme), the loss can trade clipping them for a finer grid everywhere else. The scales train with their own
Adam (:func:`cvkd.engine.optim.build_range_optimizer`): a fine-tune of a few dozen SGD steps at the student's final
learning rate would not move them, and Adam's steps on ``log_s`` are relative changes of the same size for every
tensor, whatever its range. Zero points stay those of the calibration.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QAT_SCHEMES = ("per_channel", "npu")
QAT_RANGES = ("minmax", "learned")


class RangeObserver(nn.Module):
    """Moving-average min/max of a tensor (momentum 0.1 after the first batch), frozen on request; its int8 scale.

    Training reads the scale as a tensor (no host sync per convolution on CUDA); eval and export read Python numbers,
    which the ONNX exporter writes as constants."""

    def __init__(self, symmetric: bool, learned: bool = False):
        super().__init__()
        self.symmetric = symmetric
        self.qmin, self.qmax = (-128, 127) if symmetric else (0, 255)
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))
        self.frozen = False
        self._calibrated = False  # host copy of ``seen`` once it is True
        self.learned = learned
        if learned:  # the scale is a parameter once :meth:`start_learning` has set it from the calibrated range
            self.log_scale = nn.Parameter(torch.zeros(1))
            self.register_buffer("zero_point", torch.zeros(1))
            self.register_buffer("scale_calibrated", torch.ones(1))  # where it started: how far learning moved it
            self.register_buffer("learning", torch.tensor(False))
            self._learning = False  # host copy of ``learning`` once it is True

    @property
    def is_learning(self) -> bool:
        if not self.learned:
            return False
        self._learning = self._learning or bool(self.learning)
        return self._learning

    @torch.no_grad()
    def start_learning(self) -> None:
        """The calibrated range becomes the initial learned scale (and fixed zero point)."""
        if self.learned and self.calibrated:
            scale, zero = self.qparams_tensor()
            self.log_scale.copy_(scale.log().reshape(1)), self.zero_point.copy_(zero.float().reshape(1))
            self.scale_calibrated.copy_(scale.reshape(1))
            self.learning.fill_(True)
            self._learning = True

    @property
    def calibrated(self) -> bool:
        self._calibrated = self._calibrated or bool(self.seen)
        return self._calibrated

    def _load_from_state_dict(self, *args, **kwargs):
        self._calibrated = self._learning = False  # a loaded ``seen`` / ``learning`` may be False
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        if self.frozen or self.is_learning:
            return
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if not self.calibrated:
            self.lo.copy_(lo), self.hi.copy_(hi), self.seen.fill_(True)
            self._calibrated = True
        else:
            self.lo.lerp_(lo, 0.1), self.hi.lerp_(hi, 0.1)

    def qparams(self, min_scale: float = 1e-8) -> tuple[float, int, int, int]:
        """(scale, zero point, quant min, quant max): symmetric int8, or asymmetric uint8 covering [lo, hi] and 0; a
        learned range's own scale and zero point."""
        if self.is_learning:
            return max(float(self.log_scale.detach().exp()), min_scale), int(self.zero_point), self.qmin, self.qmax
        lo, hi = min(float(self.lo), 0.0), max(float(self.hi), 0.0)
        if self.symmetric:
            return max(max(-lo, hi) / 127.0, min_scale), 0, self.qmin, self.qmax
        scale = max((hi - lo) / 255.0, min_scale)
        return scale, int(min(max(round(-lo / scale), 0), 255)), self.qmin, self.qmax

    def qparams_tensor(self, min_scale: Tensor | float = 1e-8) -> tuple[Tensor, Tensor]:
        """:meth:`qparams`' scale (float32) and zero point (int32) as 0-d tensors on the observer's device (a learned
        scale keeps its gradient)."""
        if self.is_learning:
            return torch.clamp(self.log_scale[0].exp(), min=min_scale), self.zero_point[0].to(torch.int32)
        lo, hi = self.lo.clamp(max=0.0), self.hi.clamp(min=0.0)
        if self.symmetric:
            return torch.clamp(torch.maximum(-lo, hi) / 127.0, min=min_scale), torch.zeros_like(lo, dtype=torch.int32)
        scale = torch.clamp((hi - lo) / 255.0, min=min_scale)
        return scale, (-lo / scale).round().clamp(0, 255).to(torch.int32)

    def forward(self, x: Tensor, min_scale: Tensor | float = 1e-8) -> Tensor:
        if self.training:
            self.update(x)
        if not self.calibrated:  # never calibrated: nothing to quantize with yet
            return x
        if self.training and self.is_learning:
            scale = torch.clamp(self.log_scale.exp(), min=min_scale)  # (1,)
            scale = scale.detach() if self.frozen else scale
            # (LSQ's gradient scale 1/sqrt(numel * q_max) is left out: Adam's steps do not depend on it)
            return torch._fake_quantize_learnable_per_tensor_affine(x, scale, self.zero_point, self.qmin, self.qmax,
                                                                    1.0)
        if self.training:
            scale, zero = self.qparams_tensor(min_scale)
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, self.qmin, self.qmax)
        scale, zero, qmin, qmax = self.qparams(float(min_scale))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)


# a tensor a fake-quant module produced carries the observer of its grid here: the next convolution reads it as it is
# (one QDQ per tensor, as ORT's quantizer writes) instead of quantizing it a second time on a grid of its own
QUANTIZED_BY = "_cvkd_quantized_by"


def _mark(x: Tensor, observer: "RangeObserver") -> Tensor:
    if observer.calibrated:
        setattr(x, QUANTIZED_BY, observer)
    return x


class FakeQuantSiLU(nn.Module):
    """``x * sigmoid(x)`` with the sigmoid's output and the product fake-quantized: what ONNX Runtime's static
    quantizer makes of a SiLU between two quantized convolutions (``QLinearSigmoid`` then ``QLinearMul``)."""

    def __init__(self, symmetric: bool, learned: bool = False):
        super().__init__()
        self.sigmoid_out, self.act_out = RangeObserver(symmetric, learned), RangeObserver(symmetric, learned)

    def forward(self, x: Tensor) -> Tensor:
        return _mark(self.act_out(x * self.sigmoid_out(torch.sigmoid(x))), self.act_out)


class FakeQuantConv(nn.Module):
    """``conv`` (BatchNorm already folded in) with fake-quantized input, weights and output. An input that a fake-quant
    module already put on its grid (:data:`QUANTIZED_BY`) is taken as it is."""

    def __init__(self, conv: nn.Conv2d, scheme: str, learned: bool = False):
        super().__init__()
        if scheme not in QAT_SCHEMES:
            raise ValueError(f"unknown QAT scheme {scheme!r}: expected one of {QAT_SCHEMES}")
        self.conv, self.scheme = conv, scheme
        symmetric = scheme == "npu"
        self.act_in, self.act_out = RangeObserver(symmetric, learned), RangeObserver(symmetric, learned)
        # whose grid the input was on in training: -1 not seen yet, 0 act_in's, 1 the producer's. Eval and export
        # follow it, since an input may reach this conv on a grid only outside training (YOLO26's one-to-one head
        # reads detached neck features in training, the features themselves at inference)
        self.register_buffer("input_grid", torch.tensor(-1, dtype=torch.int8))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "input_grid", torch.tensor(-1, dtype=torch.int8))  # files before 2026-12-07
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _input(self, x: Tensor, floor: Tensor | float) -> tuple[Tensor, Tensor | None]:
        """The quantized input and, in training, its scale (None before calibration). An input on a producer's grid
        keeps it unless that grid is finer than ``floor`` (the int32 bias would overflow); act_in observes every
        input, as the fallback grid."""
        # a view of a quantized tensor (C2f's chunks) is on the same grid
        producer = getattr(x, QUANTIZED_BY, None) or getattr(x._base, QUANTIZED_BY, None)
        if not self.training:  # as in training (-1, never trained: its own grid, as QAT files before 2026-12-07)
            return (x if producer is not None and int(self.input_grid) == 1 else self.act_in(x, floor)), None
        own = self.act_in(x, floor)
        own_scale = self.act_in.qparams_tensor(floor)[0] if self.act_in.calibrated else None
        if producer is None or own_scale is None:
            self.input_grid.fill_(0)
            return own, own_scale
        producer_scale = producer.qparams_tensor()[0]
        use_producer = producer_scale >= floor  # a 0-d bool tensor: no host sync on CUDA
        self.input_grid.copy_(use_producer.to(torch.int8))
        return torch.where(use_producer, x, own), torch.where(use_producer, producer_scale, own_scale)

    def weight_scale(self) -> Tensor:
        """Symmetric int8 weight scale, abs-max / 127, per output channel (``npu``: one value, repeated)."""
        w = self.conv.weight.detach()  # (C_out, C_in / groups, k, k)
        s = w.abs().amax((1, 2, 3)) if self.scheme == "per_channel" else w.abs().max().expand(w.shape[0])
        return (s / 127.0).clamp_min(1e-8).float()  # (C_out,)

    def quantized_weight(self, scale: Tensor) -> Tensor:
        w = self.conv.weight
        if self.scheme == "per_channel":
            return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 0,
                                                          -128, 127)
        if self.training:  # a tensor scale: no host sync
            return torch.fake_quantize_per_tensor_affine(w, scale[0], torch.zeros((), dtype=torch.int32,
                                                         device=w.device), -128, 127)
        return torch.fake_quantize_per_tensor_affine(w, float(scale[0]), 0, -128, 127)

    def forward(self, x: Tensor) -> Tensor:
        c, b = self.conv, self.conv.bias
        s_w = self.weight_scale()  # (C_out,)
        # the int32 bias (scale s_x * s_w) must not overflow: a near-constant input gets a coarser s_x
        floor = (b.detach().abs() / s_w).max().div(2 ** 30).clamp(min=1e-8) if b is not None else 1e-8
        x, s_x = self._input(x, floor)
        w = self.quantized_weight(s_w)
        # training sees the int32 bias it is deployed with; eval keeps it float, so that the exported bias stays a
        # constant that quantize_biases() rounds the same way
        if self.training and b is not None and s_x is not None:
            s = s_x * s_w  # (C_out,)
            b = b + (torch.round(b / s) * s - b).detach()  # straight-through rounding
        return _mark(self.act_out(F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)), self.act_out)


def _quantize_output(module: nn.Module, inputs, output: Tensor) -> Tensor:
    """Forward hook of a residual block: its sum on a grid, once (ORT's ``QLinearAdd``)."""
    return _mark(module.out_quant(output), module.out_quant)


def prepare_qat(model: nn.Module, scheme: str, silu: bool = True, ranges: str = "minmax") -> int:
    """Fold BatchNorm, then wrap every convolution except DFL's fixed one in :class:`FakeQuantConv` and, with
    ``silu``, the SiLU of each conv block (``.conv`` + ``.act``) in :class:`FakeQuantSiLU`; the number of convolutions.
    ``silu=False`` rebuilds the placement of QAT checkpoints written before the SiLU was quantized; ``ranges``: moving
    min/max activation ranges, or learned ones (:func:`start_learning` after calibration)."""
    from ..models.yolo import fold_conv_batchnorm

    if ranges not in QAT_RANGES:
        raise ValueError(f"unknown QAT activation ranges {ranges!r}: expected one of {QAT_RANGES}")
    learned = ranges == "learned"

    fold_conv_batchnorm(model)
    n = 0
    for name, parent in list(model.named_modules()):
        if name.endswith("dfl") or isinstance(parent, FakeQuantConv):
            continue
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and not isinstance(parent, FakeQuantConv):
                setattr(parent, child_name, FakeQuantConv(child, scheme, learned))
                n += 1
        if silu and isinstance(getattr(parent, "conv", None), FakeQuantConv) and isinstance(
                getattr(parent, "act", None), nn.SiLU):
            parent.act = FakeQuantSiLU(scheme == "npu", learned)  # (ultralytics' blocks share one SiLU: each gets its own)
        if silu and getattr(parent, "add", None) is True and hasattr(parent, "cv2"):  # a residual block (Bottleneck)
            parent.out_quant = RangeObserver(scheme == "npu", learned)
            parent.register_forward_hook(_quantize_output)
    return n


def qat_silu(model: nn.Module) -> bool:
    """Whether a QAT model quantizes its SiLUs (the placement a checkpoint records as ``qat_silu``)."""
    return any(isinstance(m, FakeQuantSiLU) for m in model.modules())


def qat_ranges(model: nn.Module) -> str:
    """``learned`` or ``minmax``: how a QAT model's activation ranges are set (what a checkpoint records)."""
    return "learned" if any(isinstance(m, RangeObserver) and m.learned for m in model.modules()) else "minmax"


def start_learning(model: nn.Module) -> int:
    """Turn every calibrated learned-range observer's range into its initial learned scale; how many."""
    obs = [m for m in model.modules() if isinstance(m, RangeObserver) and m.learned and m.calibrated]
    for m in obs:
        m.start_learning()
    return len(obs)


@torch.no_grad()
def learned_range_summary(model: nn.Module) -> str:
    """How far the learned activation scales moved from their calibrated values (a log line), or ''."""
    ratios = torch.cat([(m.log_scale.exp() / m.scale_calibrated).float().cpu() for m in model.modules()
                        if isinstance(m, RangeObserver) and m.is_learning])
    moved = ratios[(ratios - 1).abs() > 1e-6]  # not the input scales of convs that read their producer's grid
    if not len(moved):
        return f"learned activation scales: none moved from its calibrated value ({len(ratios)} scales)"
    return (f"learned activation scales / calibrated: median {moved.median():.3f}, min {moved.min():.3f}, "
            f"max {moved.max():.3f} ({len(moved)} of {len(ratios)} scales in use)")


def freeze_ranges(model: nn.Module, frozen: bool = True) -> None:
    """Stop (or restart) the activation ranges from moving: the last epochs of QAT train against fixed scales."""
    for m in model.modules():
        if isinstance(m, RangeObserver):
            m.frozen = frozen


def _constants(graph) -> dict:
    """Name -> numpy array of every initializer and ``Constant`` node output of an ONNX graph."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def quantize_biases(model: "onnx.ModelProto") -> int:  # noqa: F821
    """Give every Conv whose input and weights are dequantized an int32 bias, ``round(b / (s_x * s_w))`` dequantized
    with scale ``s_x * s_w`` (what ONNX Runtime's own quantizer writes): ORT fuses ``DQ -> Conv -> Q`` into
    ``QLinearConv`` only then (a float bias is dropped by that fusion). Returns the number of biases rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    values = _constants(g)
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    new_nodes, count = [], 0
    for n in g.node:
        if n.op_type != "Conv" or len(n.input) != 3:
            continue
        dq_x, dq_w = producer.get(n.input[0]), producer.get(n.input[1])
        if (True and n.input[2] in inits and dq_x is not None and dq_w is not None
                and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            s_x, s_w = values[dq_x.input[1]], values[dq_w.input[1]]
            scale = (np.float32(s_x) * s_w.astype(np.float32)).reshape(-1)  # (C_out,) or (1,)
            b = values[n.input[2]].astype(np.float64)
            q = np.round(b / scale.astype(np.float64))
            if np.abs(q).max() > 2 ** 31 - 1:  # a near-constant input (tiny s_x): keep this bias float, unfused
                continue
            q = q.astype(np.int32)
            name = f"{n.input[2]}_{count}"  # one bias may feed several convs (a module called twice)
            g.initializer.extend([numpy_helper.from_array(q, f"{name}_int32"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                                  numpy_helper.from_array(np.zeros_like(q) if scale.size > 1 else np.int32(0),
                                                          f"{name}_zero")])
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int32", f"{name}_scale", f"{name}_zero"],
                                              [f"{name}_dq"], name=f"{name}_DequantizeLinear",
                                              **({"axis": 0} if scale.size > 1 else {})))
            n.input[2] = f"{name}_dq"
            count += 1
    # the new DequantizeLinear nodes read initializers only: first in the (topologically sorted) graph
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return count


# ops that only select or rearrange elements: on a per-tensor grid, their output is on the same grid
VIEW_OPS = ("Slice", "Split", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def dequantize_after_views(model: "onnx.ModelProto") -> int:  # noqa: F821
    """Rewrite ``DequantizeLinear -> Slice`` (and the other :data:`VIEW_OPS`) of an activation as ``Slice ->
    DequantizeLinear``: exact, since a slice of a per-tensor grid is on that grid. What reads the slices (C2f's chunks:
    a concat, a residual add, a convolution) then sees dequantized inputs, which ORT fuses into its INT8 kernels, as
    training saw them (a view of a quantized tensor keeps its grid, :class:`FakeQuantConv`). Chains of views are
    rewritten one after the other. Returns the number of ops rewritten."""
    from onnx import helper

    g = model.graph
    consts = set(_constants(g))
    producer = {o: n for n in g.node for o in n.output}
    nodes, count = [], 0
    for n in g.node:
        dq = producer.get(n.input[0]) if n.op_type in VIEW_OPS and n.input else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in consts or any(
                a.name == "axis" for a in dq.attribute) or any(i not in consts for i in dq.input[1:]):
            nodes.append(n)
            continue
        quantized = [f"{o}_quantized" for o in n.output]
        view = helper.make_node(n.op_type, [dq.input[0], *n.input[1:]], quantized, name=f"{n.name}_quantized")
        view.attribute.extend(n.attribute)
        nodes.append(view)
        for q, out in zip(quantized, n.output):
            nodes.append(helper.make_node("DequantizeLinear", [q, *dq.input[1:]], [out], name=f"{out}_DequantizeLinear"))
            producer[out] = nodes[-1]
        count += 1
    del g.node[:]
    g.node.extend(nodes)
    return count


def is_qat(model: nn.Module) -> str:
    """The QAT scheme of a model holding fake-quant convolutions, or ''."""
    return next((m.scheme for m in model.modules() if isinstance(m, FakeQuantConv)), "")


@torch.no_grad()
def calibrate(model: nn.Module, batches) -> int:
    """Set the activation ranges from a few batches of images (train mode: observers move; no weights change)."""
    was = model.training
    model.train()
    n = 0
    for img in batches:
        model(img)
        n += 1
    model.train(was)
    return n


def fold_weight_quantization(model: "onnx.ModelProto") -> int:  # noqa: F821
    """Replace each ``QuantizeLinear`` of a constant (the fake-quantized weights) by its int8 result, as PTQ files store
    weights: a quarter of the size, and nothing to quantize at run time. Returns the number of tensors folded."""
    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    values = _constants(g)
    folded, keep = 0, []
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in values and all(i in values for i in n.input[1:]):
            x, scale = values[n.input[0]].astype(np.float32), values[n.input[1]].astype(np.float32)
            zero = values[n.input[2]] if len(n.input) > 2 else np.uint8(0)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            shape = [1] * x.ndim
            if scale.size > 1:
                shape[axis] = -1
            info = np.iinfo(zero.dtype)
            q = np.clip(np.rint(x / scale.reshape(shape)) + zero.astype(np.int64).reshape(shape), info.min, info.max)
            g.initializer.append(numpy_helper.from_array(q.astype(zero.dtype), n.output[0]))
            folded += 1
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input}  # the float weights, now unread
    live = [i for i in g.initializer if i.name in used or i.name in {o.name for o in g.output}]
    del g.initializer[:]
    g.initializer.extend(live)
    return folded
