"""One training loop for plain training (teacher or baseline student) and for distillation, so that a baseline and a
distilled student get exactly the same data, augmentation and schedule."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .. import __version__
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import ConfigError, save_config, to_dict
from ..errors import TrainingError  # noqa: F401 (re-exported)
from ..models import DetectorAdapter, ModelError, build_detector, load_detector
from ..models.weight_select import init_from_larger
from ..runs import make_run_dir, resolve_run_config, seed_everything, setup_logging
from .config import RunConfig
from .distill import Distiller, cpu_bf16_teacher, teacher_forward
from .distributed import (
    Dist,
    barrier,
    broadcast,
    check_replicas,
    mean_across,
    sharded_loader,
    sum_across,
)
from .distributed import cleanup as dist_cleanup
from .distributed import setup as dist_setup
from .extra_data import add_extra_train, load_unlabeled, teacher_targets
from .optim import ModelEMA, build_optimizer, set_lr
from .report import plot_results, read_rows, write_rows

log = logging.getLogger("cvkd")


def resolve_config(config_path: str | None, overrides: list[str]) -> RunConfig:
    """The config of a new detector run, or of the run being resumed plus the overrides."""
    return resolve_run_config(RunConfig, config_path, overrides)


def build_student(cfg: RunConfig, class_names: list[str]) -> DetectorAdapter:
    if Path(cfg.model.name).suffix in (".pt", ".pth", ".xz"):
        model = load_detector(cfg.model.name)
        if model.class_names != class_names:
            raise ModelError(f"{cfg.model.name}: model classes {model.class_names} differ from the data's {class_names}")
        return model
    return build_detector(cfg.model.name, class_names, cfg.model.width, cfg.model.depth)


def detector_meta(model: DetectorAdapter, cfg: RunConfig, **extra) -> dict:
    return {"family": model.family, "arch": model.arch_spec(), "class_names": model.class_names,
            "imgsz": cfg.data.imgsz, "cvkd_version": __version__, "config": to_dict(cfg), **extra}


class Objective(nn.Module):
    """Student + distillation adapters as one module (what DDP wraps): returns the loss to backpropagate and its terms.
    The teacher's outputs come in from outside (frozen, ``no_grad``)."""

    def __init__(self, student: DetectorAdapter, distiller: Distiller | None):
        super().__init__()
        self.student, self.distiller = student, distiller

    def forward(self, img: torch.Tensor, batch: dict, out_t, kd_factor: float, pseudo: tuple | None = None):
        out_s = self.student(img)
        if pseudo is not None:  # unlabelled frames: KD terms only, teacher boxes stand in for ground truth
            batch, assign = pseudo
            total, terms = img.new_zeros(()), {}
        else:
            total, items, assign = self.student.loss(out_s, batch)
            terms = {k: torch.as_tensor(v) for k, v in items.items()}
        if self.distiller is not None:
            for k, v in self.distiller(out_s, out_t, assign, batch).items():
                total = total + kd_factor * v * img.shape[0]  # per-image weight, like the detection loss
                terms[f"kd_{k}"] = v.detach()
        return total, terms


def _train_loader(cfg: RunConfig, d: Dist, train_data, epoch: int, batch: int = 0):
    from types import SimpleNamespace

    from ..data import build_loaders, collate_fn, seed_worker

    batch = batch or cfg.train.batch
    mosaic_on = epoch < cfg.train.epochs - cfg.data.close_mosaic
    # one data seed per (run seed, epoch): seed + epoch would make run seed 1 replay seed 0's epochs shifted by one
    loader, ds = build_loaders(cfg.data, SimpleNamespace(batch=batch), train_data,
                               seed=cfg.train.seed * 100_003 + epoch, mosaic=mosaic_on)
    if d.enabled:
        loader = sharded_loader(d, ds, batch, cfg.data.workers, cfg.train.seed, epoch, collate_fn, seed_worker)
    return loader


def _cycle(loader):
    while True:
        yield from loader


def train(cfg: RunConfig) -> dict:
    """Run (or resume) one training, in one process or under torchrun; returns the final val metrics (rank 0)."""
    from ..data import CocoDataset, load_split
    from ..eval import evaluate

    d, device = dist_setup(cfg.train.device)
    run_dir = Path(broadcast(d, str(make_run_dir(cfg.out, cfg.name, cfg.resume)) if d.main else None))
    if d.main:
        setup_logging(run_dir)
        save_config(cfg, run_dir / "config.yaml")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    use_amp = cfg.train.amp and device.type == "cuda"
    log.info(f"cvkd {__version__}: run folder {run_dir}, device {device}" + (f", {d.world} processes" if d.enabled else ""))

    train_data, val_data = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    if cfg.data.extra_train:
        train_data = add_extra_train(train_data, cfg.data.extra_train, cfg.data.box_policy)
    class_names = train_data.class_names
    unl_data = load_unlabeled(cfg.data.unlabeled, class_names, train_data.cat_ids)
    if unl_data is not None:
        unl_data.cache = cfg.data.cache
    if val_data.class_names != class_names:
        raise ConfigError(f"train classes {class_names} differ from val classes {val_data.class_names}")
    student = build_student(cfg, class_names).to(device)
    teacher, distiller, teacher_bf16 = None, None, False
    if cfg.kd.teacher and cfg.kd.any_term:  # else no teacher pass
        teacher = load_detector(cfg.kd.teacher, device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if teacher_bf16 := cpu_bf16_teacher(cfg.kd.teacher_precision, device, teacher.bf16_teacher):
            teacher.to(memory_format=torch.channels_last)
            log.info("teacher forward pass in bf16 autocast + channels_last (kd.teacher_precision)")
        distiller = Distiller(cfg.kd, student, teacher, cfg.data.imgsz).to(device)
        log.info(f"teacher {cfg.kd.teacher} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f} M params)")
    if cfg.kd.teacher and teacher is None and cfg.model.init_from != "teacher":
        log.warning(f"kd.teacher={cfg.kd.teacher} is set but every KD weight is 0: plain training")
    resuming = bool(cfg.resume) and (run_dir / "last.pt").is_file()
    if cfg.model.init_from and not resuming:  # a resumed run loads its own weights below
        src = cfg.kd.teacher if cfg.model.init_from == "teacher" else cfg.model.init_from
        larger = teacher if teacher is not None and src == cfg.kd.teacher else load_detector(src, device)
        if larger.class_names != class_names:
            raise ModelError(f"{src}: classes {larger.class_names} differ from the data's {class_names}: weight "
                             "selection would give the student another model's class outputs")
        n = init_from_larger(student.model, larger.model, src)
        log.info(f"student initialised by weight selection from {src} ({n} tensors narrowed)")
    log.info(f"student {cfg.model.name} ({sum(p.numel() for p in student.parameters()) / 1e6:.2f} M params), "
             f"classes {class_names}")
    objective = Objective(student, distiller)
    step_fn = objective
    if d.enabled:
        step_fn = DDP(objective, find_unused_parameters=bool(cfg.data.unlabeled))  # KD-only steps skip some heads
        if hasattr(student, "sum_across"):  # the detection loss normalises over the global batch
            student.sum_across = lambda t: sum_across(d, t)

    val_ds = CocoDataset(val_data, cfg.data.imgsz, train=False) if d.main else None  # image cache lives across epochs
    ul_data = None
    if cfg.data.pipeline == "ultralytics":
        if d.enabled:
            raise ConfigError("data.pipeline=ultralytics runs in one process only (not under torchrun yet)")
        from ..data.ultralytics_pipeline import UltralyticsTrainData

        ul_data = UltralyticsTrainData(cfg.data, train_data, run_dir / "ultralytics_data", cfg.train.batch,
                                       cfg.train.epochs, cfg.train.seed)
    loader = ul_data.loader(0) if ul_data else _train_loader(cfg, d, train_data, 0)
    nb = len(loader) if not cfg.train.max_steps else min(len(loader), cfg.train.max_steps)
    accumulate = max(round(cfg.train.nbs / cfg.train.batch), 1)
    opt, base_lr, momentum = build_optimizer([objective], cfg.train, len(class_names), accumulate)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = ModelEMA(student, cfg.train.ema_decay) if cfg.train.ema else None
    warmup_steps = max(round(cfg.train.warmup_epochs * nb), cfg.train.warmup_min_steps) if cfg.train.warmup_epochs > 0 else 0

    start_epoch, best_map = 0, -1.0
    rows = read_rows(run_dir / "results.csv") if resuming else []  # no last.pt: rows of a killed epoch 1 go
    if resuming:
        ck = load_checkpoint(run_dir / "last.pt", kind="detector", map_location=device)
        student.model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if distiller is not None and ck.get("distiller") is not None:
            distiller.load_state_dict(ck["distiller"])
        if ema is not None and ck.get("ema") is not None:
            ema.ema.model.load_state_dict(ck["ema"])
            ema.updates = ck["ema_updates"]
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, best_map = ck["epoch"] + 1, ck["best_map"]
        rows = [r for r in rows if int(r["epoch"]) <= ck["epoch"] + 1]  # drop rows of an unfinished epoch
        log.info(f"resumed from {run_dir / 'last.pt'}: epoch {start_epoch + 1} of {cfg.train.epochs} is next")
    elif cfg.resume:
        log.info(f"resume: {run_dir} has no last.pt yet, starting from epoch 1")

    metrics: dict = {}
    lr = base_lr
    for epoch in range(start_epoch, cfg.train.epochs):
        loader = ul_data.loader(epoch) if ul_data else _train_loader(cfg, d, train_data, epoch)
        unl_iter = _cycle(_train_loader(cfg, d, unl_data, epoch, cfg.data.unlabeled_batch)) if unl_data else None
        objective.train()
        sums: dict[str, float] = {}
        t0 = time.time()
        kd_factor = distiller.weight_factor(epoch, cfg.train.epochs) if distiller is not None else 0.0
        bar = tqdm(loader, total=nb, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, mininterval=2,
                   disable=not d.main)
        opt.zero_grad(set_to_none=True)
        last_opt_step = epoch * nb - 1  # each epoch ends with a step (see below), so none carries over
        for i, batch in enumerate(bar):
            if i >= nb:
                break
            step = i + nb * epoch
            lr = set_lr(opt, cfg.train, base_lr, momentum, epoch, step, warmup_steps)
            img = batch["img"].to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=use_amp):
                out_t = None
                if teacher is not None:
                    out_t = teacher_forward(teacher, img, teacher_bf16)
                total, terms = step_fn(img, batch, out_t, kd_factor)
            if not torch.isfinite(total):
                bad = next((k for k, v in terms.items() if not torch.isfinite(v)), "total")
                raise TrainingError(f"non-finite loss in term '{bad}' at epoch {epoch + 1}, step {i + 1}: run stopped; "
                                    f"last good checkpoint: {run_dir / 'last.pt'}")
            if d.enabled:  # detection terms are this process's share of the global value; KD terms are per-process means
                terms = {k: (mean_across(d, v) if k.startswith("kd_") else sum_across(d, v)) for k, v in terms.items()}
            if step == 0:
                first = float(sum_across(d, total.detach())) / (img.shape[0] * d.world)
                parts = " ".join(f"{k}={float(v):.6f}" for k, v in terms.items())
                log.info(f"first step loss {first:.6f} (per image, mean over processes): {parts}")
            scaler.scale(total * d.world).backward()  # DDP averages gradients over processes: undo it
            if unl_iter is not None:  # soft-label KD on an unlabelled batch, gradients accumulate with the labelled ones
                img_u = next(unl_iter)["img"].to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=use_amp):
                    out_tu = teacher_forward(teacher, img_u, teacher_bf16)
                    pseudo = teacher_targets(teacher, out_tu, img_u, cfg.data.pseudo_conf)
                    total_u, terms_u = step_fn(img_u, None, out_tu, kd_factor * cfg.data.unlabeled_weight, pseudo)
                if not torch.isfinite(total_u):
                    raise TrainingError(f"non-finite KD loss on unlabelled frames at epoch {epoch + 1}, step {i + 1}")
                scaler.scale(total_u * d.world).backward()
                terms.update({f"u{k}": mean_across(d, v) for k, v in terms_u.items()})
            # accumulate to the nominal batch; during warm-up the accumulation ramps up from 1 (as ultralytics does)
            acc = accumulate if step >= warmup_steps else max(1, round(1 + (accumulate - 1) * step / warmup_steps))
            if step - last_opt_step >= acc or i + 1 == nb:
                last_opt_step = step
                scaler.unscale_(opt)
                if cfg.train.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.train.clip_grad)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(student)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix({k: f"{v / (i + 1):.3f}" for k, v in sums.items()}, refresh=False)
        bar.close()
        row = {"epoch": epoch + 1, "lr": f"{lr:.6g}", **{f"loss_{k}": f"{v / nb:.5f}" for k, v in sums.items()},
               "kd_factor": f"{kd_factor:.4f}", "sec_train": f"{time.time() - t0:.1f}"}
        eval_model = ema.ema if ema is not None else student
        if d.main:
            if epoch + 1 == cfg.train.epochs or (epoch + 1) % cfg.train.eval_every == 0:
                t1 = time.time()
                metrics = evaluate(eval_model.eval().predict, val_ds, cfg.data.imgsz, cfg.train.eval_batch, device,
                                   quiet=True)
                row.update({k: f"{metrics[k]:.5f}" for k in ("map", "ap50", "ap75")}, sec_eval=f"{time.time() - t1:.1f}")
            rows.append(row)
            write_rows(run_dir / "results.csv", rows)
            plot_results(run_dir / "results.csv", run_dir / "results.png")
            is_best = "map" in row and float(row["map"]) > best_map
            best_map = float(row["map"]) if is_best else best_map
            meta = detector_meta(student, cfg, epoch=epoch + 1, metrics={k: row.get(k) for k in ("map", "ap50", "ap75")})
            save_checkpoint(run_dir / "last.pt", "detector", student.model.state_dict(), meta,
                            ema=ema.ema.model.state_dict() if ema else None, ema_updates=ema.updates if ema else 0,
                            optimizer=opt.state_dict(), distiller=distiller.state_dict() if distiller else None,
                            scaler=scaler.state_dict(), epoch=epoch, best_map=best_map)
            if is_best:
                save_checkpoint(run_dir / "best.pt", "detector", eval_model.model.state_dict(), meta)
            log.info(f"epoch {epoch + 1}/{cfg.train.epochs}: " + " ".join(f"{k}={v}" for k, v in row.items() if k != "epoch"))
        barrier(d)

    if d.enabled:
        same = check_replicas(d, student)
        log.info(f"student weights identical on all {d.world} processes: {same}")
        if not same:
            raise TrainingError("student weights differ between processes after training (DDP out of sync)")
    final_model = ema.ema if ema is not None else student
    if not metrics and rows:  # resumed a finished run
        metrics = {k: float(rows[-1][k]) for k in ("map", "ap50", "ap75") if rows[-1].get(k)}
    # what the benchmarks use: final epoch, no best-on-val picking; also written when resuming a run killed while
    # writing it (last.pt of the final epoch holds the same weights)
    if d.main and (start_epoch < cfg.train.epochs or not (run_dir / "final.pt").is_file()):
        save_checkpoint(run_dir / "final.pt", "detector", final_model.model.state_dict(),
                        detector_meta(student, cfg, epoch=cfg.train.epochs, metrics=metrics))
    log.info(f"done: {run_dir} map={metrics.get('map', float('nan')):.4f} ap50={metrics.get('ap50', float('nan')):.4f}")
    dist_cleanup(d)
    return {"run_dir": str(run_dir), **metrics}
