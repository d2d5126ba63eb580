"""The run shell every cvkd training shares, detector or language model: the resolved config (with resume), the run
folder, the log file, the device and processes (torchrun), the results CSV and plot, atomic checkpoints, the resume
state, the non-finite-loss guard and the replica check; and the command line of the train/distill commands."""
from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .config import ConfigError, load_config, save_config
from .errors import TrainingError

T = TypeVar("T")
log = logging.getLogger("cvkd")


def resolve_run_config(cls: type[T], config_path: str | None, overrides: list[str]) -> T:
    """The config of a new run, or, with ``resume=...``, the saved config of that run plus the other overrides."""
    resume = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("resume=")), "")
    if not resume:  # the saved config alone decides a resumed run: -c is not validated (it may lack e.g. kd.teacher)
        return load_config(cls, config_path, overrides)
    run_dir = Path(resume)
    run_dir = run_dir.parent if run_dir.suffix == ".pt" else run_dir
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"resume={resume}: no config.yaml there (is it a cvkd run folder?)")
    cfg = load_config(cls, run_dir / "config.yaml", [o for o in overrides if not o.startswith("resume=")])
    cfg.resume = str(run_dir)
    return cfg


_new_run_dirs: list[Path] = []  # folders this process created, so a run that fails before any checkpoint leaves none


def make_run_dir(out: str, name: str, resume: str) -> Path:
    """``out/name`` (``name2``, ``name3``... if taken), or the folder being resumed."""
    if resume:
        return Path(resume)
    base = Path(out) / name
    path, i = base, 2
    while path.exists():
        path, i = base.with_name(f"{base.name}{i}"), i + 1
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise ConfigError(f"{path}: cannot create the run folder ({e.strerror or type(e).__name__})") from None
    _new_run_dirs.append(path)
    return path


def discard_failed_run_dirs() -> None:
    """Remove the run folders this process created that hold no checkpoint yet (the run failed before training)."""
    import shutil

    close_logging()
    while _new_run_dirs:
        path = _new_run_dirs.pop()
        if path.is_dir() and not any(path.glob("*.pt")):
            shutil.rmtree(path, ignore_errors=True)


def close_logging() -> None:
    """Detach a run's log handlers: a run called in-process must not leave its ``train.log`` open and written to."""
    for h in [h for h in log.handlers if getattr(h, "_cvkd", False)]:
        log.removeHandler(h)
        h.close()
    log.propagate = True


def setup_logging(run_dir: Path) -> None:
    """The ``cvkd`` logger to ``run_dir/train.log`` (timestamped) and the console (plain)."""
    log.setLevel(logging.INFO)
    close_logging()
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    sh = _CurrentStderr()  # not the stderr of the moment: a run called in-process (tests, notebooks) outlives it
    sh.setFormatter(logging.Formatter("%(message)s"))
    for h in (fh, sh):
        h._cvkd = True  # type: ignore[attr-defined]
        log.addHandler(h)
    log.propagate = False


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; anything else is one line."""
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"{key}={name}: expected auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name} but CUDA is not available on this machine")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"{key}={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}=mps but MPS is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


class Run:
    """One training run's shell. ``kind`` is the checkpoint kind (``detector``/``lm``); ``progress`` the CSV column
    that counts progress (``epoch``/``step``); ``plot(csv, png)`` draws the results. Under torchrun only rank 0
    writes; every rank gets the same folder."""

    def __init__(self, cfg: Any, kind: str, progress: str, plot: Callable[[Path, Path], None]):
        from .engine.distributed import setup

        self.cfg, self.kind, self.progress, self.plot = cfg, kind, progress, plot
        self.d, self.device = setup(cfg.train.device)  # one process, or one per GPU/CPU slot under torchrun
        self.dir: Path | None = None

    def start(self) -> "Run":
        """Create (or reopen) the run folder: log file, saved config, the resume state. What can be checked before
        (a teacher file, say) is best checked before this, so that a bad input leaves no folder behind."""
        from .engine.distributed import broadcast

        cfg, kind = self.cfg, self.kind
        self.dir = Path(broadcast(self.d, str(make_run_dir(cfg.out, cfg.name, cfg.resume)) if self.d.main else None))
        if self.d.main:
            setup_logging(self.dir)
            save_config(cfg, self.dir / "config.yaml")
        self.last = self.dir / "last.pt"
        self.resumed: dict | None = None  # the last.pt being resumed (on the CPU)
        self.rows: list[dict] = []
        if cfg.resume and self.last.is_file():
            from .checkpoint import load_checkpoint
            from .engine.report import read_rows

            self.resumed = load_checkpoint(self.last, kind=kind, map_location="cpu")
            self.rows = read_rows(self.dir / "results.csv")
        elif cfg.resume:  # killed before its first checkpoint: its CSV rows (if any) go with it
            log.info(f"resume: {self.dir} has no last.pt yet, starting from the beginning")
        return self

    @property
    def main(self) -> bool:
        return self.d.main

    def keep_rows_upto(self, done: int) -> None:
        """Drop CSV rows past the resumed checkpoint (a killed run may have logged progress it did not save)."""
        self.rows = [r for r in self.rows if int(r[self.progress]) <= done]

    def add_row(self, row: dict) -> None:
        from .engine.report import write_rows

        self.rows.append(row)
        if self.main:
            write_rows(self.dir / "results.csv", self.rows)
            self.plot(self.dir / "results.csv", self.dir / "results.png")

    def save(self, name: str, weights: dict, meta: dict, **state) -> None:
        """An atomic checkpoint ``name`` in the run folder (rank 0 only)."""
        from .checkpoint import save_checkpoint

        if self.main:
            save_checkpoint(self.dir / name, self.kind, weights, meta, **state)

    def check_finite(self, total: torch.Tensor, terms: dict, where: str) -> None:
        """Stop in one line, naming the first non-finite term, before a bad step reaches the weights."""
        if not torch.isfinite(total):
            bad = next((k for k, v in terms.items() if not torch.isfinite(torch.as_tensor(v))), "total")
            raise TrainingError(f"non-finite loss in term '{bad}' {where}: run stopped; "
                                f"last good checkpoint: {self.last}")

    def barrier(self) -> None:
        from .engine.distributed import barrier

        barrier(self.d)

    def finish(self, model: torch.nn.Module) -> None:
        """Under torchrun: check every process holds the same weights, then leave the process group."""
        from .engine.distributed import check_replicas, cleanup

        if self.d.enabled:
            same = check_replicas(self.d, model)
            log.info(f"weights identical on all {self.d.world} processes: {same}")
            cleanup(self.d)
            if not same:
                raise TrainingError("weights differ between processes after training (DDP out of sync)")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (a tool called in-process by tests outlives their capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        self.stream = sys.stderr
        super().emit(record)


def console_logging(level: int = logging.INFO) -> None:
    """Plain messages to stderr for the command-line tools; calling it again replaces, never stacks, the handler."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _CurrentStderr)]:
        root.removeHandler(h)
    h = _CurrentStderr()
    h.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(h)
    root.setLevel(level)


def tool_main(argv: list[str] | None, description: str, config_cls: type, resolve, train, require_teacher: bool,
              names: tuple[str, str], result_keys: tuple[str, ...]) -> int:
    """The command line of a train/distill tool pair: ``-c config.yaml key=value ...``, every config key in ``--help``,
    known errors as one line (exit 2). ``names``: (train tool, distill tool) for the wrong-tool message."""
    import argparse
    import sys

    from .config import describe
    from .errors import CvkdError

    epilog = "config keys (set in the YAML or as key=value overrides):\n" + "\n".join(describe(config_cls))
    ap = argparse.ArgumentParser(description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", "-c", help="YAML config (see configs/); keys not given take the defaults below")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch=8 kd.teacher=teacher.pt")
    args = ap.parse_args(argv)
    try:
        cfg = resolve(args.config, args.overrides)
        if require_teacher and not cfg.kd.teacher:
            raise ConfigError("distillation needs a teacher: set kd.teacher=path/to/teacher.pt")
        if not require_teacher and cfg.kd.teacher:
            raise ConfigError(f"{names[0]} trains without a teacher: use {names[1]}, or set kd.teacher=''")
        try:
            result = train(cfg)
        finally:
            close_logging()
    except CvkdError as e:
        discard_failed_run_dirs()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a read-only run folder, outside the checkpoint writer
        discard_failed_run_dirs()
        print(f"error: {e.filename or 'output'}: cannot write ({e.strerror or type(e).__name__})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with resume=<run folder>", file=sys.stderr)
        return 130
    print(f"run folder: {result['run_dir']}")
    print(" ".join(f"{k}={result[k]:.4f}" for k in result_keys if k in result))
    return 0
