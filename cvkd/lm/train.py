"""One step-based training loop for the char-level LM: teacher, from-scratch student, or distilled student (online
teacher or offline cache), so that baseline and distilled students see exactly the same blocks and schedule.

Optimisation as in nanoGPT/GPT-2: AdamW (Loshchilov & Hutter 2019) with decoupled weight decay on matrices only,
linear warm-up then cosine decay (Loshchilov & Hutter 2017, SGDR), gradient-norm clipping, gradient accumulation.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .. import __version__
from ..checkpoint import CheckpointError, load_checkpoint
from ..config import ConfigError, to_dict
from ..engine.distributed import sum_across
from ..runs import Run, resolve_run_config
from .cache import load_or_build
from .config import LMRunConfig
from .data import BlockSampler, CharTokenizer, TextData, read_corpus
from .distill import TrainingError, accumulate, bits_per_char, lm_loss, perplexity
from .model import GPT, GPTConfig
from .report import plot_lm_results

log = logging.getLogger("cvkd")


def resolve_config(config_path: str | None, overrides: list[str]) -> LMRunConfig:
    """The config of a new LM run, or of the run being resumed plus the overrides."""
    return resolve_run_config(LMRunConfig, config_path, overrides)


def lr_at(step: int, cfg) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to ``min_lr * lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    x = min((step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 1.0)
    return cfg.lr * (cfg.min_lr + (1.0 - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * x)))


def build_optimizer(model: GPT, cfg) -> torch.optim.AdamW:
    """AdamW; weight decay on 2-D weights (linear layers, token embedding) only."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("wpe")]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("wpe"))]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2))


def load_lm(path: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, CharTokenizer, dict]:
    """A cvkd LM checkpoint -> (model in eval mode, tokenizer, checkpoint dict); one-line CheckpointError if not."""
    ck = load_checkpoint(path, kind="lm", map_location=device)
    try:
        model = GPT(GPTConfig(**ck["meta"]["model"]))
        model.load_state_dict(ck["model"])
        tok = CharTokenizer(ck["meta"]["vocab"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: broken LM checkpoint ({type(e).__name__}: {str(e)[:80]})") from None
    return model.to(device).eval(), tok, ck


@torch.no_grad()
def evaluate(model: GPT, data: TextData, batch: int, max_blocks: int, device: torch.device) -> float:
    """Mean next-token NLL (nats) over the deterministic val blocks, weighted by valid tokens."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y, mask in data.val_batches(batch, max_blocks):
        logits = model(x.to(device)).float()  # (B, T, V)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="none")
        m = mask.to(device).flatten()  # (B*T,)
        total += float(nll[m].sum())
        count += int(m.sum())
    model.train(was_training)
    return total / max(count, 1)


def _setup_teacher(cfg: LMRunConfig, device: torch.device):
    """The frozen teacher LM, its tokenizer and checkpoint (None, None, {} without one)."""
    if not cfg.kd.teacher:
        return None, None, {}
    teacher, tok_t, ck_t = load_lm(cfg.kd.teacher, device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, tok_t, ck_t


def _setup_data(cfg: LMRunConfig, run: Run, tok_t: CharTokenizer | None, teacher: GPT | None):
    """Tokenizer (the resumed run's, the teacher's, or from the corpus), model config and the train/val split."""
    text = read_corpus(cfg.data.path)
    ck = run.resumed
    tok = CharTokenizer(ck["meta"]["vocab"]) if ck else tok_t or CharTokenizer.from_text(text)
    if tok_t is not None and tok.chars != tok_t.chars:
        raise CheckpointError(f"{cfg.kd.teacher}: teacher vocabulary differs from the student's")
    mcfg = GPTConfig(**{**asdict(cfg.model), "vocab_size": tok.vocab_size})
    mcfg.check()
    if teacher is not None and teacher.cfg.block_size < mcfg.block_size:
        raise ConfigError(f"teacher block_size {teacher.cfg.block_size} < student block_size {mcfg.block_size}")
    data = TextData(text, tok, cfg.data.val_fraction, mcfg.block_size)
    log.info(f"data {cfg.data.path}: vocab {tok.vocab_size}, {data.train_ids.numel()} train / "
             f"{data.val_ids.numel()} val tokens")
    return tok, mcfg, data


@dataclass
class LMRun:
    """What the steps of an LM run share."""

    cfg: LMRunConfig
    run: Run
    model: GPT
    fwd: torch.nn.Module  # the model, or its DDP wrapper
    opt: torch.optim.Optimizer
    sampler: BlockSampler
    data: TextData
    meta: dict
    teacher: GPT | None = None
    cache: object | None = None
    best: float = float("inf")
    saved_step: int = 0

    def save_last(self, step: int) -> None:
        self.run.save("last.pt", self.model.state_dict(), {**self.meta, "step": step}, optimizer=self.opt.state_dict(),
                      sampler=self.sampler.state_dict(), rng=torch.get_rng_state(), step=step, best_val=self.best)
        self.saved_step = step

    def shard(self, b: dict) -> dict:
        """Every process draws the same global batch (same sampler state); each keeps its rows."""
        d = self.run.d
        return {k: v[d.rank::d.world] for k, v in b.items()} if d.enabled else b

    def loss_fn(self, b: dict) -> dict:
        device, cfg = self.run.device, self.cfg
        x, y, mask = b["x"].to(device), b["y"].to(device), b["mask"].to(device)
        tgt = None
        if self.cache is not None:
            tgt = {k: v.to(device) for k, v in self.cache.lookup(b["index"]).items()}
        elif self.teacher is not None:
            with torch.no_grad():
                tgt = {"logits": self.teacher(x)}  # (B, T, V)
        return lm_loss(self.fwd(x), y, mask, tgt, cfg.kd.alpha, cfg.kd.temperature, cfg.kd.kind, cfg.kd.beta)


def build(cfg: LMRunConfig, run: Run, teacher_parts: tuple) -> LMRun:
    teacher, tok_t, ck_t = teacher_parts
    if teacher is not None:
        log.info(f"teacher {cfg.kd.teacher}: {teacher.num_params() / 1e6:.2f} M params, "
                 f"step {ck_t['meta'].get('step')}")
    tok, mcfg, data = _setup_data(cfg, run, tok_t, teacher)
    torch.manual_seed(cfg.train.seed)
    model = GPT(mcfg).to(run.device)
    fwd = DDP(model) if run.d.enabled else model  # the raw model evaluates and saves; DDP syncs gradients
    if run.d.enabled and cfg.train.batch % run.d.world:
        raise ConfigError(f"train.batch={cfg.train.batch} must be divisible by the number of processes ({run.d.world})")
    cache = None
    if cfg.kd.cache:
        teacher_id = f"{Path(cfg.kd.teacher).resolve()}@step{ck_t['meta'].get('step')}"
        cache = load_or_build(cfg.kd.cache, teacher, teacher_id, data, cfg.kd.cache_topk, cfg.kd.temperature,
                              cfg.kd.cache_batch, run.device)
    log.info(f"model: {model.num_params() / 1e6:.2f} M params ({mcfg.n_layer} layers x {mcfg.n_embd}), "
             f"{cfg.train.batch * cfg.train.accum * mcfg.block_size} tokens/step")
    meta = {"model": asdict(mcfg), "vocab": tok.chars, "cvkd_version": __version__, "config": to_dict(cfg),
            "role": "distilled" if teacher is not None else "trained"}
    sampler = BlockSampler(data, cfg.train.batch, cfg.data.sampling, cfg.train.seed)
    return LMRun(cfg, run, model, fwd, build_optimizer(model, cfg.train), sampler, data, meta, teacher, cache)


def resume(s: LMRun) -> int:
    """Model, optimizer, sampler and RNG from the run's last.pt; returns the number of steps done."""
    ck = s.run.resumed
    if ck is None:
        return 0
    s.model.load_state_dict(ck["model"])
    s.opt.load_state_dict(ck["optimizer"])
    s.sampler.load_state_dict(ck["sampler"])
    torch.set_rng_state(ck["rng"])
    s.best, s.saved_step = ck["best_val"], ck["step"]
    s.run.keep_rows_upto(ck["step"])
    log.info(f"resumed from {s.run.last}: step {ck['step']} of {s.cfg.train.steps} done")
    return ck["step"]


def train_step(s: LMRun, step: int) -> dict:
    """One optimizer step over ``train.accum`` micro-batches; returns the loss terms (global token means)."""
    d = s.run.d
    lr = lr_at(step, s.cfg.train)
    for g in s.opt.param_groups:
        g["lr"] = lr
    micro = [s.shard(s.sampler.next()) for _ in range(s.cfg.train.accum)]
    n_all = int(sum_across(d, torch.tensor(float(sum(int(b["mask"].sum()) for b in micro)))))
    try:
        terms = accumulate(micro, s.loss_fn, step + 1, total_valid=n_all, scale=d.world)
        if d.enabled:  # each process holds its share of the global token mean
            terms = {k: float(sum_across(d, torch.tensor(v))) for k, v in terms.items()}
    except TrainingError as e:
        raise TrainingError(f"{e}; last good checkpoint: {s.run.last}") from None
    if s.cfg.train.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.train.clip_grad)
    s.opt.step()
    s.opt.zero_grad(set_to_none=True)
    return {**terms, "lr": lr}


def evaluate_and_save(s: LMRun, done: int, sums: dict, n_sum: int, lr: float, t0: float) -> float:
    """Val loss, the CSV row, best.pt and last.pt (rank 0); returns the val loss."""
    t1 = time.time()
    val = evaluate(s.model, s.data, s.cfg.train.batch, s.cfg.train.eval_blocks, s.run.device)
    tokens_per_step = s.cfg.train.batch * s.cfg.train.accum * s.model.cfg.block_size
    row = {"step": done, "epoch": f"{done * tokens_per_step / s.data.train_ids.numel():.3f}", "lr": f"{lr:.6g}",
           **{f"loss_{k}": f"{v / n_sum:.5f}" for k, v in sums.items()}, "val_loss": f"{val:.5f}",
           "val_ppl": f"{perplexity(val):.4f}", "val_bpc": f"{bits_per_char(val):.5f}", "sec_train": f"{t1 - t0:.1f}",
           "sec_eval": f"{time.time() - t1:.1f}"}
    s.run.add_row(row)
    if val < s.best:
        s.best = val
        s.run.save("best.pt", s.model.state_dict(), {**s.meta, "step": done, "val_loss": val})
    s.save_last(done)
    log.info(f"step {done}/{s.cfg.train.steps}: " + " ".join(f"{k}={v}" for k, v in row.items() if k != "step"))
    return val


def train(cfg: LMRunConfig) -> dict:
    """Run (or resume) one LM training; returns the run folder and the final val metrics."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run = Run(cfg, "lm", "step", plot_lm_results)  # device and processes
    teacher = _setup_teacher(cfg, run.device)  # before the run folder exists: a bad teacher leaves nothing behind
    run.start()  # folder, log, saved config, resume state
    log.info(f"cvkd {__version__}: LM run folder {run.dir}, device {run.device}"
             + (f", {run.d.world} processes" if run.d.enabled else ""))
    s = build(cfg, run, teacher)
    start = resume(s)
    sums: dict[str, float] = {}
    n_sum, t0 = 0, time.time()
    val = float(run.rows[-1]["val_loss"]) if run.rows else float("nan")
    s.model.train()
    bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc=run.dir.name, mininterval=10,
               disable=not run.main)
    done, pre = start, None
    try:
        for step in bar:
            pre = (s.sampler.state_dict(), torch.get_rng_state())  # to undo a half-done step on Ctrl-C
            terms = train_step(s, step)
            lr = terms.pop("lr")
            done, pre = step + 1, None
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            n_sum += 1
            bar.set_postfix({k: f"{v / n_sum:.3f}" for k, v in sums.items()}, refresh=False)
            if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
                if run.main:  # rank 0 evaluates and saves
                    val = evaluate_and_save(s, done, sums, n_sum, lr, t0)
                sums, n_sum, t0 = {}, 0, time.time()
                run.barrier()
            elif cfg.train.save_every and done % cfg.train.save_every == 0:
                s.save_last(done)
    except KeyboardInterrupt:  # keep every finished step: resume continues exactly where this stopped
        bar.close()
        if pre is not None:
            s.sampler.load_state_dict(pre[0])
            torch.set_rng_state(pre[1])
        if done > s.saved_step:
            s.save_last(done)
            log.info(f"interrupted: saved {run.last} at step {done}")
        raise
    bar.close()
    run.finish(s.model)
    log.info(f"done: {run.dir} val_loss={val:.4f} val_ppl={perplexity(val):.3f} val_bpc={bits_per_char(val):.4f}")
    return {"run_dir": str(run.dir), "val_loss": val, "val_ppl": perplexity(val), "val_bpc": bits_per_char(val),
            "params_m": s.model.num_params() / 1e6, "best_val": s.best}
