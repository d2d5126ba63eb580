"""ONNX export of a tiny random yolov8n at 64 px: numerical parity with PyTorch, INT8 validity, the tool end to end."""
import contextlib
import io

import numpy as np
import onnx
import pytest
import torch

from cvkd.deploy import (
    OrtDetector,
    export_onnx,
    ort_session,
    quantize_int8,
    read_metadata,
    tail_nodes,
)

from .conftest import IMGSZ


@pytest.fixture(scope="module")
def tool_run(export_tool, ckpt, calib_dir, val_set, tmp_path_factory):
    """One run of tools/export.py: full + raw FP32, INT8 of full, mAP table of PyTorch / ONNX FP32 / ONNX INT8."""
    out = tmp_path_factory.mktemp("exports")
    gt, images = val_set
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = export_tool.main([str(ckpt), "--imgsz", str(IMGSZ), "--out", str(out), "--variants", "full", "raw",
                               "--int8", "--calib", str(calib_dir), "--calib-frames", "3", "--eval", str(gt),
                               "--images", str(images), "--class-map", '{"0": person, "1": person}'])
    return rc, buf.getvalue(), out


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))  # (1, 3, S, S)


def test_full_fp32_matches_pytorch(detector, tool_run):
    rc, _, out = tool_run
    assert rc == 0
    x = _image()
    with torch.no_grad():
        ref = detector(x)
    got = ort_session(out / f"student_{IMGSZ}_full_fp32.onnx").run(None, {"images": x.numpy()})[0]  # (1, A, 5)
    assert got.shape == (1, ref.boxes.shape[1], 4 + 1)
    np.testing.assert_allclose(got[..., :4], ref.boxes.numpy(), atol=1e-4 * IMGSZ, rtol=0)  # pixels
    np.testing.assert_allclose(got[..., 4:], ref.cls_logits.sigmoid().numpy(), atol=1e-4, rtol=0)  # scores


def test_ort_detector_predict_matches_adapter(detector, tool_run):
    ort_det = OrtDetector(tool_run[2] / f"student_{IMGSZ}_full_fp32.onnx")
    assert ort_det.class_names == ["person"] and ort_det.imgsz == IMGSZ
    x = torch.cat([_image(1), _image(2)])  # (2, 3, S, S): looped over the batch-1 graph
    for a, b in zip(detector.predict(x, conf=0.001), ort_det.predict(x, conf=0.001)):
        assert len(a["scores"]) == len(b["scores"]) > 0
        torch.testing.assert_close(b["scores"], a["scores"], atol=1e-4, rtol=0)
        torch.testing.assert_close(b["boxes"], a["boxes"], atol=1e-4 * IMGSZ, rtol=0)


def test_raw_outputs_match_head(detector, tool_run):
    sess = ort_session(tool_run[2] / f"student_{IMGSZ}_raw_fp32.onnx")
    assert [o.name for o in sess.get_outputs()] == ["box_s8", "cls_s8", "box_s16", "cls_s16", "box_s32", "cls_s32"]
    x = _image()
    outs = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = detector(x)
    bins = ref.raw["boxes"].split(ref.level_sizes, 2)  # per level (1, 4R, H*W)
    logits = ref.raw["scores"].split(ref.level_sizes, 2)  # per level (1, K, H*W)
    for i, s in enumerate(detector.strides):
        box, cls = outs[2 * i], outs[2 * i + 1]
        n = IMGSZ // s
        assert box.shape == (1, 4 * detector.reg_max, n, n) and cls.shape == (1, 1, n, n)
        np.testing.assert_allclose(box.reshape(1, box.shape[1], -1), bins[i].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(cls.reshape(1, 1, -1), logits[i].numpy(), atol=1e-4, rtol=0)


def test_int8_is_valid_and_keeps_tail_float(tool_run):
    rc, stdout, out = tool_run
    path = out / f"student_{IMGSZ}_full_int8.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    meta = read_metadata(model)
    assert meta["precision"] == "int8" and meta["calib_frames"] == 3 and meta["float_tail_nodes"] > 0
    assert "tail nodes kept float" in stdout and "Softmax" in stdout and "Sigmoid" in stdout
    got = ort_session(path).run(None, {"images": _image().numpy()})[0]
    assert got.shape == (1, sum((IMGSZ // s) ** 2 for s in (8, 16, 32)), 5) and np.isfinite(got).all()
    assert path.stat().st_size < 0.5 * (out / f"student_{IMGSZ}_full_fp32.onnx").stat().st_size


def test_tool_prints_map_table(tool_run):
    rc, stdout, _ = tool_run
    rows = [line for line in stdout.splitlines() if line.startswith("| student |")]
    assert [r.split("|")[2:4] for r in rows] == [[" pytorch ", " fp32 "], [" onnx ", " fp32 "], [" onnx ", " int8 "]]
    fp32 = [r.split("|")[5:8] for r in rows[:2]]
    assert fp32[0] == fp32[1]  # PyTorch and ONNX FP32: same mAP, AP50 and detection count


def test_tail_nodes_follow_the_last_convs(tool_run):
    model = onnx.load(str(tool_run[2] / f"student_{IMGSZ}_full_fp32.onnx"))
    tail = tail_nodes(model)
    ops = {n.op_type for n in tail}
    assert "Conv" not in ops and {"Softmax", "Sigmoid", "Concat"} <= ops
    assert model.graph.node[-1] in tail  # the output node is part of the tail
    raw = onnx.load(str(tool_run[2] / f"student_{IMGSZ}_raw_fp32.onnx"))
    assert tail_nodes(raw) == []  # raw variant: outputs are the head convs themselves


def test_nms_baked_matches_predict(detector, tmp_path, calib_dir):
    path = export_onnx(detector, tmp_path / "nms.onnx", IMGSZ, "full", opset=13, nms=True, conf=0.005, iou=0.5)
    ort_det = OrtDetector(path)
    x = _image(3)
    a, b = detector.predict(x, conf=0.005, iou=0.5)[0], ort_det.predict(x)[0]
    assert len(a["scores"]) == len(b["scores"]) > 0
    torch.testing.assert_close(b["scores"].sort().values, a["scores"].sort().values, atol=1e-4, rtol=0)
    assert quantize_int8(path, tmp_path / "nms_int8.onnx", calib_dir, frames=1)["excluded_ops"].get("NonZero") == 1


@pytest.mark.parametrize("opset", [11, 19])
def test_opset_range_exports(detector, tmp_path, opset):
    path = export_onnx(detector, tmp_path / "m.onnx", IMGSZ, "full", opset=opset, slim=False)
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    x = _image()
    with torch.no_grad():
        ref = detector(x).boxes.numpy()  # (1, A, 4)
    np.testing.assert_allclose(ort_session(path).run(None, {"images": x.numpy()})[0][..., :4], ref, atol=1e-4 * IMGSZ)


def test_openvino_ir(tool_run, tmp_path):
    ov = pytest.importorskip("openvino")
    from cvkd.deploy import to_openvino

    src = tmp_path / "m.onnx"
    src.write_bytes((tool_run[2] / f"student_{IMGSZ}_full_fp32.onnx").read_bytes())
    xml = to_openvino(src)
    x = _image().numpy()
    got = ov.Core().compile_model(str(xml), "CPU")(x)[0]
    ref = ort_session(src).run(None, {"images": x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)
    # cvkd predict on the IR: the same detections as on the ONNX file it came from
    from cvkd.deploy.predict import PredictOptions, predict

    folder = tmp_path / "frames"
    folder.mkdir()
    cv2 = pytest.importorskip("cv2")
    cv2.imwrite(str(folder / "a.png"), (_image()[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).astype(np.uint8))
    opts = PredictOptions(conf=0.0, max_det=20)
    a, b = predict(src, folder, None, opts, progress=False), predict(xml, folder, None, opts, progress=False)
    top = [sorted((p["score"] for p in r.predictions), reverse=True)[:5] for r in (a, b)]  # a random model's
    assert len(top[0]) == 5  # low scores sit near NMS ties, which rounding can flip: compare the top ones
    np.testing.assert_allclose(top[0], top[1], atol=1e-3)


def test_other_families_export_full_through_their_forward(detector, tmp_path):
    import copy

    from cvkd.deploy import ExportError

    other = copy.deepcopy(detector)
    other.family = "timm"  # any non-YOLO adapter: the full variant traces its own forward()
    path = export_onnx(other, tmp_path / "other.onnx", IMGSZ)
    x = _image()
    with torch.no_grad():
        ref = detector(x)
    got = ort_session(path).run(None, {"images": x.numpy()})[0]  # (1, A, 5)
    np.testing.assert_allclose(got[..., :4], ref.boxes.numpy(), atol=1e-4 * IMGSZ, rtol=0)
    np.testing.assert_allclose(got[..., 4:], ref.cls_logits.sigmoid().numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ExportError, match="raw variant is for YOLO"):
        export_onnx(other, tmp_path / "raw.onnx", IMGSZ, "raw")


def test_ultralytics_checkpoint_exports(detector, ckpt, tmp_path):
    from cvkd.deploy import load_for_export
    from cvkd.models.export_ultralytics import to_ultralytics_checkpoint

    adapter = load_for_export(to_ultralytics_checkpoint(ckpt, tmp_path / "ul.pt", imgsz=IMGSZ))
    path = export_onnx(adapter, tmp_path / "ul.onnx", IMGSZ)
    x = _image()
    with torch.no_grad():
        ref = detector(x).boxes.numpy()  # (1, A, 4)
    np.testing.assert_allclose(ort_session(path).run(None, {"images": x.numpy()})[0][..., :4], ref, atol=1e-4 * IMGSZ)


def test_latency_benchmark_smoke(ckpt, calib_dir, val_set, tmp_path):
    import csv

    from .conftest import load_script

    bench = load_script("benchmarks/export_latency.py")
    gt, images = val_set
    out = tmp_path / "export.csv"
    rc = bench.main(["--teacher", str(ckpt), "--student", str(ckpt), "--imgsz", str(IMGSZ), "--runs", "2", "--warmup",
                     "1", "--calib", str(calib_dir), "--calib-frames", "2", "--val-json", str(gt), "--val-images",
                     str(images), "--work", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    expected = [("teacher", "fp32"), ("student", "fp32"), ("student", "int8")]
    assert [(r["model"], r["precision"]) for r in rows] == expected
    for r in rows:
        assert float(r["latency_ms_median"]) > 0 and float(r["latency_ms_p90"]) >= float(r["latency_ms_median"])
        assert float(r["size_mb"]) > 0 and r["map"] != "" and r["imgsz"] == str(IMGSZ)
    assert rows[0]["map"] == rows[1]["map"]  # same weights: same mAP through the same evaluator


def test_npu_scheme_is_per_tensor_symmetric_int8_everywhere_but_the_tail(detector, tmp_path, calib_dir):
    from onnx import numpy_helper

    from cvkd.deploy import ExportError

    fp32 = export_onnx(detector, tmp_path / "m.onnx", IMGSZ, "full", opset=13)
    report = quantize_int8(fp32, tmp_path / "npu.onnx", calib_dir, frames=2, scheme="npu")
    model = onnx.load(str(report["path"]))
    assert read_metadata(model)["int8_scheme"] == "npu"
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(inits[n.input[1]].size == 1 for n in dq)  # one scale per tensor, weights included
    zero_points = [inits[n.input[2]] for n in dq if len(n.input) > 2]
    # symmetric int8 weights and activations (zero point 0), int32 biases; no uint8 anywhere
    assert {z.dtype for z in zero_points} == {np.dtype(np.int8), np.dtype(np.int32)} and all(z == 0 for z in zero_points)
    produced = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(produced[n.input[1]].op_type == "DequantizeLinear" for n in convs)  # every conv's weights, head's too
    got = ort_session(report["path"]).run(None, {"images": _image().numpy()})[0]
    assert np.isfinite(got).all()
    with pytest.raises(ExportError, match="unknown INT8 scheme"):
        quantize_int8(fp32, tmp_path / "x.onnx", calib_dir, frames=1, scheme="fp4")


def test_ort_detector_through_a_class_map(tool_run):
    """An ONNX file of other classes (a two-class teacher's, say) is scored on the data's classes through the same
    map as distillation; the ONNX detector has no parameters, so the map's device comes from its buffers."""
    from cvkd.models.class_map import ClassMappedTeacher, map_teacher

    ort_det = OrtDetector(tool_run[2] / f"student_{IMGSZ}_full_fp32.onnx")
    mapped = map_teacher(ort_det, ["human"], {"person": "human"})
    assert isinstance(mapped, ClassMappedTeacher) and mapped.class_names == ["human"]
    x = _image(3)
    torch.testing.assert_close(mapped(x).cls_logits, ort_det(x).cls_logits)  # one member: the same scores
    a, b = mapped.predict(x, conf=0.001)[0], ort_det.predict(x, conf=0.001)[0]
    torch.testing.assert_close(a["scores"], b["scores"])
