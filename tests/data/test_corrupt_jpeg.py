"""A JPEG with corrupt data in the middle (valid header, end marker present) decodes without an error into smeared
pixels; only libjpeg's warning tells. It stops the load in one line, or with data.bad_images=skip is left out."""
import json
import logging
import shutil
from pathlib import Path

import pytest

from cvkd.data import DataError, load_coco
from cvkd.data.images import jpeg_decoder_warning

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "datasets" / "cctv_mini"


def _set_with_one_corrupt_jpeg(tmp: Path) -> tuple[Path, Path, str]:
    d = json.loads((MINI / "val.json").read_text())
    images = d["images"][:2]
    ids = {im["id"] for im in images}
    d = {"images": images, "annotations": [a for a in d["annotations"] if a["image_id"] in ids],
         "categories": d["categories"]}
    img_dir = tmp / "images"
    img_dir.mkdir()
    for im in images:
        shutil.copy(MINI / "images" / "val" / im["file_name"], img_dir / im["file_name"])
    bad = img_dir / images[0]["file_name"]
    data = bad.read_bytes()
    mid = len(data) // 2
    bad.write_bytes(data[:mid] + bytes(len(data) // 4) + data[mid + len(data) // 4:])  # zeroed scan data, EOI kept
    (tmp / "val.json").write_text(json.dumps(d))
    return tmp / "val.json", img_dir, images[0]["file_name"]


def test_decoder_warning_detects_mid_file_corruption(tmp_path):
    _, img_dir, bad = _set_with_one_corrupt_jpeg(tmp_path)
    assert "Corrupt JPEG data" in jpeg_decoder_warning(img_dir / bad)
    good = next(p for p in img_dir.iterdir() if p.name != bad)
    assert jpeg_decoder_warning(good) is None


def test_stop_names_the_file_in_one_line(tmp_path):
    js, img_dir, bad = _set_with_one_corrupt_jpeg(tmp_path)
    with pytest.raises(DataError) as e:
        load_coco(js, img_dir)
    msg = str(e.value)
    assert "\n" not in msg and bad in msg and "Corrupt JPEG" in msg and "data.bad_images=skip" in msg, msg


def test_skip_leaves_out_the_image_and_its_boxes(tmp_path, caplog):
    js, img_dir, bad = _set_with_one_corrupt_jpeg(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cvkd"):
        data = load_coco(js, img_dir, bad_images="skip")
    assert [r.file_name for r in data.images] != [] and bad not in [r.file_name for r in data.images]
    assert len(data.images) == 1
    assert any("left out 1 bad image" in r.message and bad in r.message for r in caplog.records)
