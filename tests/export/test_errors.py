"""Wrong input to tools/export.py and benchmarks/export_latency.py: one line 'error: ...' and exit 2, nothing slow."""
from pathlib import Path

import pytest
import torch

from cvkd.checkpoint import save_checkpoint
from cvkd.deploy import ExportError, OrtDetector

from .conftest import load_script


def _one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def lm_ckpt(tmp_path) -> Path:
    p = tmp_path / "lm.pt"
    save_checkpoint(p, "lm", {}, {})
    return p


@pytest.fixture
def classifier_ckpt(tmp_path) -> Path:
    """An ultralytics classification checkpoint (same file layout as a detection one)."""
    from ultralytics.nn.tasks import ClassificationModel

    p = tmp_path / "yolov8n-cls.pt"
    torch.save({"model": ClassificationModel("yolov8n-cls.yaml", nc=2, verbose=False)}, p)
    return p


def test_lm_checkpoint(export_tool, lm_ckpt, capsys):
    _one_line_error(capsys, export_tool.main([str(lm_ckpt)]), "'lm' checkpoint", "detector")


def test_classifier_checkpoint(export_tool, classifier_ckpt, capsys):
    _one_line_error(capsys, export_tool.main([str(classifier_ckpt)]), "not an ultralytics detection checkpoint")


def test_detector_checkpoint_with_other_weights(export_tool, tmp_path, capsys):
    from cvkd.models import build_detector

    two = build_detector("yolov8n.yaml", ["person", "car"])
    p = tmp_path / "mismatch.pt"
    save_checkpoint(p, "detector", two.model.state_dict(), {"family": "yolo", "arch": two.arch_spec(),
                                                            "class_names": ["person"]})
    _one_line_error(capsys, export_tool.main([str(p)]), "mismatch.pt")


def test_teacher_only_rcnn_checkpoint(export_tool, tmp_path, capsys):
    from cvkd.models import build_detector

    m = build_detector("fasterrcnn_mobilenet_v3_small_fpn", ["person"], width=0.25)
    p = tmp_path / "rcnn.pt"
    save_checkpoint(p, "detector", m.model.state_dict(), {"family": m.family, "arch": m.arch_spec(),
                                                          "class_names": ["person"]})
    _one_line_error(capsys, export_tool.main([str(p), "--imgsz", "64"]), "rcnn model has no dense head")


def test_corrupt_checkpoint(export_tool, tmp_path, capsys):
    p = tmp_path / "broken.pt"
    p.write_bytes(b"\x80\x02 definitely not a torch file")
    _one_line_error(capsys, export_tool.main([str(p)]), "broken.pt")


def test_missing_checkpoint(export_tool, tmp_path, capsys):
    _one_line_error(capsys, export_tool.main([str(tmp_path / "nope.pt")]), "not found")


@pytest.mark.parametrize("opset", ["20", "10"])
def test_unsupported_opset(export_tool, ckpt, opset, capsys):
    _one_line_error(capsys, export_tool.main([str(ckpt), "--opset", opset]), f"opset {opset}", "11..19")


def test_int8_needs_opset_13(export_tool, ckpt, calib_dir, capsys):
    rc = export_tool.main([str(ckpt), "--opset", "12", "--int8", "--calib", str(calib_dir)])
    _one_line_error(capsys, rc, "opset >= 13")


def test_calibration_folder_without_images(export_tool, ckpt, tmp_path, capsys):
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames here")
    _one_line_error(capsys, export_tool.main([str(ckpt), "--int8", "--calib", str(empty)]), "has no images")
    _one_line_error(capsys, export_tool.main([str(ckpt), "--int8", "--calib", str(tmp_path / "missing")]), "not found")
    _one_line_error(capsys, export_tool.main([str(ckpt), "--int8"]), "--calib")


def test_bad_imgsz_and_variant(export_tool, ckpt, tmp_path, capsys):
    _one_line_error(capsys, export_tool.main([str(ckpt), "--imgsz", "100", "--out", str(tmp_path)]), "multiple of 32")
    rc = export_tool.main([str(ckpt), "--variants", "tflite", "--out", str(tmp_path)])
    _one_line_error(capsys, rc, "unknown ONNX variant")
    _one_line_error(capsys, export_tool.main([str(ckpt), "--nms", "--variants", "raw", "--out", str(tmp_path)]), "NMS")


def test_benchmark_rejects_wrong_checkpoint(lm_ckpt, calib_dir, tmp_path, capsys):
    bench = load_script("benchmarks/export_latency.py")
    rc = bench.main(["--student", str(lm_ckpt), "--calib", str(calib_dir), "--no-map",
                     "--out", str(tmp_path / "x.csv")])
    _one_line_error(capsys, rc, "'lm' checkpoint")
    assert not (tmp_path / "x.csv").exists()


def test_ort_detector_wrong_files(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        OrtDetector(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(ExportError):
        OrtDetector(junk)
