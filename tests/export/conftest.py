"""Fixtures of tests/export: a tiny random yolov8n checkpoint, a calibration folder, a 2-image val set, the tool."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvkd.checkpoint import save_checkpoint
from cvkd.models import build_detector

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "datasets" / "cctv_mini"
IMGSZ = 64


def load_script(rel: str):
    """Import a script of tools/ or benchmarks/ as a module (to call its main() in-process)."""
    spec = importlib.util.spec_from_file_location(Path(rel).stem + "_under_test", ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread in these tests (the CPU is shared), restored for the rest of the session."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def detector():
    torch.manual_seed(0)
    return build_detector("yolov8n.yaml", ["person"]).eval()


@pytest.fixture(scope="session")
def ckpt(detector, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "student.pt"
    meta = {"family": detector.family, "arch": detector.arch_spec(), "class_names": detector.class_names}
    save_checkpoint(path, "detector", detector.model.state_dict(), meta)
    return path


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    """Three small random frames (JPEG, PNG) of different aspect ratios, plus a non-image file to be ignored."""
    d = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i, (w, h, ext) in enumerate([(80, 48, "jpg"), (48, 64, "png"), (64, 64, "jpg")]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"frame{i}.{ext}")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="session")
def val_set(tmp_path_factory) -> tuple[Path, Path]:
    """(json, image dir): the first 2 frames of the embedded CCTV mini val split."""
    d = json.loads((MINI / "val.json").read_text())
    images = d["images"][:2]
    ids = {im["id"] for im in images}
    sub = {"images": images, "annotations": [a for a in d["annotations"] if a["image_id"] in ids],
           "categories": d["categories"]}
    path = tmp_path_factory.mktemp("val") / "val.json"
    path.write_text(json.dumps(sub))
    return path, MINI / "images" / "val"


@pytest.fixture(scope="session")
def export_tool():
    return load_script("tools/export.py")
