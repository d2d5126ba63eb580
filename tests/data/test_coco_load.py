"""load_coco: a valid set, class maps, and one clear one-line DataError per bad input."""
import logging

import numpy as np
import pytest
from pycocotools.coco import COCO
from tinydata import make_image, write_json

from cvkd.data import DataError, check_class_names, load_coco, to_coco_dict


def test_valid_set(tiny, caplog):
    path, img_dir, _ = tiny
    with caplog.at_level(logging.INFO, logger="cvkd"):
        data = load_coco(path, img_dir)
    assert data.class_names == ["a", "b"] and data.cat_ids == [1, 2]
    assert len(data) == 3 and data.num_boxes == 3
    r1 = data.images[0]
    assert r1.path == img_dir / "a.png" and (r1.width, r1.height) == (64, 48)
    np.testing.assert_array_equal(r1.boxes, np.array([[2, 3, 22, 13], [30, 20, 40, 40]], np.float32))
    assert r1.boxes.dtype == np.float32 and r1.labels.dtype == np.int64
    assert r1.labels.tolist() == [0, 1] and r1.ann_ids.tolist() == [1, 2]
    assert len(data.images[2].labels) == 0  # background frame kept
    assert "3 images (1 without annotations), 3 boxes" in caplog.text


def test_class_map_merge_and_yaml_int_keys(tiny):
    path, img_dir, d = tiny
    d["categories"] = [{"id": 0, "name": "0"}, {"id": 1, "name": "1"}]
    for a in d["annotations"]:
        a["category_id"] -= 1
    write_json(d, path)
    data = load_coco(path, img_dir, class_map={0: "person", "1": "person"})  # YAML gives int keys
    assert data.class_names == ["person"] and data.cat_ids == [0]
    assert data.images[0].labels.tolist() == [0, 0]
    assert data.orig_to_class == {0: 0, 1: 0}


def test_class_map_rename_keeps_category_order(tiny):
    path, img_dir, d = tiny
    d["categories"].append({"id": 3, "name": "c"})
    d["annotations"].append({"id": 4, "image_id": 3, "category_id": 3, "bbox": [1, 1, 5, 5]})
    write_json(d, path)
    data = load_coco(path, img_dir, class_map={"a": "y", "b": "x", "c": "y"})
    assert data.class_names == ["y", "x"] and data.cat_ids == [1, 2]
    assert data.orig_to_class == {1: 0, 2: 1, 3: 0}
    assert [r.labels.tolist() for r in data.images] == [[0, 1], [0], [0]]


def test_class_map_drop_is_counted(tiny, caplog):
    path, img_dir, _ = tiny
    with caplog.at_level(logging.INFO, logger="cvkd"):
        data = load_coco(path, img_dir, class_map={"a": "thing", "b": None})
    assert data.class_names == ["thing"] and data.num_boxes == 2
    assert data.orig_to_class == {1: 0, 2: None}
    assert "1 annotations dropped by class_map" in caplog.text


def test_class_map_incomplete_or_unknown(tiny):
    path, img_dir, _ = tiny
    with pytest.raises(DataError, match=r"categories \['b'\] are missing from class_map"):
        load_coco(path, img_dir, class_map={"a": "person"})
    with pytest.raises(DataError, match=r"class_map names categories not in the json: \['c'\]"):
        load_coco(path, img_dir, class_map={"a": "x", "b": "x", "c": "x"})


def _edit(d, case):
    """Apply one named corruption to the COCO dict."""
    if case == "no_images_key":
        del d["images"]
    elif case == "image_missing_width":
        del d["images"][0]["width"]
    elif case == "ann_missing_bbox":
        del d["annotations"][0]["bbox"]
    elif case == "zero_width":
        d["annotations"][1]["bbox"] = [30, 20, 0, 20]
    elif case == "negative_height":
        d["annotations"][1]["bbox"] = [30, 20, 5, -1]
    elif case == "bad_bbox":
        d["annotations"][1]["bbox"] = [30, 20, 5]
    elif case == "unknown_category":
        d["annotations"][1]["category_id"] = 7
    elif case == "unknown_image":
        d["annotations"][1]["image_id"] = 99
    elif case == "dup_image":
        d["images"][1]["id"] = 1
    elif case == "dup_ann":
        d["annotations"][2]["id"] = 1
    elif case == "empty":
        d["images"], d["annotations"] = [], []
    elif case == "size_mismatch":
        d["images"][0]["width"] = 65
    elif case == "missing_file":
        d["images"][0]["file_name"] = "nope.png"
    elif case == "dup_category":
        d["categories"].append({"id": 1, "name": "c"})
    return d


BAD = {
    "no_images_key": "missing required key(s) images",
    "image_missing_width": "images[0]: missing required key(s) width",
    "ann_missing_bbox": "annotations[0]: missing required key(s) bbox",
    "zero_width": "annotation id 2 (image id 1): bbox width and height must be positive, got w=0 h=20",
    "negative_height": "annotation id 2 (image id 1): bbox width and height must be positive",
    "bad_bbox": "annotation id 2 (image id 1): bbox must be a list of 4 numbers",
    "unknown_category": "annotation id 2: category_id 7 is not in 'categories'",
    "unknown_image": "annotation id 2: image_id 99 is not in 'images'",
    "dup_image": "duplicate image id 1",
    "dup_ann": "duplicate annotation id 1",
    "empty": "the dataset has no images",
    "size_mismatch": "image id 1: json says 65x48 but the file",
    "missing_file": "image id 1: image file not found",
    "dup_category": "duplicate category id 1",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_error(tiny, case):
    path, img_dir, d = tiny
    write_json(_edit(d, case), path)
    with pytest.raises(DataError) as e:
        load_coco(path, img_dir)
    msg = str(e.value)
    assert BAD[case] in msg and str(path) in msg and "\n" not in msg


def test_malformed_json_names_line_and_column(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n  "images": [\n    {"id": 1,, }\n  ]\n}\n')
    with pytest.raises(DataError, match=r"bad.json: invalid JSON at line 3 column 14"):
        load_coco(p, tmp_path)


def test_corrupt_images(tiny):
    path, img_dir, d = tiny
    (img_dir / "a.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"image id 1: unreadable or corrupt image"):
        load_coco(path, img_dir)
    make_image(img_dir / "a.png", 64, 48)
    full = (img_dir / "b.png").read_bytes()
    (img_dir / "b.png").write_bytes(full[: len(full) // 2])  # truncated PNG: CRC/verify fails
    with pytest.raises(DataError, match=r"image id 2: unreadable or corrupt image"):
        load_coco(path, img_dir)
    make_image(img_dir / "b.png", 48, 64)
    jpg = make_image(img_dir / "c.jpg", 40, 40)
    jpg.write_bytes(jpg.read_bytes()[:-300])  # truncated JPEG: header fine, no end marker
    d["images"][2]["file_name"] = "c.jpg"
    write_json(d, path)
    with pytest.raises(DataError, match=r"image id 3: corrupt image .*truncated JPEG"):
        load_coco(path, img_dir)
    make_image(img_dir / "c.jpg", 40, 40)
    assert len(load_coco(path, img_dir)) == 3  # repaired: loads


def test_box_outside_clip_and_reject(tiny, caplog):
    path, img_dir, d = tiny
    d["annotations"][0]["bbox"] = [-4, 3, 20, 10]  # left edge outside the 64x48 image
    d["annotations"][1]["bbox"] = [50, 40, 30, 30]  # right/bottom outside
    d["annotations"].append({"id": 9, "image_id": 1, "category_id": 1, "bbox": [70, 0, 5, 5]})  # fully outside
    write_json(d, path)
    with caplog.at_level(logging.INFO, logger="cvkd"):
        data = load_coco(path, img_dir, box_policy="clip")
    np.testing.assert_allclose(data.images[0].bbox, [[0, 3, 16, 10], [50, 40, 14, 8]])
    assert data.images[0].areas.tolist() == [160.0, 112.0]  # area shrinks with the clipped box
    assert "2 clipped to the image, 1 dropped (entirely outside)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cvkd"):
        data = load_coco(path, img_dir, box_policy="reject")
    assert data.images[0].ann_ids.tolist() == [] and "3 rejected" in caplog.text
    with pytest.raises(DataError, match="box_policy"):
        load_coco(path, img_dir, box_policy="ignore")


def test_tiny_float_excess_is_not_counted(tiny, caplog):
    path, img_dir, d = tiny
    d["annotations"][0]["bbox"] = [2, 3, 62.000001, 10]  # float noise past the right edge
    write_json(d, path)
    with caplog.at_level(logging.INFO, logger="cvkd"):
        data = load_coco(path, img_dir)
    assert data.images[0].boxes[0, 2] == 64.0 and "clipped" not in caplog.text


def test_crowd_and_area_kept_and_coco_dict(tiny):
    path, img_dir, d = tiny
    d["annotations"][2].update(iscrowd=1, area=77.5)
    write_json(d, path)
    data = load_coco(path, img_dir)
    r2 = data.images[1]
    assert r2.iscrowd.tolist() == [True] and r2.areas.tolist() == [77.5]
    gt = to_coco_dict(data)
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3]
    assert gt["annotations"][2] == {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5.0, 5.0, 30.0, 40.0],
                                    "area": 77.5, "iscrowd": 1}
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    assert len(coco.getAnnIds()) == 3


def test_check_images_off_and_default_image_dir(tiny):
    path, img_dir, d = tiny
    d["images"][0]["file_name"] = "missing.png"
    write_json(d, path)
    data = load_coco(path, check_images=False)
    assert data.image_dir == path.parent and data.images[0].path == path.parent / "missing.png"


def test_check_class_names():
    check_class_names(["person"], ["person"], "x")
    with pytest.raises(DataError, match=r"^run.yaml: class map does not match the model: data classes \['0', '1'\]"):
        check_class_names(["0", "1"], ["person"], "run.yaml")


def test_corrupt_image_is_one_line_even_after_ultralytics_import(tmp_path):
    """ultralytics replaces PIL's Image.open with a HEIF-plugin loader; a corrupt file must still be a DataError."""
    import ultralytics.utils.patches  # noqa: F401

    from cvkd.data import DataError
    from cvkd.data.images import check_image

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg.*UnidentifiedImageError"):
        check_image(bad, None, "set.json: image id 1")
