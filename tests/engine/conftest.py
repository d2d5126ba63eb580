"""A tiny real dataset for end-to-end runs: 3 train + 2 val frames of the embedded CCTV set, written per test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "datasets" / "cctv_mini"


def _subset(split: str, n: int, out: Path) -> Path:
    d = json.loads((MINI / f"{split}.json").read_text())
    images = d["images"][:n]
    ids = {im["id"] for im in images}
    sub = {"images": images, "annotations": [a for a in d["annotations"] if a["image_id"] in ids],
           "categories": d["categories"]}
    path = out / f"{split}.json"
    path.write_text(json.dumps(sub))
    return path


@pytest.fixture
def tiny_run(tmp_path):
    """Overrides that point a run at 3 train / 2 val real frames, 64 px, 1 worker-free epoch of 2 steps."""
    train = _subset("train", 3, tmp_path)
    val = _subset("val", 2, tmp_path)
    return [
        f"data.train_json={train}", f"data.train_images={MINI / 'images' / 'train'}",
        f"data.val_json={val}", f"data.val_images={MINI / 'images' / 'val'}",
        "data.class_map={'0': person, '1': person}", "data.imgsz=64", "data.workers=0", "data.mosaic=0.5",
        "data.close_mosaic=1", "train.batch=2", "train.eval_batch=2", "train.threads=1", f"out={tmp_path / 'runs'}",
    ]


def run_tool(tool: str, args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *args], capture_output=True, text=True,
                          env=env, timeout=600, **kw)


def kill_after_first_checkpoint(tool: str, args: list[str], run: Path) -> None:
    """Start ``tool`` and SIGKILL it as soon as its run folder holds a ``last.pt`` (a kill mid-run)."""
    import signal
    import time

    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / tool), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "last.pt").is_file():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
