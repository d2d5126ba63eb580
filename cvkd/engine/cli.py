"""Shared command line of tools/train.py and tools/distill.py: a YAML config plus ``key=value`` overrides."""
from __future__ import annotations

import argparse
import sys

from ..checkpoint import CheckpointError
from ..config import ConfigError, describe
from ..models import ModelError
from .config import RunConfig


def main(argv: list[str] | None, description: str, require_teacher: bool) -> int:
    from ..data import DataError
    from .trainer import TrainingError, resolve_config, train

    epilog = "config keys (set in the YAML or as key=value overrides):\n" + "\n".join(describe(RunConfig))
    ap = argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", "-c", help="YAML config (see configs/); keys not given take the defaults below")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3 kd.teacher=teacher.pt")
    args = ap.parse_args(argv)
    try:
        cfg = resolve_config(args.config, args.overrides)
        if require_teacher and not cfg.kd.teacher:
            raise ConfigError("distillation needs a teacher: set kd.teacher=path/to/teacher.pt")
        if not require_teacher and cfg.kd.teacher:
            raise ConfigError("tools/train.py trains without a teacher: use tools/distill.py, or set kd.teacher=''")
        result = train(cfg)
    except (ConfigError, DataError, ModelError, CheckpointError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with resume=<run folder>", file=sys.stderr)
        return 130
    print(f"run folder: {result['run_dir']}")
    print(" ".join(f"{k}={result[k]:.4f}" for k in ("map", "ap50", "ap75") if k in result))
    return 0
