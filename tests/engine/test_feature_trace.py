"""benchmarks/feature_levels.py: traces the hint term per level of a real (tiny) distillation run, then stops it."""
import csv
import os
import subprocess
import sys

from .conftest import ROOT
from .test_train_e2e import _teacher


def test_feature_levels_trace(tmp_path, tiny_run):
    teacher = _teacher(tmp_path)
    out = tmp_path / "trace.csv"
    args = [*tiny_run, "name=trace", "train.epochs=3", f"kd.teacher={teacher}", "kd.feature=1",
            "kd.feature_loss=hint", "kd.feature_mask=teacher_score"]
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "feature_levels.py"), "--steps", "2", "--csv",
                        str(out), "--", *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(x["level"]) for x in rows] == [0, 1, 2, 0, 1, 2]  # 2 steps x 3 levels, then stopped
    assert all(float(x["mask_per_image"]) > 0 and 0 <= float(x["top_cell_share"]) <= 1 for x in rows)
    assert "| 2 |" in r.stdout
    # a run with no hint term says so in one line
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "feature_levels.py"), "--steps", "1", "--",
                        *tiny_run, "name=nohint", "train.epochs=1", f"kd.teacher={teacher}", "kd.logit=1"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0 and "no feature hint term" in r.stderr
