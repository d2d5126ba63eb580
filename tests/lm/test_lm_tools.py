"""End to end on a tiny text: train_lm / distill_lm (subprocess and in-process), resume, errors, generate."""
import csv
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cvkd.lm.train as lm_train
from cvkd.checkpoint import load_checkpoint, save_checkpoint
from cvkd.commands.train import distill_lm_main, train_lm_main
from cvkd.config import describe
from cvkd.lm.config import LMRunConfig


def main(argv: list[str], _description: str, require_teacher: bool) -> int:
    return (distill_lm_main if require_teacher else train_lm_main)(argv)


ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "train.batch=4",
        "train.warmup=2", "train.device=cpu"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    text = "".join(f"{w} thou art {w}, and so art I.\n" for w in ("Romeo", "Juliet", "Tybalt", "Mercutio") * 12)
    (d / "tiny.txt").write_text(text)
    rc = main([f"out={d}", "name=teacher", f"data.path={d / 'tiny.txt'}", "train.steps=4", "train.eval_every=2",
               *TINY], "", require_teacher=False)
    assert rc == 0
    return d


def _rows(run: Path) -> list[dict]:
    with (run / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_distill_smoke_subprocess_with_offline_cache(corpus):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "tools/distill_lm.py"), f"out={corpus}", "name=smoke",
           f"data.path={corpus / 'tiny.txt'}", f"kd.teacher={corpus / 'teacher/best.pt'}", "data.sampling=fixed",
           f"kd.cache={corpus / 'cache.pt'}", "kd.temperature=2", "kd.alpha=0.5", "train.steps=4", "train.accum=2",
           "train.eval_every=2", *TINY]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    run = corpus / "smoke"
    for f in ("config.yaml", "results.csv", "results.png", "last.pt", "best.pt", "train.log"):
        assert (run / f).is_file(), f
    rows = _rows(run)
    assert [int(x["step"]) for x in rows] == [2, 4] and float(rows[-1]["loss_kd"]) > 0
    assert "bytes/token" in r.stderr
    ck = load_checkpoint(run / "last.pt", kind="lm")
    assert ck["step"] == 4 and ck["meta"]["role"] == "distilled"


def test_topk_cache_run_and_cache_mismatch(corpus, capsys):
    args = [f"out={corpus}", f"data.path={corpus / 'tiny.txt'}", f"kd.teacher={corpus / 'teacher/best.pt'}",
            "data.sampling=fixed", "train.steps=2", "train.eval_every=2", *TINY]
    assert main(["name=topk", f"kd.cache={corpus / 'cache_top3.pt'}", "kd.cache_topk=3", *args], "", True) == 0
    assert float(_rows(corpus / "topk")[-1]["loss_kd"]) > 0
    assert main(["name=mismatch", f"kd.cache={corpus / 'cache_top3.pt'}", "kd.cache_topk=4", *args], "", True) == 2
    assert "built for another topk" in capsys.readouterr().err


def test_resume_after_interrupt_continues_exactly(corpus, monkeypatch):
    args = [f"out={corpus}", f"data.path={corpus / 'tiny.txt'}", f"kd.teacher={corpus / 'teacher/best.pt'}",
            "train.steps=6", "train.eval_every=3", "train.accum=2", "kd.alpha=0.3", *TINY]
    assert main(["name=straight", *args], "", True) == 0
    real, calls = lm_train.lm_loss, []

    def interrupting(*a, **kw):
        calls.append(1)
        if len(calls) == 10:  # second micro-batch of step 5: Ctrl-C in the middle of a step
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(lm_train, "lm_loss", interrupting)
    assert main(["name=killed", *args], "", True) == 130
    assert load_checkpoint(corpus / "killed/last.pt", kind="lm")["step"] == 4  # the finished step 4 was kept
    monkeypatch.setattr(lm_train, "lm_loss", real)
    assert main([f"resume={corpus / 'killed'}"], "", True) == 0
    a, b = _rows(corpus / "straight"), _rows(corpus / "killed")
    assert [r["step"] for r in b] == ["3", "6"]
    assert b[-1]["val_loss"] == a[-1]["val_loss"]
    sa = load_checkpoint(corpus / "straight/last.pt")["model"]
    sb = load_checkpoint(corpus / "killed/last.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_wrong_checkpoint_kind_is_one_line(corpus, capsys):
    det = corpus / "detector.pt"
    save_checkpoint(det, "detector", {}, {})
    rc = main([f"out={corpus}", "name=wrong", f"data.path={corpus / 'tiny.txt'}", f"kd.teacher={det}", *TINY], "", True)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0  # nothing but the error line: the teacher is checked before the run starts
    assert err.startswith("error:") and "'detector' checkpoint, expected a 'lm'" in err
    assert not (corpus / "wrong").exists()


def test_non_finite_loss_stops_naming_term_and_step(corpus, monkeypatch, capsys):
    real = lm_train.lm_loss

    def nan_kd(*a, **kw):
        out = real(*a, **kw)
        out["kd"] = out["total"] = out["kd"] * float("nan")
        return out

    monkeypatch.setattr(lm_train, "lm_loss", nan_kd)
    rc = main([f"out={corpus}", "name=nan", f"data.path={corpus / 'tiny.txt'}",
               f"kd.teacher={corpus / 'teacher/best.pt'}", "train.steps=3", *TINY], "", True)
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # the run's log lines come before it
    assert rc == 2 and "Traceback" not in err and last.startswith("error:") and "'kd' at step 1" in last


def test_config_errors_and_help(corpus, capsys):
    assert main([f"data.path={corpus / 'tiny.txt'}", f"out={corpus}", "name=x"], "", True) == 2
    assert "needs a teacher" in capsys.readouterr().err
    assert main([f"kd.teacher={corpus / 'teacher/best.pt'}", "kd.cache=c.pt", f"out={corpus}"], "", True) == 2
    assert "data.sampling=fixed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"], "", False)
    out = capsys.readouterr().out
    for line in describe(LMRunConfig):
        assert line.split("(")[0].strip().rstrip(":") in out


def test_generate_runs(corpus, capsys):
    gen = runpy.run_path(str(ROOT / "tools/generate.py"), run_name="generate")  # in-process: saves a startup
    args = [str(corpus / "teacher/best.pt"), "--prompt", "Romeo", "--tokens", "20", "--top-k", "5", "--seed", "1"]
    assert gen["main"](args) == 0
    out = capsys.readouterr().out
    assert out.startswith("Romeo") and len(out) == 5 + 20 + 1  # prompt + new characters + print's newline
    assert gen["main"](args) == 0 and capsys.readouterr().out == out  # seeded
    save_checkpoint(corpus / "det.pt", "detector", {}, {})
    assert gen["main"]([str(corpus / "det.pt")]) == 2
    assert "expected a 'lm' checkpoint" in capsys.readouterr().err


def test_distill_under_torchrun_two_processes(corpus):
    """2 CPU processes (gloo): identical weights on both ranks, and the same losses and val loss as one process on
    the same global batches (each process takes its rows of one shared sampler; the loss is the global token mean)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [f"out={corpus}", f"data.path={corpus / 'tiny.txt'}", f"kd.teacher={corpus / 'teacher/best.pt'}",
            "train.steps=4", "train.eval_every=2", "train.accum=2", "kd.alpha=0.3", *TINY]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(ROOT / "tools" / "distill_lm.py"), *args, "name=ddp"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "weights identical on all 2 processes: True" in (corpus / "ddp" / "train.log").read_text()
    r1 = subprocess.run([sys.executable, str(ROOT / "tools" / "distill_lm.py"), *args, "name=single"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert r1.returncode == 0, r1.stderr[-3000:]
    for a, b in zip(_rows(corpus / "ddp"), _rows(corpus / "single"), strict=True):
        for k in ("loss_ce", "loss_kd", "loss_total", "val_loss"):
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4, abs=1e-5), k
