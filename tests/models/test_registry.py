"""The detector family registry: every family cvkd ships is registered, names route to exactly one family, a new
family registers itself with the decorator and is then built and loaded like the shipped ones."""
import pytest
import torch

from cvkd.checkpoint import save_checkpoint
from cvkd.models import ModelError, build_detector, families, family_of_name, load_detector, register_family
from cvkd.models.yolo import YoloAdapter


def test_shipped_families_and_routing():
    assert set(families()) >= {"yolo", "timm", "torchvision", "rcnn"}
    cases = {"yolov8n.yaml": "yolo", "yolo11s.yaml": "yolo", "timm:mobilenetv3_small_100": "timm",
             "fcos_resnet50_fpn": "torchvision", "torchvision:fcos_resnet18_fpn": "torchvision",
             "fasterrcnn_resnet50_fpn": "rcnn", "torchvision:fasterrcnn_resnet18_fpn": "rcnn"}
    for name, family in cases.items():
        assert family_of_name(name).name == family, name
    assert family_of_name("resnet50") is None
    with pytest.raises(ModelError, match="unknown detector 'resnet50'.*yolo: yolov8n.yaml"):
        build_detector("resnet50", ["person"])


def test_a_new_family_registers_itself(tmp_path):
    @register_family("tinyyolo", matches=lambda name: name.startswith("tiny:"), example="tiny:yolov8n.yaml")
    class TinyYolo(YoloAdapter):
        @classmethod
        def from_name(cls, name, class_names, width=None, depth=None):
            base = YoloAdapter.from_name(name.removeprefix("tiny:"), class_names, 0.0625, 0.33)
            return cls(base.model, class_names, {"name": name.removeprefix("tiny:"), "width": 0.0625, "depth": 0.33})

    try:
        m = build_detector("tiny:yolov8n.yaml", ["person"])
        assert type(m) is TinyYolo and m.family == "tinyyolo"
        path = tmp_path / "tiny.pt"
        save_checkpoint(path, "detector", m.model.state_dict(), {"family": m.family, "arch": m.arch_spec(),
                                                                 "class_names": ["person"]})
        back = load_detector(path)
        assert type(back) is TinyYolo
        x = torch.rand(1, 3, 64, 64)
        torch.testing.assert_close(back.eval()(x).cls_logits, m.eval()(x).cls_logits)
        with pytest.raises(ValueError, match="registered twice"):
            register_family("tinyyolo", matches=lambda n: False, example="")(type("Other", (YoloAdapter,), {}))
    finally:
        from cvkd.models import registry

        registry._FAMILIES.pop("tinyyolo", None)
