"""benchmarks/cctv_distill.py: rows of different schedules never share a baseline, teacher or mean; resumed runs."""
from __future__ import annotations

import csv
import sys

import pytest


@pytest.fixture()
def bench(import_benchmark, monkeypatch, tmp_path):
    cctv_distill = import_benchmark("cctv_distill")
    monkeypatch.setattr(cctv_distill, "RESULTS", tmp_path / "table.csv")
    real_select = cctv_distill.select_dataset

    def select_dataset(name):  # main() selects the dataset, which names the real CSV: keep the test's
        real_select(name)
        monkeypatch.setattr(cctv_distill, "RESULTS", tmp_path / "table.csv")

    monkeypatch.setattr(cctv_distill, "select_dataset", select_dataset)
    return cctv_distill


def _row(role: str, method: str, epochs: int, seed: int, map_: float, run: str, teacher: str = "",
         pipeline: str = "") -> dict:
    return {"pipeline": pipeline, "model": "yolov8s" if role == "teacher" else "yolov8n", "role": role, "method": method, "seed": seed,
            "imgsz": 320, "epochs": epochs, "params_m": 3.0, "gflops": 2.0, "map": map_, "ap50": 0.5,
            "sec_per_epoch": 10.0, "interp": "linear", "teacher": teacher, "run": run}


def test_gap_closed_uses_the_baseline_and_teacher_of_the_same_schedule(bench, capsys):
    rows = [
        _row("teacher", "none", 30, 0, 0.40, "runs/a/teacher"), _row("student", "none", 30, 0, 0.30, "runs/a/s0"),
        _row("student", "none", 30, 1, 0.32, "runs/a/s1"),
        _row("distilled", "all_sw", 30, 0, 0.36, "runs/a/kd0", "runs/a/teacher"),
        _row("teacher", "none", 100, 0, 0.50, "runs/b/teacher"), _row("student", "none", 100, 0, 0.40, "runs/b/s0"),
        _row("distilled", "all_sw", 100, 0, 0.45, "runs/b/kd0", "runs/b/teacher"),
    ]
    bench.write_table({bench.record_key(r): r for r in rows})
    with bench.RESULTS.open() as f:
        got = {(int(r["epochs"]), r["role"], int(r["seed"])): r for r in csv.DictReader(f)}
    assert len(got) == 7  # no row replaced another
    assert float(got[(30, "distilled", 0)]["gap_closed"]) == pytest.approx((0.36 - 0.31) / (0.40 - 0.31), abs=1e-4)
    assert float(got[(100, "distilled", 0)]["gap_closed"]) == pytest.approx(0.5, abs=1e-4)
    table = capsys.readouterr().out
    assert "| 30 | yolov8n | student | none | linear | cvkd_v1 |  | 2 | 0.3100 +- 0.0141 |" in table
    assert "| 100 | yolov8n | student | none | linear | cvkd_v1 |  | 1 | 0.4000 +- 0.0000 |" in table


def test_record_key_separates_schedules(bench):
    a, b = _row("student", "none", 30, 0, 0.3, "r1"), _row("student", "none", 100, 0, 0.4, "r2")
    assert bench.record_key(a) != bench.record_key(b)


def test_each_pipeline_and_tool_has_its_own_baseline(bench):
    rows = [
        _row("teacher", "none", 30, 0, 0.40, "runs/t"), _row("student", "none", 30, 0, 0.30, "runs/s"),
        _row("student", "none", 30, 0, 0.36, "runs/s_ul", pipeline="ultralytics"),
        _row("distilled", "all_sw", 30, 0, 0.38, "runs/kd_ul", "runs/t", pipeline="ultralytics"),
        _row("student", "ultralytics_none", 30, 0, 0.35, "runs/u"),  # old rows: no pipeline, ultralytics implied
        _row("distilled", "ultralytics_kd", 30, 0, 0.36, "runs/ukd", "runs/t"),
    ]
    bench.write_table({bench.record_key(r): r for r in rows})
    with bench.RESULTS.open() as f:
        got = {r["method"]: r for r in csv.DictReader(f) if r["role"] == "distilled"}
    assert float(got["all_sw"]["gap_closed"]) == pytest.approx((0.38 - 0.36) / (0.40 - 0.36), abs=1e-4)
    assert float(got["ultralytics_kd"]["gap_closed"]) == pytest.approx((0.36 - 0.35) / (0.40 - 0.35), abs=1e-4)
    assert got["ultralytics_kd"]["pipeline"] == "ultralytics"


def test_gap_closed_when_the_teacher_row_holds_an_absolute_path(bench):
    """A teacher row added by the running benchmark holds an absolute run path; the KD rows name it relative."""
    rows = [
        _row("teacher", "none", 30, 0, 0.40, str(bench.ROOT / "runs" / "t")),
        _row("student", "none", 30, 0, 0.30, "runs/s"),
        _row("distilled", "all_joint", 30, 0, 0.35, "runs/kd", "runs/t"),
    ]
    bench.write_table({bench.record_key(r): r for r in rows})
    with bench.RESULTS.open() as f:
        got = {r["role"]: r for r in csv.DictReader(f)}
    assert float(got["distilled"]["gap_closed"]) == pytest.approx(0.5, abs=1e-4)


def test_two_teachers_of_one_config_are_two_rows_each_with_its_distilled_rows(bench, capsys):
    """A retrained teacher (same config and seed, another run) does not replace the first one's row, and each
    distilled row's gap is measured against the teacher it learned from."""
    rows = [
        _row("teacher", "none", 30, 0, 0.40, "runs/a/teacher_linear_s0"),
        _row("teacher", "none", 30, 0, 0.45, "runs/a/teacher_rerun_linear_s0"),
        _row("student", "none", 30, 0, 0.30, "runs/a/s0"),
        _row("distilled", "all_joint", 30, 0, 0.35, "runs/a/kd0", "runs/a/teacher_linear_s0"),
        _row("distilled", "all_joint", 30, 0, 0.36, "runs/a/kd0_rerun", "runs/a/teacher_rerun_linear_s0"),
    ]
    bench.write_table({bench.record_key(r): r for r in rows})
    assert len(bench.load_records()) == 5
    with bench.RESULTS.open() as f:
        got = {r["run"]: r for r in csv.DictReader(f)}
    assert float(got["runs/a/kd0"]["gap_closed"]) == pytest.approx(0.5, abs=1e-4)
    assert float(got["runs/a/kd0_rerun"]["gap_closed"]) == pytest.approx(0.4, abs=1e-4)
    table = capsys.readouterr().out
    assert "| teacher | none | linear | cvkd_v1 | teacher_rerun_linear_s0 | 1 | 0.4500 +- 0.0000 |" in table


def test_gap_closed_is_empty_when_the_teacher_is_no_better_than_the_baseline(bench, capsys):
    """A 60-epoch student can beat a 30-epoch teacher: no gap to close, so no fraction (not a division by ~0)."""
    rows = [
        _row("teacher", "none", 30, 0, 0.45, "runs/a/teacher"),
        _row("student", "none", 60, 0, 0.51, "runs/b/s0"), _row("student", "none", 60, 1, 0.52, "runs/b/s1"),
        _row("distilled", "ws", 60, 0, 0.58, "runs/b/ws0", "runs/a/teacher"),
    ]
    bench.write_table({bench.record_key(r): r for r in rows})
    with bench.RESULTS.open() as f:
        got = {r["role"]: r for r in csv.DictReader(f)}
    assert got["distilled"]["gap_closed"] == ""
    assert "| 60 | yolov8n | distilled | ws | linear | cvkd_v1 | teacher | 1 | 0.5800 +- 0.0000 | 0.5000 | nan |" \
        in capsys.readouterr().out


def test_a_resumed_run_takes_this_invocations_threads_and_device(bench, monkeypatch, tmp_path):
    """Restarting a killed benchmark with another --threads must reach the resumed run, not keep the old count."""
    import argparse

    run = tmp_path / "teacher_linear_s0"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  threads: 1\n")
    calls = []
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, check: calls.append(cmd))
    args = argparse.Namespace(out=str(tmp_path), epochs=30, threads=2, device="cpu")
    bench.run_cvkd(args, "train.py", "cctv_teacher.yaml", run.name, 0, ["kd.logit=4.0"])
    (cmd,) = calls
    assert cmd[-3:] == [f"resume={run}", "train.threads=2", "train.device=cpu"]


def test_the_csv_reads_back_to_itself(bench):
    """gap_closed from a freshly scored (unrounded) teacher equals gap_closed recomputed from the written CSV."""
    rows = [_row("teacher", "none", 100, 0, 0.612361, "runs/t"), _row("student", "none", 100, 0, 0.5641, "runs/s"),
            _row("distilled", "ws", 100, 1, 0.629349, "runs/ws", "runs/t")]
    bench.write_table({bench.record_key(r): r for r in rows})
    first = bench.RESULTS.read_text()
    bench.write_table(bench.load_records())
    assert bench.RESULTS.read_text() == first
    gap = next(r for r in csv.DictReader(first.splitlines()) if r["role"] == "distilled")["gap_closed"]
    assert float(gap) == pytest.approx((0.6293 - 0.5641) / (0.6124 - 0.5641), abs=1e-4)


def test_paired_gain_rows_from_kept_predictions(bench, monkeypatch, tmp_path, capsys):
    import json

    rows = [_row("student", "none", 30, s, 0.3, f"runs/a/s{s}") for s in range(3)]
    rows += [_row("distilled", "ws", 30, s, 0.4, f"runs/a/ws{s}", "runs/t") for s in range(3)]
    rows += [_row("distilled", "all_joint_ws", 30, s, 0.45, f"runs/a/kdws{s}", "runs/t") for s in range(2)]
    keys = {bench.record_key(r): r for r in rows}
    pairs = bench.comparisons(list(keys.values()))
    named = {(a[4], b[4]) for a, b in pairs}
    assert named == {("ws", "none"), ("all_joint_ws", "none"), ("all_joint_ws", "ws")}
    # a ground truth of 20 one-box images; the baseline finds half of them, ws and all_joint_ws all of them
    gt = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in range(1, 21)],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 32, 32], "area": 1024,
                           "iscrowd": 0} for i in range(1, 21)],
          "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "val.json").write_text(json.dumps(gt))
    monkeypatch.setattr(bench, "DATA", tmp_path)
    monkeypatch.setattr(bench, "DS", {**bench.DS, "class_map": None})
    box = {"category_id": 1, "bbox": [8, 8, 32, 32], "score": 0.9}
    for r in rows:
        found = range(1, 11) if r["method"] == "none" else range(1, 21)
        bench.keep_predictions(r["run"], [{"image_id": i, **box} for i in found])
    from cvkd.data import load_coco

    monkeypatch.setattr("cvkd.data.load_coco", lambda js, images, cm: load_coco(js, None, cm, check_images=False))
    bench.print_gains(list(keys.values()))
    out = capsys.readouterr().out
    assert "| 30 | yolov8n | t | ws | none | 3 |" in out and "| significant |" in out
    assert "| 30 | yolov8n | t | all_joint_ws | ws | 2 | +0.0000 | [+0.0000, +0.0000] | not significant |" in out
    # a benchmark run prints the gains of its own rows only: here those of one all_joint_ws run
    bench.print_gains(list(keys.values()), {"runs/a/kdws1"})
    out = capsys.readouterr().out
    assert "| all_joint_ws | ws | 2 |" in out and "| all_joint_ws | none | 2 |" in out and "| ws | none |" not in out


def test_the_two_tools_baselines_are_compared_with_welchs_interval(bench, capsys):
    rows = [_row("student", "none", 30, s, m, f"runs/a/s{s}", pipeline="cvkd") for s, m in enumerate([0.30, 0.32, 0.31])]
    rows += [_row("student", "ultralytics_none", 30, s, m, f"runs/u/s{s}", pipeline="ultralytics")
             for s, m in enumerate([0.36, 0.37, 0.38])]
    bench.write_table({bench.record_key(r): r for r in rows})
    table = capsys.readouterr().out
    # both groups have sd 0.01: se = 0.01 * sqrt(2/3), df = 4, t = 2.7764: half width 0.0227
    assert "| 30 | yolov8n | linear | cvkd | 3 vs 3 | -0.0600 | [-0.0827, -0.0373] | cvkd below |" in table


def test_rows_of_the_two_cvkd_pipelines_are_kept_apart(bench, capsys):
    """Runs on the fixed cvkd pipeline get their own folder names (so their kept predictions do not replace those of
    the same row and seed on the first pipeline), and their rows their own baseline and mean."""
    assert bench.run_name("student", 1, "linear", pipeline="cvkd") == "student_linear_v2_s1"
    assert bench.run_name("student", 1, "linear", pipeline="cvkd_v1") == "student_linear_s1"
    assert bench.run_name("student", 1, "linear", pipeline="ultralytics") == "student_linear_ulpipe_s1"
    rows = [_row("student", "none", 30, 0, 0.30, "runs/a/student_linear_s0"),  # no pipeline column: the first one
            _row("student", "none", 30, 0, 0.40, "runs/a/student_linear_v2_s0", pipeline="cvkd")]
    bench.write_table({bench.record_key(r): r for r in rows})
    with bench.RESULTS.open() as f:
        assert sorted(r["pipeline"] for r in csv.DictReader(f)) == ["cvkd", "cvkd_v1"]
    table = capsys.readouterr().out
    assert "| linear | cvkd_v1 |  | 1 | 0.3000 +- 0.0000 |" in table and "| linear | cvkd |  | 1 | 0.4000 +- 0.0000 |" in table


def test_rows_teacher_with_teacher_weights_scores_them_and_trains_nothing(bench, monkeypatch, tmp_path):
    """`--rows teacher --teacher-weights W --teacher-epochs N` adds W's own row; it must not train a teacher run."""
    weights = tmp_path / "t.pt.xz"
    weights.write_bytes(b"")
    scored, trained = [], []
    monkeypatch.setattr(bench, "ensure_data", lambda: None)
    monkeypatch.setattr(bench, "add_teacher_row", lambda table, pt, rel, args: scored.append(pt) or table)
    monkeypatch.setattr(bench, "run_cvkd", lambda *a, **k: trained.append(a))
    monkeypatch.setattr(sys, "argv", ["cctv_distill.py", "--rows", "teacher", "--teacher-weights", str(weights),
                                      "--teacher", "ul_e5", "--teacher-epochs", "5", "--out", str(tmp_path)])
    bench.main()
    assert scored == [weights] and trained == []


def test_kept_detections_keep_a_hundredth_of_a_pixel(bench, tmp_path):
    """Rounding the kept boxes to 0.1 px moved a CCTV run's mAP by 0.001; they keep 0.01 px and 5 score decimals."""
    import json
    import lzma

    det = {"image_id": 1, "category_id": 0, "bbox": [10.123456, 20.987654, 30.556, 40.004999], "score": 0.1234567}
    bench.keep_predictions("runs/x/run_s0", [dict(det)], tmp_path / "t.csv")
    with lzma.open(tmp_path / "preds" / "t" / "run_s0.json.xz", "rt", encoding="utf-8") as f:
        (kept,) = json.load(f)
    assert kept["bbox"] == [10.12, 20.99, 30.56, 40.0] and kept["score"] == 0.12346


def test_kept_detections_are_the_100_per_image_and_class_that_cocoeval_scores(bench, tmp_path):
    """Beyond 100 detections of one image and class COCOeval scores nothing: the kept file drops them, and scores the
    same as the full list (ties in score included)."""
    import numpy as np

    from cvkd.data.coco import read_json
    from cvkd.eval.bootstrap import image_matches, weighted_map

    rng = np.random.default_rng(0)
    gt = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2)],
          "annotations": [{"id": 10 * i + k, "image_id": i, "category_id": 1, "bbox": [5.0 * k, 5.0 * k, 20, 20],
                           "area": 400, "iscrowd": 0} for i in (1, 2) for k in range(12)],
          "categories": [{"id": 1, "name": "person"}]}
    dets = [{"image_id": int(i), "category_id": 1, "score": float(rng.choice([0.5, rng.random()])),
             "bbox": [float(v) for v in rng.uniform(0, 60, 2)] + [20.0, 20.0]} for i in rng.choice([1, 2], 400)]
    bench.keep_predictions("runs/x/run_s0", [dict(d) for d in dets], tmp_path / "t.csv")
    kept = read_json(tmp_path / "preds" / "t" / "run_s0.json.xz")
    assert len(kept) == 200 and max(np.bincount([d["image_id"] for d in kept])) == 100
    rounded = [{**d, "bbox": [round(v, 2) for v in d["bbox"]], "score": round(d["score"], 5)} for d in dets]
    assert weighted_map(image_matches(gt, kept)) == weighted_map(image_matches(gt, rounded)) > 0


def test_a_pretrained_student_is_its_own_model_with_its_own_runs(bench, monkeypatch, tmp_path):
    """`--pretrained` reaches the student's runs as model.pretrained, and names their folders and table rows apart
    from the same student trained from scratch."""
    calls = []
    monkeypatch.setattr(bench, "ensure_data", lambda: None)
    monkeypatch.setattr(bench, "run_cvkd", lambda args, tool, cfg, name, seed, over: calls.append((name, over))
                        or tmp_path / name)
    monkeypatch.setattr(bench, "score_cvkd", lambda run, args: {"map": 0.3, "ap50": 0.6, "params_m": 3.0,
                                                                "gflops": 1.0, "sec_per_epoch": 9.0, "model": "x"})
    argv = ["cctv_distill.py", "--student", "timm:tf_efficientnet_lite0", "--rows", "student", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--pretrained", "efficientnet-lite0"])
    bench.main()
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    (pre, pre_over), (scratch, scratch_over) = calls
    assert pre == "timm_tf_efficientnet_lite0_efficientnet-lite0_student_linear_v2_s0"
    assert scratch == "timm_tf_efficientnet_lite0_student_linear_v2_s0"
    assert "model.pretrained=efficientnet-lite0" in pre_over and not any("pretrained" in o for o in scratch_over)
    models = sorted(r["model"] for r in bench.load_records().values())
    assert models == ["timm:tf_efficientnet_lite0", "timm:tf_efficientnet_lite0+efficientnet-lite0"]


def test_results_lock_makes_a_second_process_wait(bench, tmp_path):
    """Benchmarks of different seeds run side by side and each rewrites the whole CSV: the read-merge-write is
    locked, so a second process waits until the first has written."""
    import subprocess
    import time

    child = ("import sys; sys.path.insert(0, sys.argv[1]); import cctv_distill; from pathlib import Path\n"
             "with cctv_distill.locked(Path(sys.argv[2])): print('got it', flush=True)")
    with bench.locked(bench.RESULTS):
        proc = subprocess.Popen([sys.executable, "-c", child, str(bench.ROOT / "benchmarks"), str(bench.RESULTS)],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(3)  # the child imports the script (~1 s) and then blocks on the lock
        assert proc.poll() is None
    assert proc.communicate(timeout=60)[0].strip() == "got it"
