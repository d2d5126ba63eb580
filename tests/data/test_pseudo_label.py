"""Pseudo-labelling (cvkd.engine.pseudo, tools/pseudo_label.py): a tiny random teacher over a folder and a video."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from tinydata import make_image

from cvkd.checkpoint import save_checkpoint
from cvkd.data import DataError, load_coco
from cvkd.engine import pseudo
from cvkd.engine.extra_data import add_extra_train
from cvkd.engine.pseudo import PseudoOptions, parse_class_conf, pseudo_label
from cvkd.models import build_detector

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["person", "car"]
FOLDER = [("a.png", 64, 48), ("b.jpg", 48, 64), ("c.png", 40, 40), ("sub/d.png", 80, 30)]  # file, width, height


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A random-weight yolov8n with two classes, saved as a cvkd detector checkpoint."""
    torch.manual_seed(0)
    t = build_detector("yolov8n.yaml", NAMES)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(path, "detector", t.model.state_dict(), {"family": "yolo", "arch": t.arch_spec(),
                                                             "class_names": NAMES})
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    for i, (f, w, h) in enumerate(FOLDER):
        make_image(tmp_path / "frames" / f, w, h, seed=i)
    return tmp_path / "frames"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """20 frames of 64x48 MJPG: frames 0-9 identical, frames 10-19 each 12 gray levels brighter than the one before."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    base = np.add.outer(np.arange(48), np.arange(64)).astype(np.float32)[..., None] * np.array([1.0, 0.5, 0.8])  # (48, 64, 3)
    for i in range(20):
        writer.write(np.clip(base + 12 * max(0, i - 9), 0, 255).astype(np.uint8))
    writer.release()
    return path


def _tool():
    spec = importlib.util.spec_from_file_location("tool_pseudo_label", ROOT / "tools" / "pseudo_label.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _label(src, teacher, out, **kw) -> tuple[pseudo.PseudoResult, dict]:
    run_kw = {k: kw.pop(k) for k in ("restart", "max_frames") if k in kw}
    r = pseudo_label(src, teacher, out, PseudoOptions(**{"imgsz": 64, "conf": 0.0, **kw}), progress=False, **run_kw)
    return r, json.loads(r.json_path.read_text())


def _boxes(d: dict) -> list[tuple]:
    return [(a["image_id"], a["category_id"], a["bbox"], a["score"]) for a in d["annotations"]]


def test_folder_json_loads_and_keeps_scores(teacher, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert _tool().main([str(folder), "--teacher", str(teacher), "--out", str(out), "--imgsz", "64", "--conf", "0",
                         "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert f"image root: {folder}" in stdout and "data.extra_train" in stdout
    data = load_coco(out / "pseudo.json", folder)  # opens every image: file_name relative to the source folder
    assert [r.file_name for r in data.images] == sorted(f for f, _, _ in FOLDER)
    assert data.class_names == NAMES and data.num_boxes > 0
    for r in data.images:
        b = r.boxes
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= r.width).all() and (b[:, 3] <= r.height).all()
    d = json.loads((out / "pseudo.json").read_text())
    assert d["categories"] == [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
    assert all(0 < a["score"] <= 1 and a["pseudo"] is True for a in d["annotations"])
    coco = COCO(str(out / "pseudo.json"))
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) == len(d["annotations"])
    assert not (out / "images").exists() or not any((out / "images").iterdir())  # an image folder is not copied


def test_thresholds_filter(teacher, folder, tmp_path):
    _, d0 = _label(folder, teacher, tmp_path / "all")
    scores = sorted({a["score"] for a in d0["annotations"]})
    assert len(scores) >= 2
    t = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # between two distinct scores
    _, d1 = _label(folder, teacher, tmp_path / "t", conf=t)
    assert _boxes(d1) == [b for b in _boxes(d0) if b[3] > t] and _boxes(d1)
    r2, d2 = _label(folder, teacher, tmp_path / "none", conf=1.01)
    assert d2["annotations"] == [] and len(d2["images"]) == 4 and r2.negatives == 4
    _, d3 = _label(folder, teacher, tmp_path / "cars", class_conf={"person": 1.01})
    assert _boxes(d3) == [b for b in _boxes(d0) if b[1] == 2] and _boxes(d3)


def test_parse_class_conf(teacher, folder, tmp_path, capsys):
    assert parse_class_conf("person=0.3, car=0.5") == {"person": 0.3, "car": 0.5}
    assert parse_class_conf(None) == {} and parse_class_conf("") == {}
    for bad in ("person", "person=x", "=0.3", "person=-1", "person=nan", "person=0.3,person=0.4"):
        with pytest.raises(DataError, match="--class-conf"):
            parse_class_conf(bad)
    rc = _tool().main([str(folder), "--teacher", str(teacher), "--out", str(tmp_path / "o"), "--imgsz", "64",
                       "--class-conf", "person=0.3,cat=0.5", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown class name(s) ['cat']" in err[0] and "person" in err[0]


def test_video_every_and_min_change(teacher, video, tmp_path):
    r, d = _label(video, teacher, tmp_path / "all")
    assert r.images == 20 and r.image_root == tmp_path / "all" / "images"
    r, d = _label(video, teacher, tmp_path / "every2", every=2)
    assert [im["frame"] for im in d["images"]] == list(range(0, 20, 2))
    assert [im["file_name"] for im in d["images"]][:2] == ["clip_000000.jpg", "clip_000002.jpg"]
    assert sorted(p.name for p in r.image_root.iterdir()) == [im["file_name"] for im in d["images"]]
    data = load_coco(r.json_path, r.image_root)  # the written JPEGs match the json's sizes
    assert len(data) == 10 and (data.images[0].width, data.images[0].height) == (64, 48)
    r, d = _label(video, teacher, tmp_path / "change", min_change=5)
    assert [im["frame"] for im in d["images"]] == [0, *range(10, 20)] and r.counts["static"] == 9
    merged = add_extra_train(data, [{"json": str(r.json_path), "images": str(r.image_root)}], "clip")
    assert len(merged) == 10 + 11  # the trainer's data.extra_train reads the output as is
    r, d = _label(video, teacher, tmp_path / "both", every=2, min_change=5)
    assert [im["frame"] for im in d["images"]] == [0, 10, 12, 14, 16, 18] and r.counts["static"] == 4


def test_resume_matches_uninterrupted_run(teacher, video, tmp_path, monkeypatch):
    kw = {"min_change": 5, "batch": 3, "save_every": 2}
    _, full = _label(video, teacher, tmp_path / "full", **kw)
    out = tmp_path / "out"
    r, _ = _label(video, teacher, out, max_frames=13, **kw)  # a clean stop: --max-frames
    assert not r.done and r.next_frame == 13 and r.images == 4
    r, d = _label(video, teacher, out, **kw)
    assert r.done and d["images"] == full["images"] and d["annotations"] == full["annotations"]

    real, calls = pseudo._label, []

    def crash_on_third_batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(pseudo, "_label", crash_on_third_batch)
    with pytest.raises(RuntimeError, match="killed"):
        _label(video, teacher, tmp_path / "crash", **kw)
    state = json.loads((tmp_path / "crash" / "pseudo_state.json").read_text())
    assert 0 < state["next_frame"] < 20 and not state["done"]
    monkeypatch.setattr(pseudo, "_label", real)
    r, d = _label(video, teacher, tmp_path / "crash", **kw)
    assert r.done and d["images"] == full["images"] and d["annotations"] == full["annotations"]
    r, d = _label(video, teacher, tmp_path / "crash", **kw)  # already complete: nothing redone
    assert d["annotations"] == full["annotations"]

    with pytest.raises(DataError, match=r"conf 0\.0 -> 0\.5.*--restart"):
        _label(video, teacher, out, conf=0.5, **kw)
    r, d = _label(video, teacher, out, conf=0.5, restart=True, **kw)
    assert r.done and r.images == 11 and all(a["score"] > 0.5 for a in d["annotations"])
    (out / "pseudo_state.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable resume state.*--restart"):
        _label(video, teacher, out, conf=0.5, **kw)


def test_errors_are_one_line(teacher, folder, tmp_path, capsys):
    tool = _tool()

    def err(source, *extra, teacher=teacher) -> str:
        rc = tool.main([str(source), "--teacher", str(teacher), "--out", str(tmp_path / "o"), "--imgsz", "64",
                        "--quiet", *extra])
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    assert "not found" in err(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no images found" in err(tmp_path / "empty")
    (folder / "zz_bad.jpg").write_bytes(b"not a jpeg")
    msg = err(folder, "--restart")
    assert "zz_bad.jpg" in msg and "--skip-bad" in msg
    (folder / "zz_bad.jpg").rename(tmp_path / "zz_bad.jpg")
    jpg = (folder / "b.jpg").read_bytes()
    (folder / "zz_cut.jpg").write_bytes(jpg[: len(jpg) // 2])  # truncated: decodes, but has no end marker
    msg = err(folder, "--restart")
    assert "zz_cut.jpg" in msg and "truncated" in msg
    (tmp_path / "zz_bad.jpg").rename(folder / "zz_bad.jpg")
    assert tool.main([str(folder), "--teacher", str(teacher), "--out", str(tmp_path / "o"), "--imgsz", "64",
                      "--quiet", "--skip-bad", "--restart"]) == 0
    assert "2 unreadable images skipped" in capsys.readouterr().out
    (tmp_path / "broken.avi").write_bytes(b"\x00garbage" * 100)
    assert "cannot open the video" in err(tmp_path / "broken.avi")
    lm = tmp_path / "lm.pt"
    save_checkpoint(lm, "lm", {}, {})
    assert "expected a 'detector' checkpoint" in err(folder, "--skip-bad", teacher=lm)
    assert "multiple of 32" in err(folder, "--imgsz", "50")
