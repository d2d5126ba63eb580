"""Real COCO json (coco128: 80 categories, crowd, background images): known answers, pycocotools parity."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tinydata import SHARED

from cvkd.data import load_coco
from cvkd.eval import score_predictions

ROOT = SHARED / "coco128"
GT = ROOT / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def coco128():
    if not GT.is_file():
        pytest.skip(f"coco128 not found at {ROOT}")
    return json.loads(GT.read_text())


def test_ground_truth_as_predictions_scores_one(coco128):
    data = load_coco(GT, ROOT / "train2017")  # validates all 128 images too
    assert len(data) == 128 and len(data.class_names) == 80 and data.num_boxes == 939
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in coco128["annotations"] if not a["iscrowd"]]
    m = score_predictions(preds, data)
    for k in ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100"):
        assert m[k] == pytest.approx(1.0, abs=1e-12)
    present = {a["category_id"] for a in coco128["annotations"]}
    assert sum(ap == -1.0 for ap in m["per_class"].values()) == 80 - len(present)


def test_jittered_predictions_equal_pycocotools(coco128, tmp_path):
    rng = np.random.default_rng(0)
    preds = []
    for a in coco128["annotations"]:
        x, y, w, h = a["bbox"]
        box = (np.array([x, y, w, h]) + rng.normal(0, 0.1, 4) * [w, h, w, h]).round(2)
        preds.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box.tolist(),
                      "score": round(float(rng.random()), 4)})
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(preds))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(GT))
        ev = COCOeval(gt, gt.loadRes(str(path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    m = score_predictions(path, GT)
    keys = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100")
    assert [m[k] for k in keys] == [float(v) for v in ev.stats[:9]]
    assert 0.1 < m["map"] < 0.9
