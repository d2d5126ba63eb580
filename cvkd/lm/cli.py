"""Shared command line of tools/train_lm.py and tools/distill_lm.py: a YAML config plus ``key=value`` overrides."""
from __future__ import annotations

import argparse
import sys

from ..checkpoint import CheckpointError
from ..config import ConfigError, describe
from .config import LMRunConfig
from .data import DataError
from .distill import TrainingError


def main(argv: list[str] | None, description: str, require_teacher: bool) -> int:
    from .train import resolve_config, train

    epilog = "config keys (set in the YAML or as key=value overrides):\n" + "\n".join(describe(LMRunConfig))
    ap = argparse.ArgumentParser(description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", "-c", help="YAML config (configs/lm_*.yaml); keys not given take the defaults below")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=500 kd.temperature=2")
    args = ap.parse_args(argv)
    try:
        cfg = resolve_config(args.config, args.overrides)
        if require_teacher and not cfg.kd.teacher:
            raise ConfigError("distillation needs a teacher: set kd.teacher=path/to/teacher/best.pt")
        if not require_teacher and cfg.kd.teacher:
            raise ConfigError("tools/train_lm.py trains without a teacher: use tools/distill_lm.py or kd.teacher=''")
        result = train(cfg)
    except (ConfigError, DataError, CheckpointError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with resume=<run folder>", file=sys.stderr)
        return 130
    print(f"run folder: {result['run_dir']}")
    print(" ".join(f"{k}={result[k]:.4f}" for k in ("val_loss", "val_ppl", "val_bpc")))
    return 0
