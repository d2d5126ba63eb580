from dataclasses import dataclass, field
from typing import Literal

import pytest

from cvkd.config import (
    ConfigError,
    describe,
    from_dict,
    load_config,
    parse_overrides,
    save_config,
)


@dataclass
class Train:
    epochs: int = field(default=10, metadata={"help": "number of epochs"})
    lr: float = 0.01
    schedule: Literal["cosine", "linear"] = "linear"


@dataclass
class Cfg:
    name: str = "exp"
    levels: list[int] = field(default_factory=lambda: [0, 1, 2])
    class_map: dict | None = None
    train: Train = field(default_factory=Train)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\ntrain:\n  epochs: 3\n")
    cfg = load_config(Cfg, p, ["train.lr=0.5", "levels=[1,2]", "class_map={'0': person}"])
    assert cfg.name == "a" and cfg.train.epochs == 3 and cfg.train.lr == 0.5 and cfg.levels == [1, 2]
    assert cfg.class_map == {"0": "person"}
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    again = load_config(Cfg, out)
    assert again == cfg


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'; did you mean 'epochs'\?"):
        load_config(Cfg, None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'trian'; did you mean 'train'"):
        from_dict(Cfg, {"trian": {}})


def test_type_errors_are_one_line():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_config(Cfg, None, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="train.schedule: 'step' is not one of"):
        load_config(Cfg, None, ["train.schedule=step"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["epochs"])


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Cfg, p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_describe_lists_every_key():
    text = "\n".join(describe(Cfg))
    for key in ("name", "levels", "class_map", "train.epochs", "train.lr", "train.schedule"):
        assert key in text
    assert "number of epochs" in text


def test_resume_ignores_an_invalid_base_config(tmp_path):
    """``-c cctv_distill.yaml resume=<run>``: the saved run config decides; the -c file (no kd.teacher) is not checked."""
    from cvkd.engine.config import RunConfig
    from cvkd.runs import resolve_run_config

    base = tmp_path / "base.yaml"
    base.write_text("kd:\n  logit: 1.0\n")
    with pytest.raises(ConfigError, match="need a teacher"):
        resolve_run_config(RunConfig, str(base), [])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("kd:\n  logit: 1.0\n  teacher: t.pt\n")
    cfg = resolve_run_config(RunConfig, str(base), [f"resume={run}", "train.epochs=7"])
    assert (cfg.kd.teacher, cfg.train.epochs, cfg.resume) == ("t.pt", 7, str(run))


def test_joint_feature_norm_needs_hint_or_pkd():
    from cvkd.engine.config import KDConfig, RunConfig

    RunConfig(kd=KDConfig(teacher="t.pt", feature=1.0, feature_loss="pkd", feature_norm="joint")).check()
    with pytest.raises(ConfigError, match="kd.feature_norm=joint applies to kd.feature_loss=hint or pkd, not cwd"):
        RunConfig(kd=KDConfig(teacher="t.pt", feature=1.0, feature_loss="cwd", feature_norm="joint")).check()


def test_gt_feature_mask_needs_a_background_weight_below_one():
    """feature_bg=1 with feature_mask=gt weighs every cell alike (the same as feature_mask=all): one-line error."""
    from cvkd.engine.config import KDConfig, RunConfig

    assert KDConfig().feature_bg == 0.5
    RunConfig(kd=KDConfig(teacher="t.pt", feature=1.0, feature_loss="hint", feature_mask="gt")).check()
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=r"kd.feature_bg must be in \[0, 1\) with kd.feature_mask=gt"):
            RunConfig(kd=KDConfig(teacher="t.pt", feature=1.0, feature_loss="hint", feature_mask="gt",
                                  feature_bg=bad)).check()


def test_kd_combinations_come_from_the_term_tables():
    """A mask on a loss that ignores it was silently accepted before; the check reads the same table as the loss."""
    from cvkd.engine.config import KDConfig, RunConfig
    from cvkd.engine.distill import FEATURE_LOSSES

    for loss, spec in FEATURE_LOSSES.items():
        for mask in ("all", "gt", "attention", "teacher_score"):
            cfg = RunConfig(kd=KDConfig(teacher="t.pt", feature=1.0, feature_loss=loss, feature_mask=mask))
            if mask in spec.masks:
                cfg.check()
            else:
                with pytest.raises(ConfigError, match=f"kd.feature_mask={mask} does not apply to kd.feature_loss={loss}"):
                    cfg.check()
        cfg = RunConfig(kd=KDConfig(teacher="t.pt", feature=1.0, feature_loss=loss, feature_norm="joint"))
        if spec.joint:
            cfg.check()
        else:
            with pytest.raises(ConfigError, match="kd.feature_norm=joint applies to kd.feature_loss=hint or pkd"):
                cfg.check()
