#!/usr/bin/env python
"""Char-level LM distillation benchmark on tinyshakespeare (CPU, one thread, ~60-90 min; --quick: ~1 min).

A teacher (~4.8 M params) and a student (~0.8 M params) are trained from scratch; the same student is then distilled
from the teacher's best.pt with the same blocks, steps and schedule (offline dense fp16 teacher cache, built once).
Rows: a temperature sweep of forward KL (Hinton et al. 2015; T = 1, 2, 4 - Gholami & Omar 2023 report T=1 beating
T=2 for GPT students) and a KL-direction comparison at T=1 (forward, reverse, JSD), plus forward KL mixed with CE.

    OMP_NUM_THREADS=1 nohup python benchmarks/lm_distill.py > benchmarks/results/lm_distill.log 2>&1 &

Completed rows already in the CSV are reused, and unfinished runs resume from their last.pt, so a killed benchmark
continues where it stopped. ``gap_closed = (loss_student - loss_distilled) / (loss_student - loss_teacher)``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = {
    "data": str(ROOT.parent / "shared" / "datasets" / "text" / "tinyshakespeare.txt"),
    "teacher": {"n_layer": 6, "n_head": 8, "n_embd": 256, "block_size": 128, "dropout": 0.1},
    "student": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "dropout": 0.0},
    "teacher_train": {"steps": 2500, "batch": 16, "lr": 1e-3, "warmup": 100, "eval_every": 250},
    "student_train": {"steps": 2000, "batch": 16, "lr": 2e-3, "warmup": 100, "eval_every": 250},
}
QUICK = {
    "data": str(ROOT / "datasets/text/tinyshakespeare_200k.txt"),
    "teacher": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64, "dropout": 0.0},
    "student": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64, "dropout": 0.0},
    "teacher_train": {"steps": 60, "batch": 8, "lr": 2e-3, "warmup": 10, "eval_every": 30, "eval_blocks": 40},
    "student_train": {"steps": 40, "batch": 8, "lr": 3e-3, "warmup": 10, "eval_every": 20, "eval_blocks": 40},
}
# (method, kd.kind, temperature, alpha): the distilled rows, in the order they run
DISTILL = [("forward_kl", "forward", 1.0, 0.0), ("reverse_kl", "reverse", 1.0, 0.0), ("jsd", "jsd", 1.0, 0.0),
           ("forward_kl", "forward", 2.0, 0.0), ("forward_kl", "forward", 4.0, 0.0),
           ("forward_kl", "forward", 1.0, 0.5)]
COLUMNS = ["model", "role", "method", "temperature", "alpha", "seed", "steps", "tokens", "params_m", "val_loss",
           "val_ppl", "bpc", "gap_closed", "minutes", "run_dir"]


def _overrides(section: str, values: dict) -> list[str]:
    return [f"{section}.{k}={v}" for k, v in values.items()]


def run_one(name: str, out: Path, overrides: list[str]) -> dict:
    """Train (or resume, or just re-read) one run folder through the same code path as the tools."""
    from cvkd.lm.train import resolve_config, train

    run_dir = out / name
    if (run_dir / "config.yaml").is_file():
        cfg = resolve_config(None, [f"resume={run_dir}"])
    else:
        cfg = resolve_config(None, [f"out={out}", f"name={name}", *overrides])
    return train(cfg)


def _key(r: dict) -> tuple:
    return (r["role"], r["method"], f"{float(r['temperature']):g}", f"{float(r['alpha']):g}", str(r["seed"]),
            str(r["steps"]))


def markdown(rows: list[dict]) -> str:
    cols = ["role", "method", "temperature", "alpha", "params_m", "val_loss", "val_ppl", "bpc", "gap_closed"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models and steps on the bundled sample (smoke test)")
    ap.add_argument("--data", help="override the corpus (default: shared tinyshakespeare.txt; quick: bundled sample)")
    ap.add_argument("--out", help="run folders (default runs/lm_bench or runs/lm_bench_quick)")
    ap.add_argument("--csv", help="results CSV (default benchmarks/results/lm_distill.csv; quick: in --out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)

    import torch

    from cvkd.engine.report import read_rows, write_rows

    torch.set_num_threads(args.threads)
    spec = QUICK if args.quick else FULL
    data = args.data or spec["data"]
    if not Path(data).exists():
        data = str(ROOT / "datasets/text/tinyshakespeare_200k.txt")
        print(f"warning: corpus not found, using the bundled sample {data}", flush=True)
    out = Path(args.out or ("runs/lm_bench_quick" if args.quick else "runs/lm_bench"))
    csv_path = Path(args.csv) if args.csv else (out / "lm_distill.csv" if args.quick else
                                                ROOT / "benchmarks/results/lm_distill.csv")
    out.mkdir(parents=True, exist_ok=True)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows = read_rows(csv_path)
    common = [f"data.path={data}", f"train.seed={args.seed}", f"train.threads={args.threads}", "train.device=cpu"]
    student_common = common + ["data.sampling=fixed"] + _overrides("model", spec["student"]) + \
        _overrides("train", spec["student_train"])

    def record(model: str, role: str, method: str, temperature: float, alpha: float, steps: int, tokens_step: int,
               res: dict, minutes: float) -> dict:
        row = {"model": model, "role": role, "method": method, "temperature": f"{temperature:g}", "alpha": f"{alpha:g}",
               "seed": args.seed, "steps": steps, "tokens": steps * tokens_step, "params_m": f"{res['params_m']:.3f}",
               "val_loss": f"{res['val_loss']:.4f}", "val_ppl": f"{res['val_ppl']:.3f}",
               "bpc": f"{res['val_bpc']:.4f}", "gap_closed": "", "minutes": f"{minutes:.1f}", "run_dir": res["run_dir"]}
        rows.append(row)
        _fill_gap(rows)
        write_rows(csv_path, [{c: r.get(c, "") for c in COLUMNS} for r in rows])
        print(f"ROW {role} {method} T={temperature:g} alpha={alpha:g}: val_loss={row['val_loss']} bpc={row['bpc']} "
              f"({minutes:.1f} min) -> {csv_path}", flush=True)
        return row

    def have(role: str, method: str, temperature: float, alpha: float, steps: int) -> dict | None:
        key = (role, method, f"{temperature:g}", f"{alpha:g}", str(args.seed), str(steps))
        return next((r for r in rows if _key(r) == key), None)

    t_spec, s_spec = spec["teacher_train"], spec["student_train"]
    t_tok, s_tok = t_spec["batch"] * spec["teacher"]["block_size"], s_spec["batch"] * spec["student"]["block_size"]
    t_name = f"teacher_s{args.seed}"
    if not have("teacher", "none", 1.0, 0.0, t_spec["steps"]):
        t0 = time.time()
        res = run_one(t_name, out, common + _overrides("model", spec["teacher"]) + _overrides("train", t_spec))
        record("gpt-teacher", "teacher", "none", 1.0, 0.0, t_spec["steps"], t_tok, res, (time.time() - t0) / 60)
    teacher_ckpt = out / t_name / "best.pt"
    if not have("student", "none", 1.0, 0.0, s_spec["steps"]):
        t0 = time.time()
        res = run_one(f"student_s{args.seed}", out, student_common)
        record("gpt-student", "student", "none", 1.0, 0.0, s_spec["steps"], s_tok, res, (time.time() - t0) / 60)
    cache = out / f"teacher_s{args.seed}_cache_dense.pt"
    for method, kind, temp, alpha in DISTILL:
        if have("distilled", method, temp, alpha, s_spec["steps"]):
            continue
        t0 = time.time()
        res = run_one(f"distill_{method}_T{temp:g}_a{alpha:g}_s{args.seed}", out, student_common + [
            f"kd.teacher={teacher_ckpt}", f"kd.kind={kind}", f"kd.temperature={temp}", f"kd.alpha={alpha}",
            f"kd.cache={cache}"])
        record("gpt-student", "distilled", method, temp, alpha, s_spec["steps"], s_tok, res, (time.time() - t0) / 60)
    print("\n" + markdown(rows) + f"\n\nresults: {csv_path}", flush=True)
    return 0


def _fill_gap(rows: list[dict]) -> None:
    """gap_closed of every distilled row with a teacher and a baseline student of the same seed and steps."""
    for r in rows:
        if r["role"] != "distilled":
            continue
        t = next((x for x in rows if x["role"] == "teacher" and str(x["seed"]) == str(r["seed"])), None)
        s = next((x for x in rows if x["role"] == "student" and str(x["seed"]) == str(r["seed"])
                  and str(x["steps"]) == str(r["steps"])), None)
        if t and s:
            gap = float(s["val_loss"]) - float(t["val_loss"])
            r["gap_closed"] = f"{(float(s['val_loss']) - float(r['val_loss'])) / gap:.3f}" if abs(gap) > 1e-9 else "nan"
            assert math.isfinite(float(r["val_loss"]))


if __name__ == "__main__":
    sys.exit(main())
