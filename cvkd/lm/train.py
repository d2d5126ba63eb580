"""One step-based training loop for the char-level LM: teacher, from-scratch student, or distilled student (online
teacher or offline cache), so that baseline and distilled students see exactly the same blocks and schedule.

Optimisation as in nanoGPT/GPT-2: AdamW (Loshchilov & Hutter 2019) with decoupled weight decay on matrices only,
linear warm-up then cosine decay (Loshchilov & Hutter 2017, SGDR), gradient-norm clipping, gradient accumulation.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .. import __version__
from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..config import ConfigError, save_config, to_dict
from ..engine.distributed import barrier, broadcast, check_replicas, sum_across
from ..engine.distributed import cleanup as dist_cleanup
from ..engine.distributed import setup as dist_setup
from ..engine.report import read_rows, write_rows
from ..runs import make_run_dir, resolve_run_config, setup_logging
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


def train(cfg: LMRunConfig) -> dict:
    """Run (or resume) one LM training; returns the run folder and the final val metrics."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    d, device = dist_setup(cfg.train.device)  # one process, or one per GPU/CPU slot under torchrun
    teacher, tok_t, ck_t = None, None, {}
    if cfg.kd.teacher:  # before the run folder exists: a bad teacher path leaves nothing behind
        teacher, tok_t, ck_t = load_lm(cfg.kd.teacher, device)
        for p in teacher.parameters():
            p.requires_grad_(False)
    text = read_corpus(cfg.data.path)
    run_dir = Path(broadcast(d, str(make_run_dir(cfg.out, cfg.name, cfg.resume)) if d.main else None))
    if d.main:
        setup_logging(run_dir)
        save_config(cfg, run_dir / "config.yaml")
    log.info(f"cvkd {__version__}: LM run folder {run_dir}, device {device}"
             + (f", {d.world} processes" if d.enabled else ""))
    if teacher is not None:
        log.info(f"teacher {cfg.kd.teacher}: {teacher.num_params() / 1e6:.2f} M params, "
                 f"step {ck_t['meta'].get('step')}")
    last = run_dir / "last.pt"
    ck = load_checkpoint(last, kind="lm", map_location="cpu") if cfg.resume and last.is_file() else None
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

    torch.manual_seed(cfg.train.seed)
    model = GPT(mcfg).to(device)
    fwd = DDP(model) if d.enabled else model  # the raw model evaluates and saves; DDP syncs gradients
    if d.enabled and cfg.train.batch % d.world:
        raise ConfigError(f"train.batch={cfg.train.batch} must be divisible by the number of processes ({d.world})")
    opt = build_optimizer(model, cfg.train)
    sampler = BlockSampler(data, cfg.train.batch, cfg.data.sampling, cfg.train.seed)
    cache = None
    if cfg.kd.cache:
        teacher_id = f"{Path(cfg.kd.teacher).resolve()}@step{ck_t['meta'].get('step')}"
        cache = load_or_build(cfg.kd.cache, teacher, teacher_id, data, cfg.kd.cache_topk, cfg.kd.temperature,
                              cfg.kd.cache_batch, device)
    log.info(f"model: {model.num_params() / 1e6:.2f} M params ({mcfg.n_layer} layers x {mcfg.n_embd}), "
             f"{cfg.train.batch * cfg.train.accum * mcfg.block_size} tokens/step")

    start, best = 0, float("inf")
    rows = read_rows(run_dir / "results.csv") if ck is not None else []  # no last.pt: stale rows go
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sampler.load_state_dict(ck["sampler"])
        torch.set_rng_state(ck["rng"])
        start, best = ck["step"], ck["best_val"]
        rows = [r for r in rows if int(r["step"]) <= start]
        log.info(f"resumed from {last}: step {start} of {cfg.train.steps} done")
    role = "distilled" if teacher is not None else "trained"
    meta = {"model": asdict(mcfg), "vocab": tok.chars, "cvkd_version": __version__, "config": to_dict(cfg),
            "role": role}

    saved = {"step": start}

    def save_last(step: int) -> None:
        if not d.main:
            return
        save_checkpoint(last, "lm", model.state_dict(), {**meta, "step": step}, optimizer=opt.state_dict(),
                        sampler=sampler.state_dict(), rng=torch.get_rng_state(), step=step, best_val=best)
        saved["step"] = step

    def shard(b: dict) -> dict:
        """Every process draws the same global batch (same sampler state); each keeps its rows."""
        return {k: v[d.rank::d.world] for k, v in b.items()} if d.enabled else b

    def loss_fn(b: dict) -> dict:
        x, y, mask = b["x"].to(device), b["y"].to(device), b["mask"].to(device)
        tgt = None
        if cache is not None:
            tgt = {k: v.to(device) for k, v in cache.lookup(b["index"]).items()}
        elif teacher is not None:
            with torch.no_grad():
                tgt = {"logits": teacher(x)}  # (B, T, V)
        return lm_loss(fwd(x), y, mask, tgt, cfg.kd.alpha, cfg.kd.temperature, cfg.kd.kind, cfg.kd.beta)

    tokens_per_step = cfg.train.batch * cfg.train.accum * mcfg.block_size
    sums: dict[str, float] = {}
    n_sum, t0 = 0, time.time()
    val = float(rows[-1]["val_loss"]) if rows else float("nan")
    model.train()
    bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc=run_dir.name, mininterval=10,
               disable=not d.main)
    done, pre = start, None
    try:
        for step in bar:
            pre = (sampler.state_dict(), torch.get_rng_state())  # to undo a half-done step on Ctrl-C
            lr = lr_at(step, cfg.train)
            for g in opt.param_groups:
                g["lr"] = lr
            micro = [shard(sampler.next()) for _ in range(cfg.train.accum)]
            n_all = int(sum_across(d, torch.tensor(float(sum(int(b["mask"].sum()) for b in micro)))))
            try:
                terms = accumulate(micro, loss_fn, step + 1, total_valid=n_all, scale=d.world)
                if d.enabled:  # each process holds its share of the global token mean
                    terms = {k: float(sum_across(d, torch.tensor(v))) for k, v in terms.items()}
            except TrainingError as e:
                raise TrainingError(f"{e}; last good checkpoint: {last}") from None
            if cfg.train.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
            opt.step()
            done, pre = step + 1, None
            opt.zero_grad(set_to_none=True)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            n_sum += 1
            bar.set_postfix({k: f"{v / n_sum:.3f}" for k, v in sums.items()}, refresh=False)
            if (done % cfg.train.eval_every == 0 or done == cfg.train.steps) and not d.main:
                sums, n_sum = {}, 0
                barrier(d)  # rank 0 evaluates and saves
            elif done % cfg.train.eval_every == 0 or done == cfg.train.steps:
                t1 = time.time()
                val = evaluate(model, data, cfg.train.batch, cfg.train.eval_blocks, device)
                row = {"step": done, "epoch": f"{done * tokens_per_step / data.train_ids.numel():.3f}",
                       "lr": f"{lr:.6g}", **{f"loss_{k}": f"{v / n_sum:.5f}" for k, v in sums.items()},
                       "val_loss": f"{val:.5f}", "val_ppl": f"{perplexity(val):.4f}",
                       "val_bpc": f"{bits_per_char(val):.5f}", "sec_train": f"{t1 - t0:.1f}",
                       "sec_eval": f"{time.time() - t1:.1f}"}
                rows.append(row)
                write_rows(run_dir / "results.csv", rows)
                plot_lm_results(run_dir / "results.csv", run_dir / "results.png")
                if val < best:
                    best = val
                    save_checkpoint(run_dir / "best.pt", "lm", model.state_dict(),
                                    {**meta, "step": done, "val_loss": val})
                save_last(done)
                log.info(f"step {done}/{cfg.train.steps}: "
                         + " ".join(f"{k}={v}" for k, v in row.items() if k != "step"))
                sums, n_sum, t0 = {}, 0, time.time()
                barrier(d)
            elif cfg.train.save_every and done % cfg.train.save_every == 0:
                save_last(done)
    except KeyboardInterrupt:  # keep every finished step: resume continues exactly where this stopped
        bar.close()
        if pre is not None:
            sampler.load_state_dict(pre[0])
            torch.set_rng_state(pre[1])
        if done > saved["step"]:
            save_last(done)
            log.info(f"interrupted: saved {last} at step {done}")
        raise
    bar.close()
    if d.enabled:
        same = check_replicas(d, model)
        log.info(f"model weights identical on all {d.world} processes: {same}")
        dist_cleanup(d)
        if not same:
            raise TrainingError("model weights differ between processes after training (DDP out of sync)")
    log.info(f"done: {run_dir} val_loss={val:.4f} val_ppl={perplexity(val):.3f} val_bpc={bits_per_char(val):.4f}")
    return {"run_dir": str(run_dir), "val_loss": val, "val_ppl": perplexity(val), "val_bpc": bits_per_char(val),
            "params_m": model.num_params() / 1e6, "best_val": best}
