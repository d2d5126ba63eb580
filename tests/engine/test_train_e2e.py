import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvkd.checkpoint import load_checkpoint, save_checkpoint
from cvkd.models import build_detector, load_detector

from .conftest import ROOT, kill_after_first_checkpoint, run_tool


def _rows(run: Path) -> list[dict]:
    with (run / "results.csv").open() as f:
        return list(csv.DictReader(f))


def _teacher(tmp_path: Path) -> Path:
    t = build_detector("yolov8s.yaml", ["person"])
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, "detector", t.model.state_dict(),
                    {"family": "yolo", "arch": t.arch_spec(), "class_names": ["person"]})
    return path


def test_distill_smoke_all_terms(tmp_path, tiny_run):
    teacher = _teacher(tmp_path)
    r = run_tool("distill.py", [*tiny_run, "name=kd", "train.epochs=2", f"kd.teacher={teacher}", "kd.logit=1",
                                "kd.feature=1", "kd.box=1", "kd.box_loss=ld+iou", "kd.feature_loss=fgd"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "kd"
    for f in ("config.yaml", "results.csv", "results.png", "last.pt", "best.pt", "final.pt", "train.log"):
        assert (run / f).is_file(), f
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("loss_box", "loss_cls", "loss_dfl", "loss_kd_logit", "loss_kd_feature", "loss_kd_box", "map", "ap50"):
        assert rows[-1][key] != "" and math.isfinite(float(rows[-1][key])), key
    assert "map=" in r.stdout
    assert load_detector(run / "final.pt").class_names == ["person"]
    assert "kd:\n  teacher: " in (run / "config.yaml").read_text()


def test_distill_with_the_teachers_label_assignment(tmp_path, tiny_run):
    teacher = _teacher(tmp_path)
    r = run_tool("distill.py", [*tiny_run, "name=lad", "train.epochs=1", f"kd.teacher={teacher}", "kd.assign=teacher"])
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / "runs" / "lad" / "train.log").read_text()
    assert "label assignment from the teacher's predictions" in log and "plain training" not in log
    r = run_tool("distill.py", [*tiny_run, "name=lad2", "kd.assign=teacher"])
    assert r.returncode == 2 and "kd.assign=teacher need a teacher" in r.stderr


def test_student_starts_from_teacher_by_weight_selection(tmp_path, tiny_run):
    teacher = _teacher(tmp_path)
    r = run_tool("distill.py", [*tiny_run, "name=ws", "train.epochs=1", f"kd.teacher={teacher}", "kd.logit=1",
                                "model.init_from=teacher"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"initialised by weight selection from {teacher}" in (tmp_path / "runs" / "ws" / "train.log").read_text()
    r = run_tool("train.py", [*tiny_run, "model.init_from=teacher"])
    assert r.returncode == 2 and "model.init_from=teacher needs kd.teacher" in r.stderr
    other = build_detector("yolov8s.yaml", ["car", "bus"])
    save_checkpoint(tmp_path / "cars.pt", "detector", other.model.state_dict(),
                    {"family": "yolo", "arch": other.arch_spec(), "class_names": ["car", "bus"]})
    # a larger model of other classes: its shared tensors are selected, the class outputs start fresh (said so)
    r = run_tool("train.py", [*tiny_run, "name=cars", "train.epochs=1", f"model.init_from={tmp_path / 'cars.pt'}"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cars.pt (2 classes)" in r.stderr and "no class in common: re-initialised" in r.stderr


def test_train_resumes_after_kill(tmp_path, tiny_run):
    run = tmp_path / "runs" / "res"
    kill_after_first_checkpoint("train.py", [*tiny_run, "name=res", "train.epochs=4"], run)
    done = load_checkpoint(run / "last.pt", "detector")["epoch"] + 1  # finished epochs (1-based) at the kill
    before = _rows(run)[:done]
    r = run_tool("train.py", [f"resume={run}"])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(run)
    assert [int(x["epoch"]) for x in rows] == [1, 2, 3, 4]
    assert rows[:done] == before  # finished epochs kept as they were
    log = (run / "train.log").read_text()
    if done < 4:
        assert f"epoch {done + 1} of 4 is next" in log


def test_nan_weights_stop_with_one_line(tmp_path, tiny_run):
    m = build_detector("yolov8n.yaml", ["person"])
    sd = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in m.model.state_dict().items()}
    bad = tmp_path / "nan.pt"
    save_checkpoint(bad, "detector", sd, {"family": "yolo", "arch": m.arch_spec(), "class_names": ["person"]})
    r = run_tool("train.py", [*tiny_run, "name=nan", "train.epochs=1", f"model.name={bad}"])
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite loss in term '") and "epoch 1, step 1" in last


def test_bad_config_and_missing_teacher(tmp_path, tiny_run):
    r = run_tool("train.py", [*tiny_run, "train.epoch=3"])
    assert r.returncode == 2 and "did you mean 'epochs'" in r.stderr and "Traceback" not in r.stderr
    r = run_tool("distill.py", [*tiny_run])
    assert r.returncode == 2 and "needs a teacher" in r.stderr
    r = run_tool("distill.py", [*tiny_run, f"kd.teacher={tmp_path / 'nope.pt'}", "kd.logit=1"])
    assert r.returncode == 2 and "nope.pt" in r.stderr and "Traceback" not in r.stderr
    r = run_tool("train.py", ["--help"])
    assert r.returncode == 0 and "kd.feature_loss" in r.stdout and "train.epochs" in r.stdout


def test_torchrun_two_processes_gloo(tmp_path, tiny_run):
    """2 CPU processes (gloo): both ranks end with identical weights, and the first step's loss equals the
    single-process one on the same global batch. The detection loss is normalised over the global batch (as one
    process would); the frames are identical copies with augmentation off because BatchNorm statistics are
    per-process (no SyncBatchNorm), which would otherwise differ from one process's batch statistics."""
    import json
    import shutil

    src_json = Path(next(a for a in tiny_run if a.startswith("data.train_json=")).split("=", 1)[1])
    src = json.loads(src_json.read_text())
    im0 = src["images"][0]
    anns0 = [a for a in src["annotations"] if a["image_id"] == im0["id"]]
    img_dir = tmp_path / "same_images"
    img_dir.mkdir()
    images, anns = [], []
    for k in range(4):  # the same frame four times under four names
        name = f"copy{k}.jpg"
        shutil.copy(ROOT / "datasets" / "cctv_mini" / "images" / "train" / im0["file_name"], img_dir / name)
        images.append(dict(im0, id=k + 1, file_name=name))
        anns += [dict(a, id=100 * k + j, image_id=k + 1) for j, a in enumerate(anns0)]
    train_json = tmp_path / "same.json"
    train_json.write_text(json.dumps({"images": images, "annotations": anns, "categories": src["categories"]}))
    same = [a for a in tiny_run if not a.startswith(("data.train_json=", "data.train_images="))]
    args = [*same, f"data.train_json={train_json}", f"data.train_images={img_dir}", "data.mosaic=0", "data.scale=0", "data.translate=0",
            "data.fliplr=0", "data.hsv_h=0", "data.hsv_s=0", "data.hsv_v=0", "train.batch=4", "train.epochs=1", "data.imgsz=128",
            "train.device=cpu"]
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           str(ROOT / "tools" / "train.py"), *args, "name=ddp"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log2 = (tmp_path / "runs" / "ddp" / "train.log").read_text()
    assert "2 processes" in log2 and "weights identical on all 2 processes: True" in log2
    r1 = run_tool("train.py", [*args, "name=single"])
    assert r1.returncode == 0, r1.stderr[-2000:]
    log1 = (tmp_path / "runs" / "single" / "train.log").read_text()

    def first_loss(text):
        return float(text.split("first step loss ")[1].split()[0])

    assert abs(first_loss(log1) - first_loss(log2)) < 1e-4 * max(1.0, abs(first_loss(log1)))


def test_pseudo_labelled_and_unlabelled_data(tmp_path, tiny_run):
    """Hard-label KD (an extra pseudo-labelled set) and soft-label KD (an unlabelled folder) in one short run."""
    import json
    import shutil

    teacher = _teacher(tmp_path)
    src_json = Path(next(a for a in tiny_run if a.startswith("data.train_json=")).split("=", 1)[1])
    pseudo = json.loads(src_json.read_text())  # stands in for tools/pseudo_label.py output
    for a in pseudo["annotations"]:
        a["score"] = 0.9
    pseudo_json = tmp_path / "pseudo.json"
    pseudo_json.write_text(json.dumps(pseudo))
    unl = tmp_path / "unlabeled"
    unl.mkdir()
    for im in pseudo["images"][:2]:
        shutil.copy(ROOT / "datasets" / "cctv_mini" / "images" / "train" / im["file_name"], unl / im["file_name"])
    extra = (f"data.extra_train=[{{json: '{pseudo_json}', images: '{ROOT / 'datasets/cctv_mini/images/train'}', "
             "class_map: {'0': person, '1': person}}]")
    r = run_tool("distill.py", [*tiny_run, "name=semi", "train.epochs=1", f"kd.teacher={teacher}", "kd.logit=1",
                                "kd.feature=1", "kd.feature_mask=gt", "kd.feature_loss=hint", extra,
                                f"data.unlabeled=['{unl}']", "data.unlabeled_batch=2", "data.pseudo_conf=0.0"])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(tmp_path / "runs" / "semi")
    assert float(rows[-1]["loss_ukd_logit"]) > 0 and float(rows[-1]["loss_ukd_feature"]) > 0
    log = (tmp_path / "runs" / "semi" / "train.log").read_text()
    assert "extra training set" in log and "unlabeled frames for soft KD: 2" in log
    r = run_tool("train.py", [*tiny_run, "name=bad", f"data.unlabeled=['{unl}']"])
    assert r.returncode == 2 and "data.unlabeled needs KD terms" in r.stderr


def test_distill_on_ultralytics_pipeline(tmp_path, tiny_run):
    """data.pipeline=ultralytics: the YOLO label view matches the json, and a distillation run trains on it."""
    from cvkd.data import load_coco

    teacher = _teacher(tmp_path)
    r = run_tool("distill.py", [*tiny_run, "name=ul", "train.epochs=2", f"kd.teacher={teacher}", "kd.logit=1",
                                "kd.feature=1", "kd.box=1", "data.pipeline=ultralytics"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "ul"
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("loss_box", "loss_cls", "loss_kd_logit", "loss_kd_feature", "loss_kd_box", "map"):
        assert math.isfinite(float(rows[-1][key])), key
    train = load_coco(tmp_path / "train.json", ROOT / "datasets" / "cctv_mini" / "images" / "train",
                      {"0": "person", "1": "person"})
    labels = sorted((run / "ultralytics_data" / "labels").glob("*.txt"))
    assert len(labels) == len(train.images) == 3
    for label, rec in zip(labels, train.images):
        assert label.stem.endswith(Path(rec.file_name).stem)
        got = [list(map(float, line.split())) for line in label.read_text().splitlines()]
        x, y, w, h = rec.bbox[0]
        assert len(got) == len(rec.labels) and got[0][0] == rec.labels[0]
        assert got[0][1:] == pytest.approx([(x + w / 2) / rec.width, (y + h / 2) / rec.height, w / rec.width,
                                            h / rec.height], abs=1e-6)
    assert "pipeline: ultralytics" in (run / "config.yaml").read_text()


def test_an_in_process_run_leaves_no_log_handler_behind(tmp_path, tiny_run):
    import logging

    from cvkd.commands.train import train_main

    assert train_main([*tiny_run, "name=inproc", "train.epochs=1", "model.name=yolov8n.yaml"]) == 0
    log = logging.getLogger("cvkd")
    assert not [h for h in log.handlers if getattr(h, "_cvkd", False)] and log.propagate
    size = (tmp_path / "runs" / "inproc" / "train.log").stat().st_size
    log.warning("after the run")  # goes to the root logger, not into the finished run's file
    assert (tmp_path / "runs" / "inproc" / "train.log").stat().st_size == size
