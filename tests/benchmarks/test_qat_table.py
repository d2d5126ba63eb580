"""benchmarks/qat.py: rows keep their detections, and the paired gains pair the right rows."""
from __future__ import annotations

import json

import pytest


@pytest.fixture()
def qat(import_benchmark, monkeypatch, tmp_path):
    qat = import_benchmark("qat")
    monkeypatch.setattr(qat, "RESULTS", tmp_path / "qat.csv")
    # a ground truth of 20 one-box images
    gt = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in range(1, 21)],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 32, 32], "area": 1024,
                           "iscrowd": 0} for i in range(1, 21)],
          "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "val.json").write_text(json.dumps(gt))
    from cvkd.data import load_coco

    monkeypatch.setattr(qat, "val_set", lambda: load_coco(tmp_path / "val.json", None, None, check_images=False))
    return qat


def _add(qat, scheme, row, seed, found, lr="", kd="", placement=None, ranges=None, student="runs/s/final.pt"):
    from cctv_distill import keep_predictions

    rec = {"scheme": scheme, "row": row, "seed": seed, "epochs": 3, "lr": lr, "kd": kd, "map": len(found) / 20,
           "ap50": 0.5, "latency_ms": 1.0, "size_mb": 1.0, "student": student, "teacher": "", "file": "x"}
    if placement is not None:
        rec["placement"] = placement
    if ranges is not None:
        rec["ranges"] = ranges
    qat.append(rec)
    box = {"category_id": 1, "bbox": [8, 8, 32, 32], "score": 0.9}
    keep_predictions(qat.pred_name(rec), [{"image_id": i, **box} for i in found], qat.RESULTS)


def test_paired_gains_pair_each_seed_with_the_one_fp32_model_and_the_same_seed_of_the_same_lr(qat, capsys):
    _add(qat, "fp32", "fp32", 0, range(1, 21))
    _add(qat, "per_channel", "ptq", 0, range(1, 11))  # PTQ finds half the people
    for s in range(3):
        _add(qat, "per_channel", "qat", s, range(1, 21), lr="0.0001")
        _add(qat, "per_channel", "qat_kd", s, range(1, 21), lr="0.0001", kd="box")
    _add(qat, "per_channel", "qat_kd", 0, range(1, 11), lr="0.001", kd="box")  # another lr: its own comparisons
    qat.print_gains("runs/s/final.pt")
    out = capsys.readouterr().out
    assert "| s | per_channel | - | - | - | ptq | fp32 | 1 | -0.4950 |" in out
    assert "| s | per_channel | 0.0001 | box | conv | qat_kd | ptq | 3 | +0.4950 |" in out and "| significant |" in out
    assert "| s | per_channel | 0.0001 | box | conv | qat_kd | qat | 3 | +0.0000 | [+0.0000, +0.0000] | not significant |" \
        in out
    # the lr 0.001 row has no qat row of its lr to pair with, but is compared with the FP32 model
    assert "| s | per_channel | 0.001 | box | conv | qat_kd | fp32 | 1 | -0.4950 | [-0.7155, -0.2746] | below 0 over " \
        "images (1 seed) |" in out  # one fine-tune: no claim, its interval holds the images' variation only
    assert "| s | per_channel | 0.001 | box | conv | qat_kd | qat |" not in out


def test_rows_of_another_lr_or_recipe_do_not_replace_each_other(qat):
    _add(qat, "npu", "qat_kd", 0, range(1, 21), lr="0.0001", kd="box")
    _add(qat, "npu", "qat_kd", 0, range(1, 21), lr="0.0001", kd="logit_feature")
    _add(qat, "npu", "qat_kd", 0, range(1, 21), lr="0.001", kd="box")
    _add(qat, "npu", "qat_kd", 0, range(1, 11), lr="0.001", kd="box")  # the same row again: replaced
    rows = qat.read()
    assert len(rows) == 3 and [r["map"] for r in rows if r["lr"] == "0.001"] == ["0.5000"]
    assert len({qat.pred_name(r) for r in rows}) == 3


def test_rows_of_another_fake_quant_placement_are_their_own_and_pair_with_their_own(qat, capsys):
    """A CSV of the first QAT rows (no placement column: "conv") and rows of the placement of ORT's quantizer ("ort")."""
    _add(qat, "fp32", "fp32", 0, range(1, 21))
    for s in range(2):
        _add(qat, "per_channel", "qat", s, range(1, 11), lr="0.0001")  # a row of the first placement
        _add(qat, "per_channel", "qat", s, range(1, 21), lr="0.0001", placement="ort")
        _add(qat, "per_channel", "qat_kd", s, range(1, 21), lr="0.0001", kd="box", placement="ort")
    rows = qat.read()
    assert len(rows) == 7 and sorted(r["placement"] for r in rows) == ["", "conv", "conv", "ort", "ort", "ort", "ort"]
    assert len({qat.pred_name(r) for r in rows}) == 7
    qat.print_gains("runs/s/final.pt")
    out = capsys.readouterr().out
    # the ort KD rows pair with the ort QAT rows (equal), not with the conv ones (half as good)
    assert "| s | per_channel | 0.0001 | box | ort | qat_kd | qat | 2 | +0.0000 |" in out
    assert "| s | per_channel | 0.0001 | - | conv | qat | fp32 | 2 | -0.4950 |" in out


def test_learned_range_rows_are_their_own_and_only_the_students_rows_are_paired(qat, capsys):
    _add(qat, "fp32", "fp32", 0, range(1, 21))
    _add(qat, "fp32", "fp32", 0, range(1, 21), student="runs/other/final.pt")
    for s in range(2):
        _add(qat, "npu", "qat", s, range(1, 11), lr="0.0001", placement="ort")
        _add(qat, "npu", "qat", s, range(1, 21), lr="0.0001", placement="ort", ranges="learned0.01")
        _add(qat, "npu", "qat_kd", s, range(1, 21), lr="0.0001", kd="box", placement="ort", ranges="learned0.01")
        _add(qat, "npu", "qat", s, range(1, 21), lr="0.0001", placement="ort", student="runs/other/final.pt")
    rows = qat.read()
    assert len(rows) == 10 and len({qat.pred_name(r) for r in rows}) == 10
    qat.print_gains("runs/s/final.pt")
    out = capsys.readouterr().out
    # learned KD rows pair with the learned QAT rows (equal), not with the min/max ones (half as good)
    assert "| s | npu | 0.0001 | box | ort learned0.01 | qat_kd | qat | 2 | +0.0000 |" in out
    assert "| s | npu | 0.0001 | - | ort | qat | fp32 | 2 | -0.4950 |" in out
    assert "| s | npu | 0.0001 | - | ort learned0.01 | qat | fp32 | 2 | +0.0000 |" in out
    assert "| other |" not in out  # another student's rows: not bootstrapped
    # the same row under the other ranges, paired by seed
    assert "| s | npu | 0.0001 | - | ort learned0.01 | qat | qat, minmax | 2 | +0.4950 |" in out


@pytest.mark.parametrize("arch, variant", [("yolov8n.yaml", "full"), ("yolo26n.yaml", "e2e")])
def test_rows_score_the_deployed_file(qat, arch, variant, tmp_path):
    """A YOLO26 student is scored as it deploys, through the NMS-free one-to-one file, not the one-to-many one."""
    import torch

    from cvkd.checkpoint import save_checkpoint
    from cvkd.deploy import read_metadata
    from cvkd.models import build_detector

    torch.manual_seed(0)
    det = build_detector(arch, ["person"]).eval()
    ckpt = tmp_path / "run" / "final.pt"
    ckpt.parent.mkdir()
    save_checkpoint(ckpt, "detector", det.model.state_dict(),
                    {"family": det.family, "arch": det.arch_spec(), "class_names": det.class_names})
    path = qat.export(ckpt, tmp_path / "out", 64, "fp32")
    assert read_metadata(path)["cvkd_variant"] == variant and f"_{variant}_fp32" in path.name


def test_table_only_needs_no_student_and_prints_every_students_gains(qat, capsys, monkeypatch):
    for student in ("runs/a/final.pt", "runs/b/final.pt"):
        _add(qat, "fp32", "fp32", 0, range(1, 21), student=student)
        _add(qat, "npu", "ptq", 0, range(1, 11), student=student)
    monkeypatch.setattr("sys.argv", ["qat.py", "--table-only"])
    qat.main()
    out = capsys.readouterr().out
    assert "| a | npu | - | - | - | ptq | fp32 | 1 | -0.4950 |" in out
    assert "| b | npu | - | - | - | ptq | fp32 | 1 | -0.4950 |" in out
    monkeypatch.setattr("sys.argv", ["qat.py", "--rows", "fp32"])  # a run needs its student
    with pytest.raises(SystemExit):
        qat.main()
    assert "--student is required" in capsys.readouterr().err
