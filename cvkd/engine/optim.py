"""Optimizer, learning-rate schedule with warm-up, and the EMA of weights (the recipe of ultralytics' trainer, so that a
cvkd baseline is not a crippled one)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .config import TrainConfig

AUTO_MUSGD_STEPS = 10_000  # ultralytics' ``optimizer=auto`` picks MuSGD past this many optimizer steps


def build_optimizer(params_from: list[nn.Module], cfg: TrainConfig, num_classes: int, accumulate: int,
                    n_images: int = 0):
    """AdamW/SGD: three groups, conv/linear weights (decayed), norm weights and biases (not decayed).

    ``auto`` follows ultralytics 8.4: AdamW with lr 0.002*5/(4+classes) for runs of up to 10,000 optimizer steps at the
    nominal batch (``n_images / max(batch, nbs) * epochs``), MuSGD (lr 0.01, momentum 0.9) past that. MuSGD
    (ultralytics' ``optim/muon.py``, reused: Muon's orthogonalised update blended with SGD, Muon weight 0.2) takes
    every 2-D/4-D tensor into its Muon groups, and the detection head's classification branches (``cv3``,
    ``one2one_cv3``) train at 3x the learning rate, as ultralytics sets them. Each group's ``initial_lr`` is what the
    schedule scales."""
    optimizer = cfg.optimizer
    if optimizer == "auto":
        steps = math.ceil(n_images / max(cfg.batch, cfg.nbs)) * cfg.epochs
        optimizer = "musgd" if steps > AUTO_MUSGD_STEPS else "auto"
    if optimizer == "musgd":
        return _musgd(params_from, cfg, accumulate, lr=0.01 if cfg.optimizer == "auto" else cfg.lr,
                      momentum=0.9 if cfg.optimizer == "auto" else cfg.momentum)
    decay, no_decay, bias = [], [], []
    for m, name, p in _trainable(params_from):
        if name == "bias":
            bias.append(p)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            no_decay.append(p)
        else:
            decay.append(p)
    weight_decay = cfg.weight_decay * cfg.batch * accumulate / cfg.nbs
    if optimizer in ("auto", "adamw"):
        lr = round(0.002 * 5 / (4 + num_classes), 6) if optimizer == "auto" else cfg.lr
        momentum = 0.9 if optimizer == "auto" else cfg.momentum
        opt = torch.optim.AdamW(bias, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        lr, momentum = cfg.lr, cfg.momentum
        opt = torch.optim.SGD(bias, lr=lr, momentum=momentum, nesterov=True)
    opt.add_param_group({"params": decay, "weight_decay": weight_decay})
    opt.add_param_group({"params": no_decay, "weight_decay": 0.0})
    for g in opt.param_groups:
        g["initial_lr"] = lr
    return opt, lr, momentum


def _is_range(module: nn.Module, name: str) -> bool:
    """QAT's learned activation scales (cvkd.deploy.qat.RangeObserver): their own optimizer."""
    return name == "log_scale" and getattr(module, "learned", False)


def build_range_optimizer(params_from: list[nn.Module], cfg: TrainConfig) -> torch.optim.Optimizer | None:
    """Adam on QAT's learned activation scales (``log_s``), lr ``train.qat_range_lr``, no weight decay; None when
    there are none."""
    ranges = [p for module in params_from for m in module.modules() for name, p in m.named_parameters(recurse=False)
              if p.requires_grad and _is_range(m, name)]
    if not ranges:
        return None
    opt = torch.optim.Adam(ranges, lr=cfg.qat_range_lr)
    opt.param_groups[0]["initial_lr"] = cfg.qat_range_lr
    return opt


def _trainable(params_from: list[nn.Module]):
    """(module, name, parameter) of every parameter that trains, each once per module that owns it, except QAT's
    learned activation scales (:func:`build_range_optimizer`)."""
    for module in params_from:
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if p.requires_grad and not _is_range(m, name):
                    yield m, name, p


def _musgd(params_from: list[nn.Module], cfg: TrainConfig, accumulate: int, lr: float, momentum: float):
    from ultralytics.nn.modules import Detect
    from ultralytics.optim import MuSGD

    boosted = {id(p) for module in params_from for m in module.modules() if isinstance(m, Detect)
               for branch in (getattr(m, "cv3", None), getattr(m, "one2one_cv3", None))
               if isinstance(branch, nn.Module) for p in branch.parameters()}
    weight_decay = cfg.weight_decay * cfg.batch * accumulate / cfg.nbs
    # (muon, decay, scale) -> params: bias, norm weights, then Muon's matrices and filters, each plain and 3x
    groups: dict[tuple[bool, float, float], list] = {}
    for _, _, p in _trainable(params_from):
        muon = p.ndim in (2, 4)
        decay = weight_decay if muon else 0.0  # biases and norm weights: no decay
        groups.setdefault((muon, decay, 3.0 if id(p) in boosted else 1.0), []).append(p)
    params = [{"params": ps, "lr": lr * scale, "initial_lr": lr * scale, "momentum": momentum, "nesterov": True,
               "weight_decay": decay, "use_muon": muon} for (muon, decay, scale), ps in sorted(groups.items())]
    return MuSGD(params, lr=lr, momentum=momentum, nesterov=True, muon=0.2, sgd=1.0), lr, momentum


def lr_factor(cfg: TrainConfig, epoch_float: float) -> float:
    """Decay factor at a (fractional) epoch: linear or cosine from 1 to ``lrf``."""
    x = min(epoch_float / cfg.epochs, 1.0)
    if cfg.schedule == "cosine":
        return ((1 - math.cos(x * math.pi)) / 2) * (cfg.lrf - 1) + 1
    return (1 - x) * (1.0 - cfg.lrf) + cfg.lrf


def set_lr(opt, cfg: TrainConfig, base_lr: float, momentum: float, epoch: int, step: int, warmup_steps: int) -> float:
    """Per-step learning rate: the epoch's decay factor, with a linear warm-up over the first ``warmup_steps``."""
    factor = lr_factor(cfg, epoch)
    for i, g in enumerate(opt.param_groups):
        target = g.get("initial_lr", base_lr) * factor  # a group's own base (MuSGD's head groups: 3x)
        if step < warmup_steps:
            start = cfg.warmup_bias_lr if i == 0 else 0.0
            g["lr"] = start + (target - start) * step / warmup_steps
            if "momentum" in g:  # SGD only; Adam's betas stay fixed (as in ultralytics)
                g["momentum"] = 0.8 + (momentum - 0.8) * step / warmup_steps
        else:
            g["lr"] = target
    return opt.param_groups[0]["lr"]


class ModelEMA:
    """Exponential moving average of a model's weights, decay ramped up as ``d * (1 - exp(-updates / tau))``."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])
