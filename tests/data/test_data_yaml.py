"""YOLO data.yaml read directly (no conversion to json): splits, path rules, the config key, one-line errors."""
import json
from pathlib import Path

import pytest
from test_convert import make_yolo
from tinydata import make_image

from cvkd.config import ConfigError
from cvkd.data import DataError, load_coco, load_split
from cvkd.data.convert import convert_yolo
from cvkd.engine.config import DataConfig
from cvkd.engine.trainer import resolve_config

ROOT = Path(__file__).resolve().parents[2]


def boxes(data):
    return [(r.file_name, r.bbox.round(6).tolist(), r.labels.tolist()) for r in data.images]


def test_data_yaml_equals_the_converted_json(tmp_path):
    src = make_yolo(tmp_path / "ds")
    out = convert_yolo(src, tmp_path / "out")
    for split in ("train", "val"):
        direct = load_coco(src / "data.yaml", split=split)
        via_json = load_coco(*out[split])
        assert boxes(direct) == boxes(via_json) and direct.class_names == via_json.class_names == ["0", "1"]
    assert load_coco(src, split="train").num_boxes == 3  # the dataset folder works too
    merged = load_coco(src / "data.yaml", class_map={"0": "person", "1": "person"}, split="train")
    assert merged.class_names == ["person"] and merged.num_boxes == 3


def test_ultralytics_path_rules_lists_txt_and_nc_only(tmp_path, monkeypatch):
    root = tmp_path / "sets" / "cams"
    for cam in ("a", "b"):
        make_image(root / cam / "images" / f"{cam}.jpg", 40, 20)
        (root / cam / "labels").mkdir(parents=True)
        (root / cam / "labels" / f"{cam}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "val.txt").write_text("./a/images/a.jpg\n")
    cfg = tmp_path / "cfg" / "data.yaml"
    cfg.parent.mkdir()
    # `path:` relative to the working directory (as ultralytics), a list of folders, a .txt list, names from nc
    cfg.write_text("path: sets/cams\ntrain: [a/images, b/images]\nvalidation: val.txt\nnc: 1\n")
    monkeypatch.chdir(tmp_path)
    train = load_coco(cfg, split="train")
    assert sorted(r.file_name for r in train.images) == ["a/images/a.jpg", "b/images/b.jpg"]
    assert train.class_names == ["class_0"] and train.num_boxes == 2
    assert [r.file_name for r in load_coco(cfg, split="val").images] == ["a.jpg"]
    # ... and relative to the yaml's folder when it is not under the working directory
    (tmp_path / "cfg" / "sets").symlink_to(tmp_path / "sets")
    monkeypatch.chdir(root)
    assert load_coco(cfg, split="train").num_boxes == 2


@pytest.mark.parametrize("text,msg", [
    (None, "data.yaml not found"),
    ("train: [unclosed\n", "not valid YAML"),
    ("train: ../train/images\n", "missing required key 'names'"),
    ("train: ../train/images\nnames: [a]\nnc: 2\n", "'names' has 1 entries but 'nc' is 2"),
    ("train: ../train/images\nnames: {1: a}\n", "'names' keys must be the class indices"),
    ("train: ../train/images\nnames: [a, b]\n", "no 'val' split"),
    ("train: ../train/images\nval: ../nowhere/images\nnames: [a, b]\n", "../nowhere/images not found"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_data_yaml_is_one_line(tmp_path, text, msg):
    src = make_yolo(tmp_path / "ds", val=False)
    if text is None:
        (src / "data.yaml").unlink()
    else:
        (src / "data.yaml").write_text(text)
    with pytest.raises(DataError, match=msg) as e:
        load_coco(src / "data.yaml", split="val")
    assert "\n" not in str(e.value) and "data.yaml" in str(e.value)


def test_bad_label_in_a_data_yaml_names_file_and_line(tmp_path):
    src = make_yolo(tmp_path / "ds", {"a": "0 0.5 0.5 0.1 0.1\n5 0.5 0.5 0.1 0.1\n"}, val=False)
    with pytest.raises(DataError, match=r"labels/a.txt:2: class 5 is out of range"):
        load_coco(src / "data.yaml", split="train")
    with pytest.raises(DataError, match="names its own image folders"):
        load_coco(src / "data.yaml", src / "train" / "images", split="train")


def test_run_config_takes_a_data_yaml(tmp_path):
    src = make_yolo(tmp_path / "ds")
    cfg = resolve_config(None, [f"data={src / 'data.yaml'}", "train.device=cpu"])  # the ultralytics spelling
    assert cfg.data.yaml == str(src / "data.yaml")
    assert load_split(cfg.data, "train").num_boxes == 3 and len(load_split(cfg.data, "val")) == 1
    with pytest.raises(ConfigError, match="data.yaml and data.train_json both name the dataset"):
        resolve_config(None, [f"data.yaml={src}", "data.train_json=x.json", "train.device=cpu"])
    # on the command line, data= replaces the dataset of the config file
    cfg = resolve_config(str(ROOT / "configs" / "cctv_teacher.yaml"), [f"data={src}", "train.device=cpu"])
    assert cfg.data.yaml == str(src) and cfg.data.train_json == DataConfig().train_json
    bad = tmp_path / "both.yaml"
    bad.write_text(f"data:\n  yaml: {src}\n  val_json: v.json\n")
    with pytest.raises(ConfigError, match="data.yaml and data.val_json"):
        resolve_config(str(bad), ["train.device=cpu"])
    assert DataConfig().yaml == ""


def test_cvkd_val_scores_against_a_data_yaml(tmp_path):
    from cvkd.commands.val import main

    src = make_yolo(tmp_path / "ds")
    preds, out = tmp_path / "p.json", tmp_path / "m.json"  # the exact box on the one val image (32x32: 8,8,16,16)
    preds.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [8, 8, 16, 16], "score": 0.9}]))
    assert main(["--pred", str(preds), "--gt", str(src / "data.yaml"), "--metrics-out", str(out)]) == 0
    assert json.loads(out.read_text())["map"] == pytest.approx(1.0)
    preds.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "score": 0.9}]))
    assert main(["--pred", str(preds), "--gt", str(src), "--split", "val", "--metrics-out", str(out)]) == 0
    assert json.loads(out.read_text())["map"] == pytest.approx(0.0)
