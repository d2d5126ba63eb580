"""The ``cvkd`` command as a user runs it (the installed console script, as subprocesses): help, train, distill,
val, export and predict on a tiny real set, and the Python API on the same files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

import cvkd
from cvkd.cli import COMMANDS
from cvkd.errors import ConfigError, DataError

from .conftest import MINI

CVKD = Path(sys.executable).parent / "cvkd"  # what `pip install -e .` put beside this interpreter


def cvkd_cmd(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    assert CVKD.is_file(), f"no cvkd console script at {CVKD}: install the package (pip install -e .)"
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(CVKD), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_help_lists_every_command_and_option():
    r = cvkd_cmd("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in r.stdout, name
    r = cvkd_cmd("help", "predict")
    assert r.returncode == 0 and r.stdout.startswith("usage: cvkd predict")
    for opt in ("--conf", "--iou", "--classes", "--imgsz", "--max-frames", "--every", "--reconnect"):
        assert opt in r.stdout
    r = cvkd_cmd("distill", "--help")
    assert r.returncode == 0 and "usage: cvkd distill" in r.stdout and "kd.teacher" in r.stdout


def test_unknown_command_is_one_line_with_a_suggestion():
    r = cvkd_cmd("predcit")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "did you mean 'predict'" in r.stderr


def test_every_subcommand_has_help():
    from cvkd.cli import main

    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name


def _video(path: Path, n: int = 6) -> Path:
    """n frames of the embedded val set as a 160x120 MJPG clip."""
    frames = sorted((MINI / "images" / "val").iterdir())[:n]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for f in frames:
        w.write(cv2.resize(cv2.imread(str(f)), (160, 120)))
    w.release()
    return path


def _as_yolo_set(splits: dict, root: Path) -> Path:
    """The embedded-set subsets as a YOLO dataset (images/<split>, labels/<split>, data.yaml)."""
    import shutil

    from cvkd.data.convert import coco_to_yolo

    for split, js in splits.items():
        names = coco_to_yolo(js, root / "labels" / split)
        for im in json.loads(Path(js).read_text())["images"]:
            dst = root / "images" / split / im["file_name"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(MINI / "images" / split / im["file_name"], dst)
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {names}\n")
    return root / "data.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`cvkd train` then `cvkd distill` (the first run as the teacher) on 3 frames, 64 px, 1 epoch each."""
    from .conftest import _subset

    tmp = tmp_path_factory.mktemp("cli")
    train, val = _subset("train", 3, tmp), _subset("val", 2, tmp)
    data = [f"data.train_json={train}", f"data.train_images={MINI / 'images' / 'train'}", f"data.val_json={val}",
            f"data.val_images={MINI / 'images' / 'val'}", "data.class_map={'0': person, '1': person}",
            "data.imgsz=64", "data.workers=0", "train.batch=2", "train.eval_batch=2", "train.threads=1",
            "train.epochs=1", f"out={tmp / 'runs'}"]
    r = cvkd_cmd("train", *data, "model.name=yolov8n.yaml", "name=teacher")
    assert r.returncode == 0, r.stderr[-2000:]
    teacher = tmp / "runs" / "teacher" / "final.pt"
    # the student reads the same frames as a YOLO data.yaml (data=, as ultralytics users write it)
    yolo = _as_yolo_set({"train": train, "val": val}, tmp / "yolo")
    same = [a for a in data if not a.startswith(("data.train_", "data.val_"))]
    r = cvkd_cmd("distill", *same, f"data={yolo}", "model.name=yolov8n.yaml", "name=kd", f"kd.teacher={teacher}",
                 "kd.logit=1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "map=" in r.stdout
    (tmp / "data.yaml").write_text(json.dumps({"data": {"val_json": str(val), "val_images": str(MINI / "images" / "val"),
                                                         "class_map": {"0": "person", "1": "person"}, "imgsz": 64}}))
    return tmp, tmp / "runs" / "kd" / "final.pt"


def test_train_distill_val_export_predict(trained):
    tmp, weights = trained
    r = cvkd_cmd("train", f"out={tmp}", f"kd.teacher={weights}")  # the wrong tool names the right one
    assert r.returncode == 2 and "cvkd distill" in r.stderr and r.stderr.count("\n") == 1
    r = cvkd_cmd("val", "--weights", str(weights), "--data", str(tmp / "data.yaml"), "--save-pred", str(tmp / "p.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mAP" in r.stdout or "map" in r.stdout
    r = cvkd_cmd("val", "--weights", str(weights), "--gt", str(tmp / "yolo" / "data.yaml"), "--imgsz", "64",
                 "--class-map", "{'0': person, '1': person}")  # the same val frames, read from YOLO txt labels
    assert r.returncode == 0 and "2 images" in r.stdout, r.stderr[-2000:]
    r = cvkd_cmd("export", str(weights), "--imgsz", "64", "--out", str(tmp / "export"))
    assert r.returncode == 0, r.stderr[-2000:]
    onnx_file = next((tmp / "export").glob("*_full_fp32.onnx"))

    # predict: an image folder with the checkpoint, a short video with the ONNX file
    r = cvkd_cmd("predict", str(weights), str(MINI / "images" / "val"), "--out", str(tmp / "pred"), "--conf", "0",
                 "--max-frames", "3", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "latency mean" in r.stdout and "FPS" in r.stdout
    preds = json.loads((tmp / "pred" / "predictions.json").read_text())
    names = sorted(p.name for p in (MINI / "images" / "val").iterdir())[:3]
    assert {p["file_name"] for p in preds} <= set(names) and {p["image_id"] for p in preds} <= {1, 2, 3}
    assert all(set(p) >= {"image_id", "category_id", "bbox", "score"} and len(p["bbox"]) == 4 for p in preds)
    assert sorted(f.name for f in (tmp / "pred").glob("*.jpg")) == names  # annotated images, same names

    clip = _video(tmp / "clip.avi")
    r = cvkd_cmd("predict", str(onnx_file), str(clip), "--out", str(tmp / "pred_video"), "--conf", "0", "--every", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 frames" in r.stdout
    preds = json.loads((tmp / "pred_video" / "predictions.json").read_text())
    assert {p["frame"] for p in preds} <= {0, 2, 4}
    cap = cv2.VideoCapture(str(tmp / "pred_video" / "clip_annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and cap.read()[1].shape == (120, 160, 3)
    cap.release()

    # bad input: one line each
    for args, msg in [((str(weights), str(tmp / "missing")), "not found"),
                      ((str(weights), str(clip), "--classes", "car"), "unknown class 'car'"),
                      ((str(onnx_file), str(clip), "--imgsz", "96"), "exported for imgsz 64"),
                      ((str(tmp / "p.json"), str(clip)), "p.json")]:
        r = cvkd_cmd("predict", *args, "--out", str(tmp / "bad"))
        assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr[-500:])


def test_python_api(trained):
    tmp, weights = trained
    m = cvkd.evaluate(weights, data=str(tmp / "data.yaml"))
    assert 0 <= m["map"] <= 1
    res = cvkd.predict(weights, MINI / "images" / "val", max_frames=2, conf=0.0, device="cpu", annotate=False)
    assert res.frames == 2 and len(res.latency_ms) == 2 and res.predictions
    with pytest.raises(ConfigError, match="cvkd.distill"):
        cvkd.train(None, f"out={tmp}", kd={"teacher": str(weights)})
    (tmp / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        cvkd.predict(weights, tmp / "empty")
