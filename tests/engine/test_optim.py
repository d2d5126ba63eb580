"""The optimizer recipes: MuSGD grouped as ultralytics groups it, and ``auto`` switching to it past 10,000 steps."""
from types import SimpleNamespace

import pytest
import torch

from cvkd.engine.config import TrainConfig
from cvkd.engine.optim import build_optimizer, set_lr
from cvkd.models import build_detector


def _groups(opt) -> dict[int, tuple]:
    """Parameter id -> (lr, decayed, Muon) of the group that holds it."""
    return {id(p): (round(g["lr"], 8), g["weight_decay"] > 0, bool(g.get("use_muon", False)))
            for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("arch", ["yolo26n.yaml", "yolov8n.yaml"])
def test_musgd_groups_every_parameter_as_ultralytics_does(arch):
    from ultralytics.engine.trainer import BaseTrainer

    model = build_detector(arch, ["person"])
    cfg = TrainConfig(optimizer="musgd", lr=0.01, momentum=0.9, batch=16, nbs=64)
    opt, lr, _ = build_optimizer([model], cfg, 1, accumulate=4)
    ref = BaseTrainer.build_optimizer(SimpleNamespace(), model.model, name="MuSGD", lr=0.01, momentum=0.9,
                                      decay=cfg.weight_decay)
    assert type(opt) is type(ref) and lr == 0.01
    trained = {id(p) for p in model.parameters() if p.requires_grad}  # ultralytics also lists DFL's frozen conv
    ours, theirs = _groups(opt), {k: v for k, v in _groups(ref).items() if k in trained}
    assert ours == theirs  # same lr (3x on the class branches), decay and Muon flag for every tensor
    assert {v[0] for v in ours.values()} == {0.01, 0.03}


def test_auto_is_adamw_for_short_runs_and_musgd_past_10000_steps():
    model = build_detector("yolov8n.yaml", ["person"])
    short, _, _ = build_optimizer([model], TrainConfig(epochs=30), 1, accumulate=4, n_images=521)
    assert isinstance(short, torch.optim.AdamW)
    # 118,287 COCO images at nbs 64: 1849 steps an epoch, past 10,000 by epoch 6
    long, lr, momentum = build_optimizer([model], TrainConfig(epochs=6), 1, accumulate=4, n_images=118_287)
    assert type(long).__name__ == "MuSGD" and (lr, momentum) == (0.01, 0.9)


def test_the_schedule_keeps_each_groups_own_rate():
    model = build_detector("yolo26n.yaml", ["person"])
    cfg = TrainConfig(optimizer="musgd", lr=0.01, epochs=10)
    opt, lr, momentum = build_optimizer([model], cfg, 1, accumulate=4)
    set_lr(opt, cfg, lr, momentum, epoch=5, step=1000, warmup_steps=100)
    factor = (1 - 0.5) * (1 - cfg.lrf) + cfg.lrf
    assert sorted({round(g["lr"], 8) for g in opt.param_groups}) == [round(0.01 * factor, 8), round(0.03 * factor, 8)]
    out = model(torch.rand(1, 3, 64, 64))
    out.cls_logits.sum().backward()
    opt.step()  # Muon's Newton-Schulz step runs on the conv filters
