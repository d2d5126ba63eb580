"""QAT + KD as a user runs it: a trained FP32 student fine-tuned with fake-quant convolutions against a teacher
(subprocess), reloaded from its checkpoint, exported as ONNX QDQ that ONNX Runtime runs with INT8 kernels."""
import collections
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cvkd.engine.trainer import resolve_config, train
from cvkd.models import load_detector

from .conftest import MINI, ROOT, kill_after_first_checkpoint


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


@pytest.mark.parametrize("ranges", ["minmax", "learned"])
def test_qat_under_torchrun_keeps_the_processes_identical(tiny_run, tmp_path, ranges):
    from cvkd.checkpoint import save_checkpoint
    from cvkd.models import build_detector

    m = build_detector("yolov8n.yaml", ["person"])
    fp32 = tmp_path / "fp32.pt"
    save_checkpoint(fp32, "detector", m.model.state_dict(), {"family": "yolo", "arch": m.arch_spec(),
                                                            "class_names": ["person"]})
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={29533 + (ranges == 'learned')}",
           str(ROOT / "tools" / "train.py"), *tiny_run, "name=qat_ddp", "train.epochs=1", "train.device=cpu",
           f"model.name={fp32}", "train.qat=npu", "train.qat_calib=1", "train.batch=2", f"train.qat_ranges={ranges}",
           f"train.qat_freeze={int(ranges == 'minmax')}"]  # learned: ranges that move in the only epoch
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "runs" / "qat_ddp" / "train.log").read_text()
    assert "2 processes" in log and "weights identical on all 2 processes: True" in log
    ck = torch.load(tmp_path / "runs" / "qat_ddp" / "final.pt", map_location="cpu", weights_only=True)
    assert ck["meta"]["qat"] == "npu" and any(k.endswith("act_in.seen") and v for k, v in ck["model"].items())
    assert ck["meta"]["qat_ranges"] == ranges
    if ranges == "learned":  # the scales trained (their own Adam), and the loader rebuilds them as learned ones
        assert "activation scales learned from here" in log and "learned activation scales / calibrated" in log
        from cvkd.deploy.qat import RangeObserver

        obs = [o for o in load_detector(tmp_path / "runs" / "qat_ddp" / "final.pt").modules()
               if isinstance(o, RangeObserver)]
        assert obs and all(o.is_learning for o in obs if o.calibrated)


def test_a_killed_learned_range_qat_run_resumes_with_its_range_optimizer(tiny_run, tmp_path):
    """Learned activation scales train with their own Adam: a resumed run continues its state, so that it has taken as
    many steps as the weights' optimizer (AdamW here, whose state resumes too) when the run ends."""
    from cvkd.checkpoint import load_checkpoint, save_checkpoint
    from cvkd.models import build_detector

    m = build_detector("yolov8n.yaml", ["person"])
    fp32 = tmp_path / "fp32.pt"
    save_checkpoint(fp32, "detector", m.model.state_dict(), {"family": "yolo", "arch": m.arch_spec(),
                                                            "class_names": ["person"]})
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "runs" / "lsq"
    kill_after_first_checkpoint("train.py", [*tiny_run, "name=lsq", "train.epochs=4", f"model.name={fp32}",
                                             "train.qat=npu", "train.qat_calib=1", "train.qat_ranges=learned",
                                             "train.qat_freeze=0"], run)
    done = load_checkpoint(run / "last.pt", "detector")["epoch"] + 1
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), f"resume={run}"], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ck = load_checkpoint(run / "last.pt", "detector")
    steps = [int(s["step"]) for s in ck["ranges_optimizer"]["state"].values()]
    weight_steps = max(int(s["step"]) for s in ck["optimizer"]["state"].values())
    assert ck["epoch"] + 1 == 4 and steps and max(steps) == weight_steps > 4, (done, steps, weight_steps)
    if done < 4:
        assert f"epoch {done + 1} of 4 is next" in (run / "train.log").read_text()
