"""One training loop for plain training (teacher or baseline student) and for distillation, so that a baseline and a
distilled student get exactly the same data, augmentation and schedule.

Reads top to bottom: :func:`train` sets up (run shell, data, models, optimisation, resume), then per epoch
:func:`train_epoch` runs :func:`train_step` (teacher forward, student forward + KD terms, backward, optimizer
step/EMA) and :func:`end_epoch` evaluates, logs the CSV row and saves the checkpoints. Callbacks (``batch_end``,
``epoch_end``, ``kd_term``) let a benchmark trace a term without patching anything.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .. import __version__
from ..config import ConfigError, to_dict
from ..errors import ModelError, TrainingError  # noqa: F401 (TrainingError re-exported)
from ..models import DetectorAdapter, build_detector, load_detector
from ..models.class_map import map_teacher
from ..models.class_transfer import start_from
from ..models.pretrained import load_backbone
from ..runs import Run, resolve_run_config, seed_everything
from .config import RunConfig
from .distill import Distiller, cpu_bf16_teacher, teacher_forward
from .distributed import broadcast_tensors, mean_across, sharded_loader, sum_across
from .extra_data import add_extra_train, load_unlabeled, teacher_as_ground_truth
from .optim import ModelEMA, build_optimizer, build_range_optimizer, lr_factor, set_lr
from .report import plot_results

log = logging.getLogger("cvkd")
Callbacks = dict[str, list[Callable[[dict], None]]]  # event -> functions called with a dict of what happened


def resolve_config(config_path: str | None, overrides: list[str]) -> RunConfig:
    """The config of a new detector run, or of the run being resumed plus the overrides."""
    return resolve_run_config(RunConfig, config_path, dataset_overrides(overrides))


def dataset_overrides(overrides: list[str]) -> list[str]:
    """``data=my/data.yaml`` (as ultralytics users type it) is short for ``data.yaml=``; a data.yaml named on the
    command line replaces the config file's dataset (its ``*_json``/``*_images`` keys go back to their defaults)."""
    from .config import DataConfig

    out = [f"data.yaml={o[5:]}" if o.startswith("data=") else o for o in overrides]
    if any(o.startswith("data.yaml=") for o in out):
        keys = ("train_json", "train_images", "val_json", "val_images")
        out = [f"data.{k}={getattr(DataConfig(), k)}" for k in keys if not any(o.startswith(f"data.{k}=") for o in out)
               ] + out
    return out


def build_student(cfg: RunConfig, class_names: list[str]) -> DetectorAdapter:
    if Path(cfg.model.name).suffix in (".pt", ".pth", ".xz"):
        model = load_detector(cfg.model.name)
        if model.class_names == class_names:
            return model
        # a pretrained model of other classes (a COCO yolo11n.pt): its architecture with the data's classes
        student = type(model).from_spec(model.arch_spec(), class_names)
        start_from(student, model, cfg.model.name)
        return student
    student = build_detector(cfg.model.name, class_names, cfg.model.width, cfg.model.depth)
    if cfg.model.pretrained:  # timm only (config check)
        log.info(load_backbone(student.model.backbone, cfg.model.name.split(":", 1)[1], cfg.model.pretrained))
    return student


def build_qat_student(cfg: RunConfig, class_names: list[str]) -> DetectorAdapter:
    """The student, with fake-quantized convolutions under ``train.qat`` (after its FP32 weights are loaded)."""
    student = build_student(cfg, class_names)
    if cfg.train.qat:
        from ..deploy.qat import prepare_qat

        n = prepare_qat(student.model, cfg.train.qat, ranges=cfg.train.qat_ranges)
        log.info(f"QAT ({cfg.train.qat}): BatchNorm folded, {n} convolutions fake-quantized, activation ranges "
                 f"{cfg.train.qat_ranges}")
    return student


def detector_meta(model: DetectorAdapter, cfg: RunConfig, **extra) -> dict:
    qat = {}
    if cfg.train.qat:  # the loader rebuilds the fake-quant modules, with the SiLUs quantized or not as trained
        from ..deploy.qat import qat_ranges, qat_silu

        qat = {"qat": cfg.train.qat, "qat_silu": qat_silu(model.model), "qat_ranges": qat_ranges(model.model)}
    return {"family": model.family, "arch": model.arch_spec(), "class_names": model.class_names,
            "imgsz": cfg.data.imgsz, "cvkd_version": __version__, "config": to_dict(cfg), **qat, **extra}


class Objective(nn.Module):
    """Student + distillation adapters as one module (what DDP wraps): returns the loss to backpropagate and its terms.
    The teacher's outputs come in from outside (frozen, ``no_grad``). ``sum_across`` (under torchrun) sums a tensor
    over processes, so the detection loss is normalised over the global batch."""

    def __init__(self, student: DetectorAdapter, distiller: Distiller | None, sum_across: Callable | None = None):
        super().__init__()
        self.student, self.distiller, self.sum_across = student, distiller, sum_across

    def forward(self, img: torch.Tensor, batch: dict, out_t, kd_factor: float, pseudo: tuple | None = None):
        out_s = self.student(img)
        if pseudo is not None:  # unlabelled frames: KD terms only, teacher boxes stand in for ground truth
            batch, assign = pseudo
            total, terms = img.new_zeros(()), {}
        else:
            # label assignment distillation: the teacher's predictions pick the student's positives
            teacher_assigns = self.distiller is not None and self.distiller.cfg.assign == "teacher"
            total, items, assign = self.student.loss(out_s, batch, sum_across=self.sum_across,
                                                     assign_from=out_t if teacher_assigns else None)
            terms = {k: torch.as_tensor(v) for k, v in items.items()}
        if self.distiller is not None:
            for k, v in self.distiller(out_s, out_t, assign, batch).items():
                total = total + kd_factor * v * img.shape[0]  # per-image weight, like the detection loss
                terms[f"kd_{k}"] = v.detach()
        return total, terms


# --- setup -----------------------------------------------------------------------------------------------------------

@dataclass
class Data:
    train: object  # CocoData of the labelled (plus extra) training images
    val: object  # CocoData of the validation images
    val_ds: object | None  # evaluation CocoDataset (rank 0), its image cache lives across epochs
    unlabeled: object | None  # CocoData of unlabelled frames (soft-label KD), or None
    ultralytics_pipeline: object | None  # ultralytics' YOLODataset pipeline (data.pipeline=ultralytics), or None

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names


def load_data(cfg: RunConfig, run: Run) -> Data:
    from ..data import load_split

    train_data, val_data = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    if cfg.data.extra_train:
        train_data = add_extra_train(train_data, cfg.data.extra_train, cfg.data.box_policy)
    if val_data.class_names != train_data.class_names:
        raise ConfigError(f"train classes {train_data.class_names} differ from val classes {val_data.class_names}")
    unlabeled = load_unlabeled(cfg.data.unlabeled, train_data.class_names, train_data.cat_ids)
    if unlabeled is not None:
        unlabeled.cache = cfg.data.cache
    if cfg.data.pipeline == "ultralytics" and run.d.enabled:
        raise ConfigError("data.pipeline=ultralytics runs in one process only (not under torchrun yet)")
    return Data(train_data, val_data, None, unlabeled, None)


def build_pipelines(cfg: RunConfig, run: Run, data: Data) -> None:
    """The evaluation dataset and, with data.pipeline=ultralytics, ultralytics' training pipeline (built after the
    models, so the random initialisation does not depend on the pipeline)."""
    from ..data import CocoDataset

    data.val_ds = CocoDataset(data.val, cfg.data.imgsz, train=False) if run.main else None
    if cfg.data.pipeline == "ultralytics":
        from ..data.ultralytics_pipeline import UltralyticsTrainData

        data.ultralytics_pipeline = UltralyticsTrainData(cfg.data, data.train, run.dir / "ultralytics_data",
                                                         cfg.train.batch, cfg.train.epochs, cfg.train.seed)


def train_loader(cfg: RunConfig, run: Run, data: Data, epoch: int, unlabeled: bool = False):
    """The epoch's training loader (labelled, or the unlabelled frames), sharded over processes under torchrun."""
    from ..data import build_loaders, collate_fn, seed_worker

    if data.ultralytics_pipeline is not None and not unlabeled:
        return data.ultralytics_pipeline.loader(epoch)
    batch = (cfg.data.unlabeled_batch or cfg.train.batch) if unlabeled else cfg.train.batch
    mosaic_on = epoch < cfg.train.epochs - cfg.data.close_mosaic
    # one data seed per (run seed, epoch): seed + epoch would make run seed 1 replay seed 0's epochs shifted by one
    loader, ds = build_loaders(cfg.data, SimpleNamespace(batch=batch), data.unlabeled if unlabeled else data.train,
                               seed=cfg.train.seed * 100_003 + epoch, mosaic=mosaic_on)
    if run.d.enabled:
        loader = sharded_loader(run.d, ds, batch, cfg.data.workers, cfg.train.seed, epoch, collate_fn, seed_worker)
    return loader


@dataclass
class Models:
    student: DetectorAdapter
    teacher: DetectorAdapter | None
    distiller: Distiller | None
    teacher_bf16: bool
    objective: Objective  # student + distiller: what the optimizer and DDP see
    step_fn: nn.Module  # the objective, or its DDP wrapper


def load_teacher(cfg: RunConfig, device: torch.device, class_names: list[str]) -> tuple[DetectorAdapter, bool]:
    """The frozen teacher and whether its forward pass runs in CPU bf16."""
    teacher = load_detector(cfg.kd.teacher, device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher = map_teacher(teacher, class_names, cfg.kd.teacher_classes).eval()  # the student's classes
    bf16 = cpu_bf16_teacher(cfg.kd.teacher_precision, device, teacher.bf16_teacher)
    if bf16:
        log.info("teacher forward pass in bf16 autocast + channels_last (kd.teacher_precision)")
    log.info(f"teacher {cfg.kd.teacher} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f} M params)")
    return teacher, bf16


def build_models(cfg: RunConfig, class_names: list[str], run: Run, callbacks: Callbacks) -> Models:
    device = run.device
    student = build_qat_student(cfg, class_names).to(device)
    teacher, distiller, bf16 = None, None, False
    if cfg.kd.teacher and cfg.kd.any_term:  # else no teacher pass
        teacher, bf16 = load_teacher(cfg, device, class_names)
        distiller = Distiller(cfg.kd, student, teacher, cfg.data.imgsz).to(device)
        distiller.hooks.extend(callbacks.get("kd_term", []))
        if cfg.kd.assign == "teacher":
            log.info("label assignment from the teacher's predictions (kd.assign=teacher)")
    if cfg.kd.teacher and teacher is None and cfg.model.init_from != "teacher":
        log.warning(f"kd.teacher={cfg.kd.teacher} is set but every KD weight is 0: plain training")
    if cfg.model.init_from and run.resumed is None:  # a resumed run loads its own weights
        src = cfg.kd.teacher if cfg.model.init_from == "teacher" else cfg.model.init_from
        if teacher is not None and src == cfg.kd.teacher:
            larger = teacher
        elif src == cfg.kd.teacher:  # weight selection alone, no teacher pass: the same class map as for KD
            larger = map_teacher(load_detector(src, device), class_names, cfg.kd.teacher_classes)
        else:
            larger = load_detector(src, device)
        start_from(student, larger, src, select=True)  # class rows by name (or through kd.teacher_classes)
    if teacher is not None:  # after weight selection, which copies the teacher's unfolded BN layers
        folded = teacher.fold_batchnorm()
        if folded:
            log.info(f"teacher: {folded} BatchNorm layers folded into their convolutions (a frozen forward pass)")
        if bf16 or cfg.train.channels_last:
            teacher.to(memory_format=torch.channels_last)
    log.info(f"student {cfg.model.name} ({sum(p.numel() for p in student.parameters()) / 1e6:.2f} M params), "
             f"classes {class_names}")
    objective = Objective(student, distiller, (lambda t: sum_across(run.d, t)) if run.d.enabled else None)
    if cfg.train.channels_last:  # the same Parameter objects, NHWC strides (the optimizer is built after this)
        objective.to(memory_format=torch.channels_last)
    # KD-only steps on unlabelled frames leave the detection-loss-only parts without gradients
    # broadcast_buffers: every forward starts from rank 0's buffers, QAT's activation ranges included, so all
    # processes quantize with the same scales
    # learned QAT ranges: a conv reading its producer's grid leaves its own input scale unused
    unused = bool(cfg.data.unlabeled) or (bool(cfg.train.qat) and cfg.train.qat_ranges == "learned")
    step_fn = DDP(objective, find_unused_parameters=unused, broadcast_buffers=True) \
        if run.d.enabled else objective
    return Models(student, teacher, distiller, bf16, objective, step_fn)


@dataclass
class Optimization:
    optimizer: torch.optim.Optimizer
    base_lr: float
    momentum: float
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    steps_per_epoch: int
    accumulate: int  # micro-batches per optimizer step at the nominal batch size
    warmup_steps: int
    use_amp: bool
    ranges: torch.optim.Optimizer | None = None  # QAT's learned activation scales (train.qat_ranges=learned)


def build_optimization(cfg: RunConfig, run: Run, data: Data, models: Models) -> Optimization:
    n_batches = len(train_loader(cfg, run, data, 0))
    steps = min(n_batches, cfg.train.max_steps) if cfg.train.max_steps else n_batches
    accumulate = max(round(cfg.train.nbs / cfg.train.batch), 1)
    optimizer, base_lr, momentum = build_optimizer([models.objective], cfg.train, len(data.class_names), accumulate,
                                                   n_images=len(data.train.images))
    log.info(f"optimizer: {type(optimizer).__name__} (train.optimizer={cfg.train.optimizer}), lr {base_lr:g}, "
             f"momentum {momentum:g}")
    use_amp = cfg.train.amp and run.device.type == "cuda"
    if cfg.train.qat and run.resumed is None:  # activation ranges first: the EMA copy starts from them
        from ..deploy.qat import calibrate, start_learning

        loader = train_loader(cfg, run, data, 0)
        batches = (b["img"].to(run.device) for b, _ in zip(loader, range(cfg.train.qat_calib)))
        log.info(f"QAT: activation ranges set on {calibrate(models.student, batches)} batches")
        if cfg.train.qat_ranges == "learned":
            log.info(f"QAT: {start_learning(models.student.model)} activation scales learned from here "
                     f"(Adam, lr {cfg.train.qat_range_lr:g})")
            # each process calibrated on its own batches; DDP synchronised the parameters before: rank 0's scales
            broadcast_tensors(run.d, [t for k, t in models.student.model.state_dict().items()
                                      if k.endswith(("log_scale", "zero_point", "scale_calibrated"))])
    ema = ModelEMA(models.student, cfg.train.ema_decay) if cfg.train.ema else None
    warmup = max(round(cfg.train.warmup_epochs * steps), cfg.train.warmup_min_steps) if cfg.train.warmup_epochs > 0 else 0
    return Optimization(optimizer, base_lr, momentum, torch.amp.GradScaler("cuda", enabled=use_amp), ema, steps,
                        accumulate, warmup, use_amp, build_range_optimizer([models.objective], cfg.train))


@dataclass
class State:
    epoch: int = 0  # next epoch to run (0-based)
    best_map: float = -1.0
    lr: float = 0.0
    metrics: dict = field(default_factory=dict)


def resume(run: Run, models: Models, optim: Optimization) -> State:
    """Weights, optimizer, EMA, AMP scaler and distiller adapters from the run's last.pt, if resuming."""
    ck = run.resumed
    if ck is None:
        return State(lr=optim.base_lr)
    models.student.model.load_state_dict(ck["model"])
    optim.optimizer.load_state_dict(ck["optimizer"])
    if optim.ranges is not None and ck.get("ranges_optimizer") is not None:
        optim.ranges.load_state_dict(ck["ranges_optimizer"])
    if models.distiller is not None and ck.get("distiller") is not None:
        models.distiller.load_state_dict(ck["distiller"])
    if optim.ema is not None and ck.get("ema") is not None:
        optim.ema.ema.model.load_state_dict(ck["ema"])
        optim.ema.updates = ck["ema_updates"]
    if ck.get("scaler"):
        optim.scaler.load_state_dict(ck["scaler"])
    run.keep_rows_upto(ck["epoch"] + 1)  # drop rows of an epoch that was not saved
    log.info(f"resumed from {run.last}: epoch {ck['epoch'] + 2} of {run.cfg.train.epochs} is next")
    return State(epoch=ck["epoch"] + 1, best_map=ck["best_map"], lr=optim.base_lr)


# --- the loop --------------------------------------------------------------------------------------------------------

def _cycle(loader):
    while True:
        yield from loader


def train_step(cfg: RunConfig, run: Run, models: Models, optim: Optimization, batch: dict, unl_iter, kd_factor: float,
               epoch: int, i: int) -> dict:
    """One labelled batch (and one unlabelled batch with soft-label KD): forward, backward; returns the loss terms."""
    img = batch["img"].to(run.device, non_blocking=True)  # (B, 3, S, S)
    if cfg.train.channels_last:
        img = img.contiguous(memory_format=torch.channels_last)
    with torch.autocast(run.device.type, enabled=optim.use_amp):
        out_t = teacher_forward(models.teacher, img, models.teacher_bf16) if models.teacher is not None else None
        total, terms = models.step_fn(img, batch, out_t, kd_factor)
    run.check_finite(total, terms, f"at epoch {epoch + 1}, step {i + 1}")
    if run.d.enabled:  # detection terms are this process's share of the global value; KD terms per-process means
        terms = {k: (mean_across(run.d, v) if k.startswith("kd_") else sum_across(run.d, v)) for k, v in terms.items()}
    if epoch == 0 and i == 0:
        first = float(sum_across(run.d, total.detach())) / (img.shape[0] * run.d.world)
        parts = " ".join(f"{k}={float(v):.6f}" for k, v in terms.items())
        log.info(f"first step loss {first:.6f} (per image, mean over processes): {parts}")
    optim.scaler.scale(total * run.d.world).backward()  # DDP averages gradients over processes: undo it
    if unl_iter is not None:  # soft-label KD on an unlabelled batch; gradients accumulate with the labelled ones
        img_u = next(unl_iter)["img"].to(run.device, non_blocking=True)  # (B, 3, S, S)
        if cfg.train.channels_last:
            img_u = img_u.contiguous(memory_format=torch.channels_last)
        with torch.autocast(run.device.type, enabled=optim.use_amp):
            out_tu = teacher_forward(models.teacher, img_u, models.teacher_bf16)
            pseudo = teacher_as_ground_truth(models.teacher, out_tu, img_u, cfg.data.pseudo_conf)
            total_u, terms_u = models.step_fn(img_u, None, out_tu, kd_factor * cfg.data.unlabeled_weight, pseudo)
        run.check_finite(total_u, terms_u, f"on unlabelled frames at epoch {epoch + 1}, step {i + 1}")
        optim.scaler.scale(total_u * run.d.world).backward()
        terms.update({f"u{k}": mean_across(run.d, v) for k, v in terms_u.items()})
    return terms


def optimizer_step(cfg: RunConfig, models: Models, optim: Optimization) -> None:
    optimizers = [o for o in (optim.optimizer, optim.ranges) if o is not None]
    for o in optimizers:
        optim.scaler.unscale_(o)
    if cfg.train.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(models.objective.parameters(), cfg.train.clip_grad)
    for o in optimizers:
        optim.scaler.step(o)
        o.zero_grad(set_to_none=True)
    optim.scaler.update()
    if optim.ema is not None:
        optim.ema.update(models.student)


def train_epoch(cfg: RunConfig, run: Run, data: Data, models: Models, optim: Optimization, state: State, epoch: int,
                callbacks: Callbacks) -> dict:
    """The steps of one epoch; returns the epoch's CSV row (mean loss terms, lr, KD factor, time)."""
    loader = train_loader(cfg, run, data, epoch)
    unl_iter = _cycle(train_loader(cfg, run, data, epoch, unlabeled=True)) if data.unlabeled else None
    nb = optim.steps_per_epoch
    kd_factor = models.distiller.weight_factor(epoch, cfg.train.epochs) if models.distiller is not None else 0.0
    models.objective.train()
    models.student.start_epoch(epoch, cfg.train.epochs)  # epoch-scheduled losses (YOLO26's one-to-many weight)
    if cfg.train.qat and epoch >= cfg.train.epochs - cfg.train.qat_freeze:
        from ..deploy.qat import freeze_ranges

        freeze_ranges(models.student.model)  # the last epochs train against the scales they will be deployed with
    sums: dict[str, float] = {}
    t0 = time.time()
    bar = tqdm(loader, total=nb, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, mininterval=2,
               disable=not run.main)
    for o in (optim.optimizer, optim.ranges):
        if o is not None:
            o.zero_grad(set_to_none=True)
    last_opt_step = epoch * nb - 1  # each epoch ends with a step (see below), so none carries over
    for i, batch in enumerate(bar):
        if i >= nb:
            break
        step = i + nb * epoch
        state.lr = set_lr(optim.optimizer, cfg.train, optim.base_lr, optim.momentum, epoch, step, optim.warmup_steps)
        if optim.ranges is not None:  # the same decay, no warm-up (the scales start calibrated)
            optim.ranges.param_groups[0]["lr"] = optim.ranges.param_groups[0]["initial_lr"] * lr_factor(cfg.train, epoch)
        terms = train_step(cfg, run, models, optim, batch, unl_iter, kd_factor, epoch, i)
        # accumulate to the nominal batch; during warm-up the accumulation ramps up from 1 (as ultralytics does)
        acc = optim.accumulate if step >= optim.warmup_steps else \
            max(1, round(1 + (optim.accumulate - 1) * step / optim.warmup_steps))
        if step - last_opt_step >= acc or i + 1 == nb:
            last_opt_step = step
            optimizer_step(cfg, models, optim)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        bar.set_postfix({k: f"{v / (i + 1):.3f}" for k, v in sums.items()}, refresh=False)
        for fn in callbacks.get("batch_end", []):
            fn({"epoch": epoch, "step": step, "terms": terms})
    bar.close()
    return {"epoch": epoch + 1, "lr": f"{state.lr:.6g}", **{f"loss_{k}": f"{v / nb:.5f}" for k, v in sums.items()},
            "kd_factor": f"{kd_factor:.4f}", "sec_train": f"{time.time() - t0:.1f}"}


def end_epoch(cfg: RunConfig, run: Run, data: Data, models: Models, optim: Optimization, state: State, epoch: int,
              row: dict, callbacks: Callbacks) -> None:
    """Evaluate (rank 0; every ``eval_every`` epochs and after the last), log the row, save last.pt and best.pt."""
    from ..eval import evaluate, write_predictions

    if run.main:
        eval_model = optim.ema.ema if optim.ema is not None else models.student
        last = epoch + 1 == cfg.train.epochs
        if last or (epoch + 1) % cfg.train.eval_every == 0:
            t1 = time.time()
            preds: list | None = [] if last else None
            state.metrics = evaluate(eval_model.eval().predict, data.val_ds, cfg.data.imgsz, cfg.train.eval_batch,
                                     run.device, quiet=True, predictions_out=preds)
            if last:  # the final weights' detections: paired comparisons between runs (cvkd val --baseline)
                write_predictions(preds, run.dir / "val_predictions.json")
            row.update({k: f"{state.metrics[k]:.5f}" for k in ("map", "ap50", "ap75")})
            if getattr(eval_model, "end2end", False):  # YOLO26: also its one-to-many branch + NMS (map_o2m), as
                eval_model.e2e_nms = True                # ultralytics reports both; the one-to-one branch lags it
                o2m = evaluate(eval_model.predict, data.val_ds, cfg.data.imgsz, cfg.train.eval_batch, run.device,
                               quiet=True)
                eval_model.e2e_nms = False
                row["map_o2m"] = f"{o2m['map']:.5f}"
            row["sec_eval"] = f"{time.time() - t1:.1f}"
        run.add_row(row)
        is_best = "map" in row and float(row["map"]) > state.best_map
        state.best_map = float(row["map"]) if is_best else state.best_map
        meta = detector_meta(models.student, cfg, epoch=epoch + 1,
                             metrics={k: row.get(k) for k in ("map", "ap50", "ap75")})
        ema, distiller = optim.ema, models.distiller
        run.save("last.pt", models.student.model.state_dict(), meta, optimizer=optim.optimizer.state_dict(),
                 ema=ema.ema.model.state_dict() if ema else None, ema_updates=ema.updates if ema else 0,
                 distiller=distiller.state_dict() if distiller else None, scaler=optim.scaler.state_dict(),
                 ranges_optimizer=optim.ranges.state_dict() if optim.ranges else None,
                 epoch=epoch, best_map=state.best_map)
        if is_best:
            run.save("best.pt", eval_model.model.state_dict(), meta)
        log.info(f"epoch {epoch + 1}/{cfg.train.epochs}: " + " ".join(f"{k}={v}" for k, v in row.items() if k != "epoch"))
        if cfg.train.qat_ranges == "learned" and cfg.train.qat:
            from ..deploy.qat import learned_range_summary

            log.info(learned_range_summary(models.student.model))
        for fn in callbacks.get("epoch_end", []):
            fn({"epoch": epoch, "row": row, "run_dir": run.dir})
    run.barrier()


def train(cfg: RunConfig, callbacks: Callbacks | None = None) -> dict:
    """Run (or resume) one training, in one process or under torchrun; returns the final val metrics (rank 0).
    ``callbacks``: {"batch_end" | "epoch_end" | "kd_term": [fn(info dict)]}."""
    callbacks = callbacks or {}
    run = Run(cfg, "detector", "epoch", plot_results).start()  # device, processes, folder, log, config, resume state
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    log.info(f"cvkd {__version__}: run folder {run.dir}, device {run.device}"
             + (f", {run.d.world} processes" if run.d.enabled else ""))
    data = load_data(cfg, run)
    models = build_models(cfg, data.class_names, run, callbacks)
    build_pipelines(cfg, run, data)
    optim = build_optimization(cfg, run, data, models)
    state = resume(run, models, optim)
    start_epoch = state.epoch
    for epoch in range(start_epoch, cfg.train.epochs):
        row = train_epoch(cfg, run, data, models, optim, state, epoch, callbacks)
        end_epoch(cfg, run, data, models, optim, state, epoch, row, callbacks)
    run.finish(models.student)

    final_model = optim.ema.ema if optim.ema is not None else models.student
    metrics = state.metrics
    if not metrics and run.rows:  # resumed a finished run
        metrics = {k: float(run.rows[-1][k]) for k in ("map", "ap50", "ap75") if run.rows[-1].get(k)}
    # what the benchmarks use: final epoch, no best-on-val picking; also written when resuming a run killed while
    # writing it (last.pt of the final epoch holds the same weights)
    if start_epoch < cfg.train.epochs or not (run.dir / "final.pt").is_file():
        run.save("final.pt", final_model.model.state_dict(),
                 detector_meta(models.student, cfg, epoch=cfg.train.epochs, metrics=metrics))
    log.info(f"done: {run.dir} map={metrics.get('map', float('nan')):.4f} ap50={metrics.get('ap50', float('nan')):.4f}")
    return {"run_dir": str(run.dir), **metrics}
