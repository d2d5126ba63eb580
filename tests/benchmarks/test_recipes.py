"""The benchmarks' KD recipes: every row resolves to a valid config, and the yaml's default recipe and the pinned
earlier one are what the tables name (all_joint and all_sw of benchmarks/cctv_distill.py)."""
from __future__ import annotations

import dataclasses

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
YAML = ROOT / "configs" / "cctv_distill.yaml"


@pytest.fixture()
def bench(import_benchmark):
    import_benchmark("unlabeled")  # kd_sweep imports it
    return import_benchmark("cctv_distill"), import_benchmark("kd_sweep")


def _cfg(overrides: list[str], yaml: Path = YAML):
    from cvkd.config import load_config
    from cvkd.engine.config import RunConfig

    cfg = load_config(RunConfig, yaml, ["kd.teacher=t.pt", *overrides])
    cfg.check()
    return cfg


def _kd(overrides: list[str]):
    return _cfg(overrides).kd


def test_yaml_and_demo_start_the_student_from_the_teacher(bench):
    """The yaml is all_joint_ws (model and kd sections); every other row and the earlier recipe start from random
    weights; the demo distils with the same recipe."""
    cctv, _ = bench
    ws = _cfg([*cctv.KD_RESET, *cctv.KD_ROWS["all_joint_ws"]])
    assert _cfg([]).model == ws.model and _cfg([]).kd == ws.kd and ws.model.init_from == "teacher"
    for row, extra in cctv.KD_ROWS.items():
        assert (_cfg([*cctv.KD_RESET, *extra]).model.init_from == "teacher") == row.endswith("ws"), row
    assert _cfg(cctv.ALL_SW).model.init_from == ""
    demo = _cfg([], ROOT / "configs" / "demo.yaml")
    assert demo.model.init_from == "teacher" and demo.kd.teacher_classes == {"0": "person", "1": "person"}
    assert dataclasses.replace(demo.kd, teacher_classes=None) == _kd([])


def test_yaml_holds_all_joint_and_all_sw_pins_the_earlier_recipe(bench):
    cctv, _ = bench
    assert _kd([]) == _kd([*cctv.KD_RESET, *cctv.KD_ROWS["all_joint"]])
    assert _kd(cctv.ALL_SW) == _kd([*cctv.KD_RESET, *cctv.KD_ROWS["all_sw"]])
    assert _kd([]) != _kd(cctv.ALL_SW)


def test_every_benchmark_row_and_sweep_setting_resolves(bench):
    cctv, sweep = bench
    for row, extra in cctv.KD_ROWS.items():
        kd = _kd([*cctv.KD_RESET, *extra])
        assert kd.logit + kd.feature + kd.box > 0 or row == "ws", row
    # the weight-selection rows: all_joint_ws is all_joint plus the init, ws has no KD term
    assert _kd([*cctv.KD_RESET, *cctv.KD_ROWS["all_joint_ws"]]) == _kd([])
    assert "model.init_from=teacher" in cctv.KD_ROWS["ws"] and "model.init_from=teacher" in cctv.KD_ROWS["all_joint_ws"]
    # box_ws is the sweep's box_only setting on the benchmark's start: LD alone, from the teacher's weights
    box_ws, box_only = _kd([*cctv.KD_RESET, *cctv.KD_ROWS["box_ws"]]), _kd(sweep.SETTINGS["box_only"])
    assert box_ws.logit == box_ws.feature == 0 and (box_ws.box, box_ws.box_loss, box_ws.box_t, box_ws.box_region) == (
        box_only.box, box_only.box_loss, box_only.box_t, box_only.box_region)
    assert "model.init_from=teacher" in cctv.KD_ROWS["box_ws"]
    # feature_box_ws is the sweep's feature_box (the yaml without its logit term) on the benchmark's start
    assert _kd([*cctv.KD_RESET, *cctv.KD_ROWS["feature_box_ws"]]) == _kd(sweep.SETTINGS["feature_box"])
    assert "model.init_from=teacher" in cctv.KD_ROWS["feature_box_ws"]
    for setting, extra in sweep.SETTINGS.items():
        if extra is not None:
            _kd(extra)
    # each sweep setting around the yaml changes it (no row silently equal to the default)
    base = _kd([])
    for setting in ("feature_w2", "feature_w18", "feature_mask_gt", "feature_mask_all", "feature_p3_only",
                    "feature_pkd", "logit_t2", "logit_w1", "box_t4", "decay_cosine", "logit_only", "feature_only",
                    "box_only", "logit_w16", "feature_box", "box_w1", "box_giou", "lad", "lad_box"):
        assert _kd(sweep.SETTINGS[setting]) != base, setting


def test_sweep_table_reads_rows_written_before_train_seed(bench, monkeypatch, tmp_path):
    """Rows of earlier sweeps have no train_seed: they trained with the split's seed; others are keyed by theirs."""
    _, sweep = bench
    path = tmp_path / "kd_sweep.csv"
    monkeypatch.setattr(sweep, "RESULTS", path)
    path.write_text("setting,overrides,seed,epochs,tune_frames,map,ap50,run\n"
                    "baseline,(no KD),0,30,52,0.25549,0.63382,runs/kd_sweep/baseline_s0\n")
    assert set(sweep.load_table()) == {("baseline", 0, 0, "", "random", "")}
    path.write_text("setting,overrides,seed,train_seed,epochs,tune_frames,map,ap50,run\n"
                    "baseline,(no KD),0,,30,52,0.25549,0.63382,runs/kd_sweep/baseline_s0\n"
                    "baseline,(no KD),0,1,30,52,0.2600,0.64,runs/kd_sweep/baseline_s0_t1\n"
                    "all_sw,x,0,,30,52,0.2759,0.64,runs/kd_sweep/all_sw_s0\n")
    table = sweep.load_table()  # KD rows written before the teacher column learned from the default teacher
    assert set(table) == {("baseline", 0, 0, "", "random", ""), ("baseline", 0, 1, "", "random", ""),
                          ("all_sw", 0, 0, sweep.DEFAULT_TEACHER, "random", "")}
    assert table[("baseline", 0, 1, "", "random", "")]["map"] == "0.2600"


def test_sweep_run_names_keep_seeds_and_teachers_apart(bench):
    _, sweep = bench
    assert sweep.run_name("all_sw", 0, 0, sweep.DEFAULT_TEACHER) == "all_sw_s0"
    assert sweep.run_name("baseline", 0, 1, "") == "baseline_s0_t1"
    shipped = "checkpoints/cctv_yolov8s_teacher_fp16.pt.xz"
    assert sweep.run_name("feature_w18", 0, 0, shipped) == "feature_w18_s0_cctv_yolov8s_teacher_fp16"
    assert sweep.run_name("baseline", 0, 0, shipped, "ws") == "baseline_s0_cctv_yolov8s_teacher_fp16_ws"
    # another student (and the overrides of its KD rows) first: its own folders
    assert sweep.run_name("feature_only", 0, 0, shipped, "random", "yolo26n.yaml kd.box_loss=iou kd.box=7.5") == \
        "yolo26n_box_loss-iou_box-7.5_feature_only_s0_cctv_yolov8s_teacher_fp16"
    assert sweep.run_name("baseline", 0, 0, "", "random", "yolo26n.yaml") == "yolo26n_baseline_s0"


def test_sweep_rows_from_the_teachers_weights(bench):
    """--start ws: every row starts from the teacher's weights; baseline is ws alone (a teacher, no KD weight);
    a random start clears the yaml's init in every KD row; the class map reaches every row with a teacher."""
    _, sweep = bench
    t = Path("t.pt")
    tool, args = sweep.row_command(None, "ws", t, '{"0": person}')
    assert tool == "distill.py" and "model.init_from=teacher" in args and "kd.teacher=t.pt" in args
    kd = _kd(args)
    assert kd.logit == kd.feature == kd.box == 0 and kd.teacher_classes == {"0": "person"}
    tool, args = sweep.row_command(sweep.SETTINGS["logit_only"], "ws", t, "")
    assert "model.init_from=teacher" in args and _kd(args).logit > 0 and _kd(args).feature == 0
    assert sweep.row_command(None, "random", t, "") == ("train.py", [])
    tool, args = sweep.row_command(sweep.SETTINGS["feature_joint"], "random", t, "")
    assert tool == "distill.py" and "model.init_from=" in args and "model.init_from=teacher" not in args
    # another student: its model in every row; its KD overrides under the setting's (feature_only keeps box off)
    giou = ["kd.box_loss=iou", "kd.box=7.5"]
    assert sweep.row_command(None, "random", t, "", "yolo26n.yaml", giou) == ("train.py", ["model.name=yolo26n.yaml"])
    for setting, box in (("feature_only", 0.0), ("box_only", 7.5), ("feature_joint", 7.5)):
        tool, args = sweep.row_command(sweep.SETTINGS[setting], "random", t, "", "yolo26n.yaml", giou)
        assert "model.name=yolo26n.yaml" in args and _kd(args).box == box and _kd(args).box_loss == "iou", setting


def test_sweep_gains_pair_training_seeds_and_draw_a_frames_copies_together(bench, monkeypatch, tmp_path, capsys):
    import json

    cctv, sweep = bench
    monkeypatch.setattr(sweep, "RESULTS", tmp_path / "kd_sweep.csv")
    monkeypatch.setattr(sweep, "ROOT", tmp_path)
    # 10 frames, two augmented copies each (roboflow's names): 20 one-box images
    names = [f"frame{i // 2}_jpg.rf.{i}.jpg" for i in range(20)]
    gt = {"images": [{"id": i + 1, "file_name": n, "width": 64, "height": 64} for i, n in enumerate(names)],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 32, 32], "area": 1024,
                           "iscrowd": 0} for i in range(1, 21)],
          "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "tune_val.json").write_text(json.dumps(gt))
    monkeypatch.setattr(sweep, "tuning_split", lambda seed, fraction, out: (None, tmp_path / "tune_val.json", 10))
    monkeypatch.setattr(sweep, "DS", {**sweep.DS, "class_map": None})
    from cvkd.data import load_coco

    monkeypatch.setattr("cvkd.data.load_coco", lambda js, images, cm: load_coco(js, None, cm, check_images=False))
    seen = {}
    from cvkd.eval import bootstrap

    def spy(pairs, **kw):
        seen.update(kw, n=len(pairs))
        return bootstrap_paired_gain(pairs, **kw)

    bootstrap_paired_gain = bootstrap.paired_gain
    monkeypatch.setattr(bootstrap, "paired_gain", spy)
    box = {"category_id": 1, "bbox": [8, 8, 32, 32], "score": 0.9}
    ws_t = "checkpoints/t.pt"
    table = {}
    for setting, train_seed, found in [("baseline", 0, 10), ("baseline", 1, 10), ("logit_only", 0, 20),
                                       ("logit_only", 1, 20), ("logit_only", 2, 20)]:  # seed 2 has no baseline
        run = f"runs/kd_sweep/{sweep.run_name(setting, 0, train_seed, ws_t, 'ws')}"
        cctv.keep_predictions(run, [{"image_id": i, **box} for i in range(1, found + 1)], sweep.RESULTS)
        table[(setting, 0, train_seed, ws_t, "ws", "")] = {"run": run}
    sweep.print_gains(table, 0.2, tmp_path)
    out = capsys.readouterr().out
    # B finds frames 0-4 (images 1-10): AP 51/101 against 1.0; paired over training seeds 0 and 1 only
    assert f"| yolov8n | logit_only | ws | 0 | t.pt | 2 | {50 / 101:+.4f} / {50 / 101:+.4f} | {50 / 101:+.4f} |" in out
    assert seen["n"] == 2 and list(seen["groups"]) == [f"frame{i // 2}" for i in range(20)]
    assert "| baseline |" not in out  # no row of the baseline against itself
    assert "| significant |" in out
    del table[("logit_only", 0, 1, ws_t, "ws", "")]  # one training seed left: frames only, not a claim
    sweep.print_gains(table, 0.2, tmp_path)
    assert "| above 0 over frames (1 seed) |" in capsys.readouterr().out


def test_every_qat_benchmark_row_resolves_and_only_the_control_trains_without_fake_quant(import_benchmark):
    from types import SimpleNamespace

    qat = import_benchmark("qat")
    names = set()
    for ranges in ("minmax", "learned"):
        args = SimpleNamespace(teacher="t.pt", teacher_kd=[], student="s.pt", out="runs/q", epochs=3, threads=1,
                               lr=0.001, kd="box", ranges=ranges, range_lr=0.02, tune_split=None)
        for row in [r for r in qat.ROWS if r not in ("fp32", "ptq")]:
            for scheme in ("per_channel", "npu"):
                name, cmd = qat.qat_command(args, row, scheme, 0)
                names.add(name)
                overrides = [a for a in cmd[4:] if "=" in a]
                cfg = _cfg([o for o in overrides if not o.startswith("kd.teacher=")],
                           ROOT / "configs" / "cctv_student.yaml")
                assert cfg.train.qat == ("" if row == "fp32_ft" else scheme) and cfg.train.epochs == 3
                assert cfg.data.mosaic == 0 and cfg.model.name == "s.pt"
                assert cmd[1].endswith("distill.py") == (row in ("qat_kd", "qat_self")), row
                learned = ranges == "learned" and row != "fp32_ft"
                assert cfg.train.qat_ranges == ("learned" if learned else "minmax")
                assert cfg.train.qat_range_lr == (0.02 if learned else 0.01)
    assert len(names) == 2 * 2 * 3 + 1  # a run of its own per ranges, scheme and QAT row; one FP32 control


def test_qat_rows_of_the_tuning_split_train_and_score_on_held_out_train_frames_only(import_benchmark, tmp_path):
    from types import SimpleNamespace

    import_benchmark("unlabeled")  # kd_sweep imports it
    sweep, qat = import_benchmark("kd_sweep"), import_benchmark("qat")
    sweep.tuning_split = lambda seed, fraction, out: (out / "tune_train.json", out / "tune_val.json", 5)
    qat.use_tuning_split(3, 0.2, tmp_path)
    assert qat.RESULTS.name == "qat_tune_s3.csv"  # a table per split: tuning rows never mix with val rows
    args = SimpleNamespace(teacher="t.pt", teacher_kd=[], student="s.pt", out="runs/q", epochs=3, threads=1,
                           lr=0.0001, kd="box", ranges="learned", range_lr=0.1, tune_split=3)
    name, cmd = qat.qat_command(args, "qat", "npu", 0)
    assert name == "qat_npu_qat_e3_lr0.0001_s0_ort_learned0.1_tune3"
    assert f"data.train_json={tmp_path / 'split_s3' / 'tune_train.json'}" in cmd
    assert f"data.val_json={tmp_path / 'split_s3' / 'tune_val.json'}" in cmd
    assert f"data.val_images={qat.SHARED / 'train/images'}" in cmd
    assert not any("valid/" in a or "cctv_people/val.json" in a for a in cmd)
