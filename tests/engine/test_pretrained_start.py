"""The trainer starting a student from a pretrained checkpoint of other classes (model.name=coco.pt)."""
import json

import torch

from cvkd.checkpoint import save_checkpoint
from cvkd.engine.trainer import resolve_config, train
from cvkd.models import build_detector


def test_trainer_starts_from_a_checkpoint_of_other_classes(tiny_run, tmp_path, capfd):
    torch.manual_seed(0)
    src = build_detector("yolov8n.yaml", ["person", "car"])
    ck = tmp_path / "coco.pt"
    save_checkpoint(ck, "detector", src.model.state_dict(), {"family": "yolo", "arch": src.arch_spec(),
                                                            "class_names": src.class_names, "imgsz": 64})
    train(resolve_config(None, [*tiny_run, f"model.name={ck}", "train.epochs=1", "train.lr=0"]))
    err = capfd.readouterr().err
    assert "student initialised from pretrained weights of" in err and "rows of ['person'] kept" in err
    run = tmp_path / "runs" / "exp"
    assert (run / "final.pt").is_file()
    preds = json.loads((run / "val_predictions.json").read_text())  # the final weights' val detections
    assert preds and {"image_id", "category_id", "bbox", "score"} <= set(preds[0])


def test_weight_selection_from_a_teacher_of_other_classes(tiny_run, tmp_path, capfd):
    torch.manual_seed(0)
    t = build_detector("yolov8n.yaml", ["0", "1"])  # the CCTV source's two people classes
    ck = tmp_path / "teacher.pt"
    save_checkpoint(ck, "detector", t.model.state_dict(), {"family": "yolo", "arch": t.arch_spec(),
                                                          "class_names": t.class_names, "imgsz": 64})
    cfg = resolve_config(None, [*tiny_run, "model.init_from=teacher", f"kd.teacher={ck}", "train.epochs=1",
                                "kd.teacher_classes={'0': person, '1': person}", "train.lr=0", "train.ema=false"])
    train(cfg)
    err = capfd.readouterr().err
    assert "initialised by weight selection" in err and "rows of ['person'] kept" in err
    from cvkd.models import load_detector

    s = load_detector(tmp_path / "runs" / "exp" / "final.pt").model.state_dict()
    key = "model.22.cv3.0.2.bias"  # person takes the row of the first teacher class mapped onto it ('0')
    torch.testing.assert_close(s[key], t.model.state_dict()[key][:1])


def test_weight_selection_copies_the_teachers_batchnorm_before_the_teacher_is_folded(tiny_run, tmp_path, capfd):
    torch.manual_seed(0)
    t = build_detector("yolov8n.yaml", ["person"])
    for bn in (m for m in t.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.5, 1.5)
    ck = tmp_path / "teacher.pt"
    save_checkpoint(ck, "detector", t.model.state_dict(), {"family": "yolo", "arch": t.arch_spec(),
                                                          "class_names": t.class_names, "imgsz": 64})
    train(resolve_config(None, [*tiny_run, "model.init_from=teacher", f"kd.teacher={ck}", "kd.logit=1",
                                "train.epochs=1", "train.lr=0", "train.ema=false"]))
    err = capfd.readouterr().err
    assert "BatchNorm layers folded" in err
    from cvkd.models import load_detector

    s = load_detector(tmp_path / "runs" / "exp" / "final.pt").model.state_dict()
    # selected, not re-initialised (warm-up moves it by ~1e-5 even at lr 0)
    torch.testing.assert_close(s["model.0.bn.weight"], t.model.state_dict()["model.0.bn.weight"], rtol=0, atol=1e-3)
