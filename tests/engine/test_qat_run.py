"""QAT + KD as a user runs it: a trained FP32 student fine-tuned with fake-quant convolutions against a teacher
(subprocess), reloaded from its checkpoint, exported as ONNX QDQ that ONNX Runtime runs with INT8 kernels."""
import collections
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch

from cvkd.engine.trainer import resolve_config, train
from cvkd.models import load_detector

from .conftest import MINI, ROOT


def test_qat_kd_smoke_then_int8_export(tiny_run, tmp_path):
    fp32 = train(resolve_config(None, [*tiny_run, "name=fp32", "train.epochs=1"]))
    student = tmp_path / "runs" / "fp32" / "final.pt"
    assert fp32["run_dir"] and student.is_file()
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "distill.py"), *tiny_run, "name=qat", "train.epochs=2",
                        f"model.name={student}", "train.qat=per_channel", "train.qat_calib=2", f"kd.teacher={student}",
                        "kd.logit=1", "kd.feature=1"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "QAT (per_channel): BatchNorm folded, 63 convolutions fake-quantized" in r.stderr
    assert "QAT: activation ranges set on 2 batches" in r.stderr
    qat = tmp_path / "runs" / "qat" / "final.pt"
    model = load_detector(qat)  # rebuilds the fake-quant modules from the checkpoint's meta
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), str(qat), "--imgsz", "64", "--out",
                        str(tmp_path / "export")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    path = tmp_path / "export" / "final_64_full_int8_qat.onnx"
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    x = torch.rand(1, 3, 64, 64)
    out = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = model.eval()(x)
    np.testing.assert_allclose(out[..., 4:], ref.cls_logits.sigmoid().numpy(), atol=1e-3)
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QLinearConv"] == 63 and ops["Conv"] == 0
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), str(qat), "--imgsz", "64", "--int8",
                        "--calib", str(MINI / "images" / "val"), "--out", str(tmp_path / "e2")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 2 and "drop --int8" in r.stderr


def test_qat_under_torchrun_keeps_the_processes_identical(tiny_run, tmp_path):
    from cvkd.checkpoint import save_checkpoint
    from cvkd.models import build_detector

    m = build_detector("yolov8n.yaml", ["person"])
    fp32 = tmp_path / "fp32.pt"
    save_checkpoint(fp32, "detector", m.model.state_dict(), {"family": "yolo", "arch": m.arch_spec(),
                                                            "class_names": ["person"]})
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(ROOT / "tools" / "train.py"), *tiny_run, "name=qat_ddp", "train.epochs=1", "train.device=cpu",
           f"model.name={fp32}", "train.qat=npu", "train.qat_calib=1", "train.batch=2"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "runs" / "qat_ddp" / "train.log").read_text()
    assert "2 processes" in log and "weights identical on all 2 processes: True" in log
    ck = torch.load(tmp_path / "runs" / "qat_ddp" / "final.pt", map_location="cpu", weights_only=True)
    assert ck["meta"]["qat"] == "npu" and any(k.endswith("act_in.seen") and v for k, v in ck["model"].items())
