"""The LM run config: four shallow sections (data, model, train, kd), validated from YAML like the detector runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import ConfigError, setting
from .model import GPTConfig


@dataclass
class LMDataConfig:
    path: str = setting("datasets/text/tinyshakespeare_200k.txt",
                    "text file, or a folder of .txt files (Project Gutenberg header/footer stripped)")
    val_fraction: float = setting(0.1, "the last fraction of the corpus is the held-out val split")
    sampling: Literal["random", "fixed"] = setting("random", "training blocks: random contiguous offsets, or a shuffled "
                                               "fixed grid of blocks (required by an offline teacher cache)")


@dataclass
class LMTrainConfig:
    steps: int = setting(2000, "optimizer steps")
    batch: int = setting(16, "blocks per micro-batch")
    accum: int = setting(1, "micro-batches accumulated per optimizer step (tokens/step = batch*accum*block_size)")
    lr: float = setting(1e-3, "peak learning rate (AdamW)")
    min_lr: float = setting(0.1, "final learning rate as a fraction of lr (cosine decay)")
    warmup: int = setting(100, "linear warm-up steps")
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices (not on norms/biases/positional embeddings)")
    beta2: float = setting(0.99, "AdamW beta2")
    clip_grad: float = setting(1.0, "clip the gradient norm to this value (0 = off)")
    eval_every: int = setting(250, "evaluate on val (and save last.pt) every N steps, and after the last")
    eval_blocks: int = setting(0, "val blocks used per evaluation (0 = the whole val split)")
    save_every: int = setting(0, "also save last.pt every N steps (0 = only at evaluations)")
    seed: int = setting(0, "random seed (initialisation, data order, dropout)")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ...")
    threads: int = setting(0, "torch CPU threads (0 = torch's default)")


@dataclass
class LMKDConfig:
    teacher: str = setting("", "teacher LM checkpoint (.pt); empty = plain training")
    kind: Literal["forward", "reverse", "jsd", "skew"] = setting("forward", "divergence: forward KL (Hinton), reverse KL, "
                                                             "JSD or skew KL (all through cvkd.losses.logit_kd)")
    temperature: float = setting(1.0, "softening temperature T (the KD term is scaled by T^2)")
    alpha: float = setting(0.0, "weight of the hard-label CE term: loss = alpha*CE + (1-alpha)*KD")
    beta: float = setting(0.5, "mixture weight of jsd / skew")
    cache: str = setting("", "offline teacher-logit cache file: built from the teacher if missing, else reused; "
                         "empty = teacher run online")
    cache_topk: int = setting(0, "0 = dense fp16 logits (2*V bytes/token); k > 0 = top-k log-probs + one tail bucket")
    cache_batch: int = setting(64, "blocks per teacher forward while building the cache")


@dataclass
class LMRunConfig:
    out: str = setting("runs/lm", "parent folder of run folders")
    name: str = setting("lm", "run folder name (out/name); an existing folder gets a numeric suffix unless resuming")
    resume: str = setting("", "resume a killed run from its folder (or its last.pt)")
    data: LMDataConfig = field(default_factory=LMDataConfig, metadata={"help": "text corpus and sampling"})
    model: GPTConfig = field(default_factory=GPTConfig, metadata={"help": "the trained model (student)"})
    train: LMTrainConfig = field(default_factory=LMTrainConfig, metadata={"help": "optimisation and schedule"})
    kd: LMKDConfig = field(default_factory=LMKDConfig, metadata={"help": "distillation from a teacher LM"})

    def check(self) -> None:
        from ..runs import pick_device

        pick_device(self.train.device)  # a bad device is one line before any run folder exists
        t, kd = self.train, self.kd
        if t.steps < 1 or t.batch < 1 or t.accum < 1 or t.eval_every < 1:
            raise ConfigError("train.steps, train.batch, train.accum and train.eval_every must be >= 1")
        if not 0.0 < self.data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.data.val_fraction}")
        if not 0.0 <= kd.alpha <= 1.0:
            raise ConfigError(f"kd.alpha must be in [0, 1], got {kd.alpha}")
        if kd.temperature <= 0:
            raise ConfigError(f"kd.temperature must be > 0, got {kd.temperature}")
        if kd.kind == "jsd" and not 0.0 < kd.beta < 1.0:
            raise ConfigError(f"kd.kind=jsd needs 0 < kd.beta < 1, got {kd.beta}")
        if kd.kind == "skew" and not 0.0 <= kd.beta < 1.0:
            raise ConfigError(f"kd.kind=skew needs 0 <= kd.beta < 1, got {kd.beta}")
        if kd.cache and not kd.teacher:
            raise ConfigError("kd.cache needs kd.teacher (the cache is built from it and checked against it)")
        if kd.cache and self.data.sampling != "fixed":
            raise ConfigError("an offline teacher cache is indexed by block: set data.sampling=fixed")
        if kd.cache_topk < 0:
            raise ConfigError("kd.cache_topk must be >= 0")
