"""Bad run settings: one line naming the key, exit 2, and no run folder left behind."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cvkd.config import ConfigError
from cvkd.runs import pick_device

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, needle", [
    ("data.class_map=person", "data.class_map: expected a mapping"),
    ("train.device=tpu", "train.device=tpu: expected auto, cpu, cuda"),
    ("data.train_json=/nonexistent/train.json", "/nonexistent/train.json"),
])
def test_bad_setting_is_one_line_and_leaves_no_run_folder(tmp_path, override, needle):
    from tests.models.test_torchvision_adapter import _tiny_run

    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), *_tiny_run(tmp_path),
                        "model.name=yolov8n.yaml", override], capture_output=True, text=True, env=env, timeout=300,
                       check=False)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert err[-1].startswith("error: ") and needle in err[-1], r.stderr[-1500:]
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    for bad in ("tpu", "cuda:x", "gpu0"):
        with pytest.raises(ConfigError, match="expected auto, cpu, cuda"):
            pick_device(bad)
