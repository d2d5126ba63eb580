"""No code runs from a checkpoint: a pickle whose ``__reduce__`` calls ``os.system`` is refused in one line by
every tool that reads a model file, while real ultralytics checkpoints still load (allowlisted layer classes)."""
import io
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvkd.checkpoint import CheckpointError, load_checkpoint, torch_load
from cvkd.models import ModelError, load_detector

ROOT = Path(__file__).resolve().parents[1]


class _Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(tmp: Path, marker: Path) -> dict[str, Path]:
    files = {"pt": tmp / "evil.pt", "xz": tmp / "evil.pt.xz", "header": tmp / "evil_header.pt"}
    torch.save({"model": _Evil(marker), "ema": None}, files["pt"])
    buf = io.BytesIO()
    torch.save({"model": _Evil(marker)}, buf)
    files["xz"].write_bytes(lzma.compress(buf.getvalue()))
    torch.save({"format": "cvkd", "kind": "detector", "version": 1, "meta": {"family": "yolo"},
                "model": {"w": _Evil(marker)}}, files["header"])
    return files


@pytest.mark.parametrize("kind", ["pt", "xz", "header"])
def test_evil_pickle_is_refused_in_one_line(tmp_path, kind):
    marker = tmp_path / "PWNED"
    path = _evil_files(tmp_path, marker)[kind]
    for load in (torch_load, load_checkpoint):
        with pytest.raises(CheckpointError) as e:
            load(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value) and "system" in str(e.value), str(e.value)
    with pytest.raises(ModelError, match="refused to unpickle"):
        load_detector(path)
    assert not marker.exists()


def test_trust_env_is_an_explicit_opt_in(tmp_path):
    """With CVKD_TRUST_CHECKPOINTS=1 the file is fully unpickled (so the opt-in is real, and only that runs code)."""
    marker = tmp_path / "PWNED"
    path = _evil_files(tmp_path, marker)["pt"]
    code = f"from cvkd.checkpoint import torch_load; torch_load({str(path)!r})"
    env = {**os.environ, "CVKD_TRUST_CHECKPOINTS": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, cwd=ROOT)
    assert marker.exists()


def _ultralytics_checkpoint(path: Path, yaml: str) -> Path:
    """A checkpoint laid out as ultralytics' trainer saves it (half model, ema, train_args, optimizer state)."""
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import IterableSimpleNamespace

    model = DetectionModel(yaml, nc=2, verbose=False)
    model.names = {0: "person", 1: "car"}
    model.args = IterableSimpleNamespace(imgsz=64, task="detect")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.save({"epoch": 3, "best_fitness": 0.5, "model": None, "ema": model.half(), "updates": 10,
                "optimizer": opt.state_dict(), "train_args": {"imgsz": 64, "data": "x.yaml"},
                "train_metrics": {"metrics/mAP50-95(B)": 0.5}, "date": "2026-12-03", "version": "8.4"}, path)
    return path


@pytest.mark.parametrize("yaml", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_real_ultralytics_checkpoints_still_load(tmp_path, yaml):
    path = _ultralytics_checkpoint(tmp_path / "u.pt", yaml)
    ck = torch_load(path)
    assert type(ck["ema"]).__name__ == "DetectionModel"
    m = load_detector(path)
    assert m.class_names == ["person", "car"] and m.imgsz == 64
    assert m.end2end == (yaml == "yolo26n.yaml")


SHARED_TEACHER = ROOT.parent / "shared" / "checkpoints" / "cctv_yolov8s_320_e58_ultralytics.pt"


@pytest.mark.skipif(not SHARED_TEACHER.is_file(), reason="shared CCTV teacher not on this machine")
def test_shared_teacher_loads():
    assert len(load_detector(SHARED_TEACHER).class_names) == 2


def _cli_cases(tmp: Path, evil: Path) -> dict[str, list[str]]:
    from tests.models.test_torchvision_adapter import _tiny_run

    base = _tiny_run(tmp)
    frames = ROOT / "datasets" / "cctv_mini" / "images" / "val"
    return {
        "evaluate": ["tools/evaluate.py", "--weights", str(evil), "--gt", str(tmp / "val.json"),
                     "--images", str(frames)],
        "export": ["tools/export.py", str(evil), "--out", str(tmp / "export")],
        "distill_teacher": ["tools/distill.py", *base, "model.name=yolov8n.yaml", f"kd.teacher={evil}", "kd.logit=1"],
        "train_model_name": ["tools/train.py", *base, f"model.name={evil}"],
        "train_init_from": ["tools/train.py", *base, "model.name=yolov8n.yaml", f"model.init_from={evil}"],
        "pseudo_label": ["tools/pseudo_label.py", str(frames), "--teacher", str(evil), "--out", str(tmp / "pl")],
    }


@pytest.mark.parametrize("tool", ["evaluate", "export", "distill_teacher", "train_model_name", "train_init_from",
                                  "pseudo_label"])
def test_every_tool_refuses_an_evil_checkpoint(tmp_path, tool):
    marker = tmp_path / "PWNED"
    evil = _evil_files(tmp_path, marker)["pt"]
    args = _cli_cases(tmp_path, evil)[tool]
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("CVKD_TRUST_CHECKPOINTS", None)
    r = subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300, check=False)
    assert r.returncode != 0 and not marker.exists(), r.stderr[-1500:]
    errors = [line for line in r.stderr.splitlines() if "refused to unpickle" in line]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert str(evil) in errors[0]
