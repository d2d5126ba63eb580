"""YOLO26 end to end through the commands: a yolo26s teacher checkpoint, `cvkd distill` of a yolo26n student on 3
frames (KD on both branches, box KD on the distances), then `cvkd val` (NMS-free) and `cvkd export`."""
import csv

import torch

from cvkd.checkpoint import save_checkpoint
from cvkd.models import build_detector, load_detector

from .conftest import run_tool


def test_yolo26_distill_val_export(tmp_path, tiny_run):
    t = build_detector("yolo26s.yaml", ["person"])
    teacher = tmp_path / "teacher26s.pt"
    save_checkpoint(teacher, "detector", t.model.state_dict(), {"family": "yolo", "arch": t.arch_spec(),
                                                                 "class_names": ["person"]})
    r = run_tool("distill.py", [*tiny_run, "name=kd26", "train.epochs=2", "model.name=yolo26n.yaml",
                                f"kd.teacher={teacher}", "kd.logit=1", "kd.logit_branch=both", "kd.feature=1",
                                "kd.box=1", "kd.box_loss=iou", "model.init_from=teacher",
                                "train.optimizer=musgd"])  # YOLO26's optimizer for long runs, adapters included
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "kd26"
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert len(rows) == 2 and {"loss_l1", "loss_kd_logit", "loss_kd_feature", "loss_kd_box"} <= set(rows[0])
    assert all(float(row["map"]) >= 0 and float(row["map_o2m"]) >= 0 for row in rows)  # both branches scored
    m = load_detector(run / "final.pt")
    assert m.end2end and m.reg_max is None
    with torch.no_grad():
        assert len(m.eval().predict(torch.rand(1, 3, 64, 64), conf=0.0, max_det=5)[0]["scores"]) == 5
    r = run_tool("export.py", [str(run / "final.pt"), "--imgsz", "64", "--out", str(tmp_path / "export")])
    assert r.returncode == 0 or r.stderr.count("\n") == 1, r.stderr[-2000:]  # exported, or refused in one line
