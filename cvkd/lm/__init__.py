"""The text-LM branch: a small char-level GPT, its data, and distillation through :func:`cvkd.losses.logit_kd`."""
from .cache import TeacherCache, bytes_per_token, load_or_build, teacher_targets
from .config import LMDataConfig, LMKDConfig, LMRunConfig, LMTrainConfig
from .data import (
    BlockSampler,
    CharTokenizer,
    DataError,
    TextData,
    fixed_blocks,
    read_corpus,
    strip_gutenberg,
)
from .distill import (
    TrainingError,
    accumulate,
    bits_per_char,
    lm_loss,
    perplexity,
    topk_buckets,
)
from .model import GPT, GPTConfig

__all__ = [
    "GPT", "GPTConfig", "BlockSampler", "CharTokenizer", "DataError", "TextData", "fixed_blocks", "read_corpus",
    "strip_gutenberg", "LMDataConfig", "LMKDConfig", "LMRunConfig", "LMTrainConfig", "TeacherCache",
    "bytes_per_token", "load_or_build", "teacher_targets", "TrainingError", "accumulate", "bits_per_char", "lm_loss",
    "perplexity", "topk_buckets",
]
