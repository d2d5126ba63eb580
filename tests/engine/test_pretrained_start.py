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
    assert "student initialised from pretrained weights of" in err and "rows of ['person'] kept by name" in err
    run = tmp_path / "runs" / "exp"
    assert (run / "final.pt").is_file()
    preds = json.loads((run / "val_predictions.json").read_text())  # the final weights' val detections
    assert preds and {"image_id", "category_id", "bbox", "score"} <= set(preds[0])
