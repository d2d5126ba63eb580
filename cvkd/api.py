"""The Python API: the ``cvkd`` commands as functions that return their results and raise on bad input.

    import cvkd
    teacher = cvkd.train("configs/cctv_teacher.yaml", name="teacher", train={"epochs": 60})
    student = cvkd.distill("configs/cctv_distill.yaml", kd={"teacher": teacher["run_dir"] + "/final.pt"})
    metrics = cvkd.evaluate(student["run_dir"] + "/final.pt", data="configs/cctv_distill.yaml")
    files = cvkd.deploy(student["run_dir"] + "/final.pt", imgsz=320, int8=True, calib="frames/")
    result = cvkd.predict(files["full_int8"], "footage/cam1.mp4", out="runs/predict", conf=0.3)

Config keys go in as ``key=value`` strings or as keyword arguments (a dict per section); the other functions take
the options of their command (``--max-det`` is ``max_det=``). Errors are the one-line exceptions of each module
(``ConfigError``, ``DataError``, ``ModelError``, ...), all ``ValueError`` subclasses.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _flatten(kw: dict[str, Any], prefix: str = "") -> list[str]:
    """{"train": {"epochs": 2}, "name": "x"} -> ["train.epochs=2", "name=x"] (values as YAML/JSON text)."""
    out = []
    for k, v in kw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "." not in key and k in _SECTIONS:
            out.extend(_flatten(v, key + "."))
        else:
            out.append(f"{key}={v if isinstance(v, str) else json.dumps(v)}")
    return out


_SECTIONS = {"model", "data", "train", "kd", "eval"}


def _run_config(config: str | Path | None, overrides: tuple[str, ...], kw: dict, lm: bool):
    if lm:
        from .lm.train import resolve_config
    else:
        from .engine.trainer import resolve_config
    return resolve_config(str(config) if config else None, [*overrides, *_flatten(kw)])


def train(config: str | Path | None = None, *overrides: str, **kw) -> dict:
    """Train a detector without a teacher; returns ``{"run_dir", "map", "ap50", "ap75"}`` (final epoch)."""
    from .config import ConfigError
    from .engine.trainer import train as run

    cfg = _run_config(config, overrides, kw, lm=False)
    if cfg.kd.teacher:
        raise ConfigError("cvkd.train trains without a teacher: use cvkd.distill, or set kd={'teacher': ''}")
    return run(cfg)


def distill(config: str | Path | None = None, *overrides: str, **kw) -> dict:
    """Distil a student detector from ``kd.teacher``; returns ``{"run_dir", "map", "ap50", "ap75"}``."""
    from .config import ConfigError
    from .engine.trainer import train as run

    cfg = _run_config(config, overrides, kw, lm=False)
    if not cfg.kd.teacher:
        raise ConfigError("distillation needs a teacher: kd={'teacher': 'path/to/teacher.pt'}")
    return run(cfg)


def train_lm(config: str | Path | None = None, *overrides: str, **kw) -> dict:
    """Train (or, with ``kd.teacher``, distil) a char-level GPT; returns the run folder and val metrics."""
    from .lm.train import train as run

    return run(_run_config(config, overrides, kw, lm=True))


def _argv(positional: list[Any], kw: dict[str, Any]) -> list[str]:
    """Keyword arguments as command-line options: ``max_det=100`` -> ``--max-det 100``, ``int8=True`` -> ``--int8``."""
    argv = [str(p) for p in positional]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if v is None or v is False:
            continue
        if v is True:
            argv.append(flag)
        elif isinstance(v, (list, tuple)):
            argv += [flag, *map(str, v)]
        else:
            argv += [flag, json.dumps(v) if isinstance(v, dict) else str(v)]
    return argv


def _parse(module, argv: list[str]):
    try:
        return module.parser().parse_args(argv)
    except SystemExit:  # argparse has printed what is wrong
        raise TypeError(f"bad arguments for {module.__name__.rsplit('.', 1)[-1]}: {argv}") from None


def evaluate(weights: str | Path | None = None, **kw) -> dict:
    """COCO metrics of a checkpoint (``data=`` a run config, or ``gt=``/``images=``) or of ``pred=`` a json."""
    from .commands import val

    return val.run(_parse(val, _argv([], {"weights": weights, **kw})))


def export(weights: str | Path, **kw) -> dict[str, Path]:
    """Export files ``{"full_fp32": path, "full_int8": path, ...}``; options as ``cvkd export``."""
    from .commands import export as exp

    return exp.run(_parse(exp, _argv([weights], kw)))


def predict(model: str | Path, source: str | Path, out: str | Path | None = None, **kw):
    """A :class:`cvkd.deploy.predict.PredictResult` (COCO predictions, latency); with ``out``, the annotated frames and
    predictions.json are written there. Options as :class:`cvkd.deploy.predict.PredictOptions`."""
    from .deploy.predict import PredictOptions
    from .deploy.predict import predict as run

    return run(model, source, out, PredictOptions(**kw), progress=False)
