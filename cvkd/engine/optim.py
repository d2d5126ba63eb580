"""Optimizer, learning-rate schedule with warm-up, and the EMA of weights (the recipe of ultralytics' trainer, so that a
cvkd baseline is not a crippled one)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(params_from: list[nn.Module], cfg: TrainConfig, num_classes: int, accumulate: int):
    """Three groups: conv/linear weights (decayed), norm weights and biases (not decayed)."""
    decay, no_decay, bias = [], [], []
    for module in params_from:
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                if name == "bias":
                    bias.append(p)
                elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                    no_decay.append(p)
                else:
                    decay.append(p)
    weight_decay = cfg.weight_decay * cfg.batch * accumulate / cfg.nbs
    if cfg.optimizer in ("auto", "adamw"):
        lr = round(0.002 * 5 / (4 + num_classes), 6) if cfg.optimizer == "auto" else cfg.lr
        momentum = 0.9 if cfg.optimizer == "auto" else cfg.momentum
        opt = torch.optim.AdamW(bias, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        lr, momentum = cfg.lr, cfg.momentum
        opt = torch.optim.SGD(bias, lr=lr, momentum=momentum, nesterov=True)
    opt.add_param_group({"params": decay, "weight_decay": weight_decay})
    opt.add_param_group({"params": no_decay, "weight_decay": 0.0})
    for g in opt.param_groups:
        g["initial_lr"] = lr
    return opt, lr, momentum


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
        target = base_lr * factor
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
