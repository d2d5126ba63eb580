"""Converters: YOLO txt, PASCAL VOC xml, Penn-Fudan text -> COCO json; COCO -> YOLO; splits; the CLI."""
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from tinydata import SHARED, make_image

from cvkd.data import DataError, load_coco
from cvkd.data.convert import (
    coco_to_yolo,
    convert_yolo,
    pennfudan_to_coco,
    split_coco,
    voc_to_coco,
    yolo_to_coco,
)

ROOT = Path(__file__).resolve().parents[2]
LABELS = {  # image stem -> label text (normalised class cx cy w h)
    "f1_jpg.rf.aa": "0 0.5 0.5 0.25 0.5\n1 0.1 0.2 0.1 0.2\n",
    "f2_jpg.rf.bb": "1 0.3 0.7 0.2 0.1",  # no trailing newline (Roboflow)
    "f3_jpg.rf.cc": None,  # no label file: background
}


def make_yolo(root: Path, labels=LABELS, val=True) -> Path:
    """A Roboflow-style export: data.yaml with ../train/images paths, 64x32 and 40x50 images."""
    for i, (stem, text) in enumerate(labels.items()):
        make_image(root / "train" / "images" / f"{stem}.jpg", 64 if i % 2 == 0 else 40, 32 if i % 2 == 0 else 50)
        if text is not None:
            (root / "train" / "labels").mkdir(parents=True, exist_ok=True)
            (root / "train" / "labels" / f"{stem}.txt").write_text(text)
    if val:
        make_image(root / "valid" / "images" / "v.png", 32, 32)
        (root / "valid" / "labels").mkdir(parents=True)
        (root / "valid" / "labels" / "v.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['0', '1']\n")
    return root


def test_yolo_to_coco_boxes_sizes_and_counts(tmp_path, caplog):
    src = make_yolo(tmp_path / "ds")
    with caplog.at_level(logging.INFO, logger="cvkd"):
        out = convert_yolo(src, tmp_path / "out")
    assert set(out) == {"train", "val"}
    tr_json, tr_root = out["train"]
    assert tr_root == (src / "train" / "images").resolve()
    d = json.loads(tr_json.read_text())
    assert [(im["file_name"], im["width"], im["height"]) for im in d["images"]] == [
        ("f1_jpg.rf.aa.jpg", 64, 32), ("f2_jpg.rf.bb.jpg", 40, 50), ("f3_jpg.rf.cc.jpg", 64, 32)]
    assert d["categories"] == [{"id": 1, "name": "0"}, {"id": 2, "name": "1"}]
    boxes = [(a["image_id"], a["category_id"], a["bbox"]) for a in d["annotations"]]
    assert boxes[0] == (1, 1, [24.0, 8.0, 16.0, 16.0])
    np.testing.assert_allclose(boxes[1][2], [3.2, 3.2, 6.4, 6.4])
    np.testing.assert_allclose(boxes[2][2], [8.0, 32.5, 8.0, 5.0])
    assert "1 images without a label file" in caplog.text
    COCO(str(tr_json))  # pycocotools loads it
    assert load_coco(tr_json, tr_root).num_boxes == 3


def test_yolo_roundtrip(tmp_path):
    src = make_yolo(tmp_path / "ds")
    (tr_json, _), _ = convert_yolo(src, tmp_path / "out").values()
    names = coco_to_yolo(tr_json, tmp_path / "back")
    assert names == ["0", "1"]
    for stem, text in LABELS.items():
        back = (tmp_path / "back" / f"{stem}.txt").read_text().split()
        orig = (text or "").split()
        assert len(back) == len(orig)
        np.testing.assert_allclose(np.array(back, float), np.array(orig, float), rtol=1e-6, atol=0)


def test_coco_to_yolo_skips_crowd_and_validates(tiny, tmp_path):
    path, img_dir, d = tiny
    d["annotations"][1]["iscrowd"] = 1
    path.write_text(json.dumps(d))
    assert coco_to_yolo(path, tmp_path / "y") == ["a", "b"]
    assert (tmp_path / "y" / "a.txt").read_text() == "0 0.1875 0.16666666666666666 0.3125 0.20833333333333334\n"
    assert (tmp_path / "y" / "c.txt").read_text() == ""  # background image: empty label file
    d["annotations"][0]["category_id"] = 5
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match="category_id 5 is not in 'categories'"):
        coco_to_yolo(path, tmp_path / "y")


@pytest.mark.parametrize("line,msg", [
    ("0 0.5 0.5 0.2", "got 4 fields"),
    ("0 0.5 zero 0.2 0.2", "not a number"),
    ("2 0.5 0.5 0.2 0.2", "class 2 is out of range"),
    ("0 0.5 0.5 0.0 0.2", "width and height must be positive"),
    ("0.5 0.5 0.5 0.2 0.2", "class must be an integer"),
    ("0 1.3 0.5 0.2 0.2", "coordinates must lie in 0..1"),
    ("0 0.5 -0.2 0.2 0.2", "coordinates must lie in 0..1"),
    ("0 320 240 64 128", "look like pixel coordinates"),
])
def test_yolo_malformed_line_names_file_and_line(tmp_path, line, msg):
    src = make_yolo(tmp_path / "ds", {"a": f"0 0.5 0.5 0.1 0.1\n\n{line}\n"}, val=False)
    with pytest.raises(DataError) as e:
        convert_yolo(src, tmp_path / "out")
    assert "a.txt:3: " in str(e.value) and msg in str(e.value)


def test_yolo_label_with_utf8_bom_and_border_rounding(tmp_path):
    """A BOM (Windows editors) is not part of the class field; 1.005 at the border is rounding, clipped later."""
    src = make_yolo(tmp_path / "ds", {"a": "\ufeff0 0.5 0.5 0.25 0.5\n1 0.9 0.5 0.205 0.2\n"}, val=False)
    d = yolo_to_coco(src / "train" / "images", src / "train" / "labels", ["0", "1"])
    assert [a["category_id"] for a in d["annotations"]] == [1, 2]
    np.testing.assert_allclose(d["annotations"][0]["bbox"], [24, 8, 16, 16])


def test_yolo_polygon_line_becomes_its_box(tmp_path):
    src = make_yolo(tmp_path / "ds", {"a": "1 0.25 0.25 0.75 0.25 0.5 0.75\n"}, val=False)
    d = yolo_to_coco(src / "train" / "images", src / "train" / "labels", ["0", "1"])
    np.testing.assert_allclose(d["annotations"][0]["bbox"], [16, 8, 32, 16])


def test_split_deterministic_and_disjoint(tmp_path):
    d = {"images": [{"id": i} for i in range(1, 21)], "annotations": [{"id": i, "image_id": i} for i in range(1, 21)],
         "categories": []}
    tr, va = split_coco(d, 0.2, seed=0)
    tr2, va2 = split_coco(d, 0.2, seed=0)
    assert va == va2 and len(va["images"]) == 4 and len(tr["images"]) == 16
    assert {a["image_id"] for a in va["annotations"]} == {im["id"] for im in va["images"]}
    assert not {im["id"] for im in tr["images"]} & {im["id"] for im in va["images"]}
    assert split_coco(d, 0.2, seed=1)[1] != va
    with pytest.raises(DataError):
        split_coco(d, 1.0)


def test_yolo_val_fraction_for_a_set_without_val(tmp_path):
    src = make_yolo(tmp_path / "ds", val=False)
    out = convert_yolo(src, tmp_path / "out", val_fraction=0.34, seed=0)
    n = [len(json.loads(out[s][0].read_text())["images"]) for s in ("train", "val")]
    assert n == [2, 1]
    with pytest.raises(DataError, match="already has a val split"):
        convert_yolo(make_yolo(tmp_path / "ds2"), tmp_path / "out2", val_fraction=0.5)


VOC_XML = """<annotation><filename>{fn}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult>
  <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>
<object><name>cat</name><difficult>1</difficult>
  <bndbox><xmin>5.5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>25</ymax></bndbox></object>
</annotation>"""


def make_voc(root: Path, w=40, h=30) -> tuple[Path, Path]:
    make_image(root / "JPEGImages" / "im1.jpg", 40, 30)
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "im1.xml").write_text(VOC_XML.format(fn="im1.jpg", w=w, h=h))
    return root / "Annotations", root / "JPEGImages"


def test_voc_to_coco_exact_boxes(tmp_path):
    xml, images = make_voc(tmp_path)
    d = voc_to_coco(xml, images)
    assert d["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert d["images"] == [{"id": 1, "file_name": "im1.jpg", "width": 40, "height": 30}]
    assert [(a["category_id"], a["bbox"], a["iscrowd"]) for a in d["annotations"]] == [
        (2, [0.0, 1.0, 10.0, 19.0], 0), (1, [4.5, 5.0, 25.5, 20.0], 0)]
    as_is = voc_to_coco(xml, images, class_names=["dog", "cat"], one_based=False)
    assert [(a["category_id"], a["bbox"]) for a in as_is["annotations"]] == [
        (1, [1.0, 2.0, 9.0, 18.0]), (2, [5.5, 6.0, 24.5, 19.0])]
    assert voc_to_coco(xml, images, difficult="crowd")["annotations"][1]["iscrowd"] == 1
    assert len(voc_to_coco(xml, images, difficult="drop")["annotations"]) == 1
    p = tmp_path / "voc.json"
    p.write_text(json.dumps(d))
    COCO(str(p))


def test_voc_errors(tmp_path):
    xml, images = make_voc(tmp_path, w=41)
    with pytest.raises(DataError, match=r"im1.xml: <size> says 41x30 but the image im1.jpg is 40x30"):
        voc_to_coco(xml, images)
    (xml / "im1.xml").write_text(VOC_XML.format(fn="im1.jpg", w=40, h=30))
    with pytest.raises(DataError, match=r"object names \['cat'\] are not in the class list"):
        voc_to_coco(xml, images, class_names=["dog"])
    (xml / "im1.xml").write_text("<annotation><filename>im1.jpg</filename>\n<object></annotation>")
    with pytest.raises(DataError, match=r"im1.xml: invalid XML at line 2"):
        voc_to_coco(xml, images)


PF_TEXT = """# Compatible with PASCAL Annotation Version 1.00
Image filename : "PennFudanPed/PNGImages/P1.png"
Image size (X x Y x C) : 50 x 40 x 3
Objects with ground truth : {n} {{ "PASpersonWalking" "PASpersonStanding" }}
Bounding box for object 1 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (1, 1) - (50, 40)
Bounding box for object 2 "PASpersonStanding" (Xmin, Ymin) - (Xmax, Ymax) : (10, 5) - (20, 30)
"""


def test_pennfudan_parser_synthetic(tmp_path):
    make_image(tmp_path / "PNGImages" / "P1.png", 50, 40)
    (tmp_path / "Annotation").mkdir()
    (tmp_path / "Annotation" / "P1.txt").write_text(PF_TEXT.format(n=2))
    d = pennfudan_to_coco(tmp_path)
    assert [a["bbox"] for a in d["annotations"]] == [[0.0, 0.0, 50.0, 40.0], [9.0, 4.0, 11.0, 26.0]]  # whole image
    assert d["categories"] == [{"id": 1, "name": "person"}]
    raw = pennfudan_to_coco(tmp_path, raw_labels=True)
    assert [c["name"] for c in raw["categories"]] == ["PASpersonWalking", "PASpersonStanding"]
    (tmp_path / "Annotation" / "P1.txt").write_text(PF_TEXT.format(n=3))
    with pytest.raises(DataError, match="says 3 objects but has 2 bounding box lines"):
        pennfudan_to_coco(tmp_path)


def test_pennfudan_real(tmp_path):
    root = SHARED / "pennfudan"
    if not (root / "Annotation").is_dir():
        pytest.skip(f"Penn-Fudan not found at {root} (research-only licence: never copied into the repo)")
    d = pennfudan_to_coco(root)
    assert len(d["images"]) == 170 and len(d["annotations"]) == 423
    first = d["images"][0]
    assert (first["file_name"], first["width"], first["height"]) == ("FudanPed00001.png", 559, 536)
    assert d["annotations"][0]["bbox"] == [159.0, 181.0, 143.0, 250.0]  # (160, 182) - (302, 431)
    tr, va = split_coco(d, 0.2, seed=0)
    assert len(va["images"]) == 34 and len(tr["annotations"]) + len(va["annotations"]) == 423
    p = tmp_path / "pf.json"
    p.write_text(json.dumps(va))
    COCO(str(p))
    assert load_coco(p, root / "PNGImages").num_boxes == len(va["annotations"])


def test_cctv_people_real(tmp_path):
    root = SHARED / "cctv_people"
    if not (root / "data.yaml").is_file():
        pytest.skip(f"cctv_people not found at {root}")
    out = convert_yolo(root, tmp_path)
    val = load_coco(out["val"][0], out["val"][1], class_map={"0": "person", "1": "person"}, check_images=False)
    assert len(val) == 44 and val.num_boxes == 634 and val.class_names == ["person"]
    assert (len(load_coco(out["train"][0], check_images=False)), out["train"][1].name) == (516, "images")


def load_tool(name: str):
    """Import tools/<name>.py as a module (in-process: no interpreter start-up per call)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_help_and_one_line_errors(tmp_path, capsys):
    tool = load_tool("convert")
    with pytest.raises(SystemExit) as e:
        tool.main(["voc", "--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for opt in ("--xml", "--images", "--classes", "--difficult", "--coords", "--val-fraction", "--seed"):
        assert opt in help_text
    src = make_yolo(tmp_path / "ds", {"a": "0 0.5 0.5\n"}, val=False)
    assert tool.main(["yolo", str(src), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # log lines (e.g. a missing val split) may come first
    assert lines[-1].startswith("error: ") and "a.txt:1:" in lines[-1]
    assert sum(x.startswith("error: ") for x in lines) == 1 and not any("Traceback" in x for x in lines)
    assert tool.main(["yolo", str(make_yolo(tmp_path / "ok")), "--out", str(tmp_path / "o2")]) == 0
    assert "image root:" in capsys.readouterr().out and (tmp_path / "o2" / "val.json").is_file()
