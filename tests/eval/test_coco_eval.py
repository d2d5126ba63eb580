"""COCO evaluation: hand-computed answers, exact agreement with pycocotools, class maps, crowd, the runner, writers."""
import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tinydata import write_json

from cvkd.data import DataError, letterbox_boxes, load_coco
from cvkd.eval import (
    append_csv,
    csv_row,
    detections_to_coco,
    evaluate,
    score_predictions,
    write_metrics,
    write_predictions,
)

ROOT = Path(__file__).resolve().parents[2]
EPS = 1e-12  # pycocotools sums/means 101-point precision arrays: hand values hold to float rounding
SUMMARY = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100")


def gt_file(tmp_path, boxes, cats=("a",), size=(100, 100), crowd=()):
    """One image per entry of ``boxes`` (a list of (category index, [x, y, w, h]) lists)."""
    d = {"images": [], "annotations": [], "categories": [{"id": k + 1, "name": n} for k, n in enumerate(cats)]}
    for i, anns in enumerate(boxes, 1):
        d["images"].append({"id": i, "file_name": f"{i}.jpg", "width": size[0], "height": size[1]})
        for k, b in anns:
            aid = len(d["annotations"]) + 1
            d["annotations"].append({"id": aid, "image_id": i, "category_id": k + 1, "bbox": b,
                                     "area": b[2] * b[3], "iscrowd": int(aid in crowd)})
    return write_json(d, tmp_path / "gt.json")


def det(image_id, cat_id, bbox, score=0.9):
    return {"image_id": image_id, "category_id": cat_id, "bbox": bbox, "score": score}


def test_perfect_predictions_score_one(tiny):
    path, img_dir, d = tiny
    preds = [det(a["image_id"], a["category_id"], a["bbox"]) for a in d["annotations"]]
    m = score_predictions(preds, path, img_dir)
    for k in ("map", "ap50", "ap75", "ar100", "ap_small", "ap_medium"):  # areas 200, 200 (small), 1200 (medium)
        assert m[k] == pytest.approx(1.0, abs=EPS)
    assert m["ap_large"] == -1.0  # no ground truth of that size
    assert m["per_class"] == pytest.approx({"a": 1.0, "b": 1.0}, abs=EPS) and m["num_predictions"] == 3


def test_hand_computed_iou_between_thresholds(tmp_path):
    gt = gt_file(tmp_path, [[(0, [0, 0, 10, 10])]])
    # IoU = (10 x 7.2) / (10 x 10) = 0.72: a match at thresholds .50 .55 .60 .65 .70 (5 of 10), AP 1 there, 0 above
    m = score_predictions([det(1, 1, [0, 0, 10, 7.2])], gt)
    assert [m[k] for k in ("map", "ap50", "ap75", "ar100")] == pytest.approx([0.5, 1.0, 0.0, 0.5], abs=EPS)
    # IoU = 0.88 (10 x 8.8): passes .50 ... .85 (8 of 10)
    assert score_predictions([det(1, 1, [0, 0, 10, 8.8])], gt)["map"] == pytest.approx(0.8, abs=EPS)


def test_hand_computed_half_recall(tmp_path):
    gt = gt_file(tmp_path, [[(0, [0, 0, 10, 10]), (0, [50, 50, 20, 20])]])
    m = score_predictions([det(1, 1, [0, 0, 10, 10])], gt)
    # recall 0.5 with precision 1: 51 of the 101 recall points (0, .01, ..., .50) have precision 1
    assert m["map"] == pytest.approx(51 / 101, abs=EPS) and m["ar100"] == 0.5
    # a higher-scored false positive first: precision 1/2 at recall .5 -> AP = 51 * 0.5 / 101
    m = score_predictions([det(1, 1, [0, 0, 10, 10], 0.5), det(1, 1, [80, 0, 10, 10], 0.9)], gt)
    assert m["map"] == pytest.approx(51 * 0.5 / 101, abs=EPS)


def _random_set(tmp_path, rng):
    """20 images, 3 categories, boxes of all sizes, some crowd; noisy detections with random scores."""
    boxes, preds = [], []
    for i in range(1, 21):
        anns = []
        for _ in range(rng.integers(0, 6)):
            w, h = rng.uniform(5, 300, 2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            anns.append((int(rng.integers(0, 3)), [round(float(v), 2) for v in (x, y, w, h)]))
        boxes.append(anns)
        for k, (x, y, w, h) in anns:
            if rng.random() < 0.8:
                jit = rng.normal(0, 0.08, 4) * [w, h, w, h]
                preds.append(det(i, k + 1 if rng.random() < 0.9 else 1 + (k + 1) % 3,
                                 [float(v) for v in np.array([x, y, w, h]) + jit], float(rng.random())))
        for _ in range(rng.integers(0, 3)):
            preds.append(det(i, int(rng.integers(1, 4)), [float(v) for v in rng.uniform(0, 200, 4) + [0, 0, 5, 5]],
                             float(rng.random())))
    gt = gt_file(tmp_path, boxes, cats=("a", "b", "c"), size=(640, 480), crowd={3, 17})
    return gt, write_json(preds, tmp_path / "preds.json")


def _direct(gt, preds):
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO(str(gt))
        ev = COCOeval(c, c.loadRes(str(preds)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_pycocotools_exactly(tmp_path, seed):
    gt, preds = _random_set(tmp_path, np.random.default_rng(seed))
    ev = _direct(gt, preds)
    m = score_predictions(preds, gt)
    assert [m[k] for k in SUMMARY] == [float(v) for v in ev.stats[:9]]
    assert 0.05 < m["map"] < 0.95  # a non-trivial case
    p = ev.eval["precision"][:, :, 1, 0, -1]  # class "b"
    assert m["per_class"]["b"] == float(np.mean(p[p > -1]))


def test_class_merge_applies_to_ground_truth_and_predictions(tmp_path):
    gt = gt_file(tmp_path, [[(0, [0, 0, 10, 10]), (1, [30, 30, 20, 20])]], cats=("0", "1"))
    preds = [det(1, 2, [0, 0, 10, 10]), det(1, 1, [30, 30, 20, 20])]  # right boxes, swapped classes
    assert score_predictions(preds, gt)["map"] == 0.0
    merged = load_coco(gt, class_map={"0": "person", "1": "person"}, check_images=False)
    m = score_predictions(preds, merged)
    assert m["map"] == pytest.approx(1.0, abs=EPS) and m["per_class"] == pytest.approx({"person": 1.0}, abs=EPS)
    dropped = load_coco(gt, class_map={"0": "person", "1": None}, check_images=False)
    m = score_predictions(preds, dropped)  # the class-1 box is gone from GT; so is the detection with category 1
    assert m["num_predictions"] == 1 and m["ar100"] == 0.0


def test_crowd_is_respected(tmp_path):
    boxes = [[(0, [0, 0, 10, 10]), (0, [40, 40, 50, 50])]]
    preds = [det(1, 1, [0, 0, 10, 10], 0.5), det(1, 1, [45, 45, 20, 20], 0.9)]  # 2nd lies inside the crowd region
    assert score_predictions(preds, gt_file(tmp_path, boxes, crowd={2}))["map"] == pytest.approx(1.0, abs=EPS)
    assert score_predictions(preds, gt_file(tmp_path, boxes))["map"] < 0.5  # same boxes, no crowd flag


def test_bad_predictions_one_line(tmp_path):
    gt = gt_file(tmp_path, [[(0, [0, 0, 10, 10])]])
    cases = [([det(5, 1, [0, 0, 1, 1])], "refers to image id 5, not in the ground truth"),
             ([det(1, 9, [0, 0, 1, 1])], "category_id 9, not a ground-truth category"),
             ([{"image_id": 1, "bbox": [0, 0, 1, 1]}], "needs image_id, category_id, bbox and score"),
             ([det(1, 1, [0, 0, 1])], "bbox must be [x, y, w, h]"),
             ({"not": "a list"}, "expected a list")]
    for preds, msg in cases:
        with pytest.raises(DataError) as e:
            score_predictions(write_json(preds, tmp_path / "p.json"), gt)
        assert msg in str(e.value) and "p.json" in str(e.value) and "\n" not in str(e.value)


def test_empty_predictions_score_zero(tmp_path):
    m = score_predictions([], gt_file(tmp_path, [[(0, [0, 0, 10, 10])]]))
    assert m["map"] == 0.0 and m["per_class"] == {"a": 0.0} and m["num_predictions"] == 0


def test_evaluate_maps_predictions_back(tiny):
    path, img_dir, _ = tiny
    data = load_coco(path, img_dir)
    expected = []  # letterboxed GT of each image, in dataset order
    for r in data.images:
        s = 64 / max(r.width, r.height)
        px, py = round((64 - round(r.width * s)) / 2 - 0.1), round((64 - round(r.height * s)) / 2 - 0.1)
        expected.append((torch.tensor(letterbox_boxes(r.boxes, s, (px, py))), torch.tensor(r.labels)))
    shapes = []

    def predict(img):
        shapes.append((tuple(img.shape), img.dtype, float(img.min()), float(img.max())))
        out = [expected.pop(0) for _ in range(img.shape[0])]
        return [{"boxes": b, "scores": torch.full((len(b),), 0.8), "labels": k} for b, k in out]

    preds = []
    m = evaluate(predict, data, imgsz=64, batch_size=2, quiet=True, predictions_out=preds)
    assert m["map"] == pytest.approx(1.0, abs=EPS) and len(preds) == 3
    assert shapes[0][:2] == ((2, 3, 64, 64), torch.float32) and shapes[1][0] == (1, 3, 64, 64)
    assert 0.0 <= min(s[2] for s in shapes) and max(s[3] for s in shapes) <= 1.0
    assert preds[2]["image_id"] == 2 and preds[2]["category_id"] == 1
    np.testing.assert_allclose(preds[2]["bbox"], [5, 5, 30, 40], atol=1e-3)
    none = evaluate(lambda img: [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
                                 for _ in range(img.shape[0])], data, imgsz=64, quiet=True)
    assert none["map"] == 0.0


def test_detections_clipped_to_the_image_and_class_ids():
    d = {"boxes": torch.tensor([[-8.0, 4.0, 40.0, 90.0]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([1])}
    out = detections_to_coco(d, 7, (0.5, 4, 10), (150, 60), cat_ids=[3, 9])  # original image 60 x 150
    assert out == [{"image_id": 7, "category_id": 9, "bbox": [0.0, 0.0, 60.0, 150.0], "score": 0.7}]
    with pytest.raises(DataError, match="class index 2 but the data has 2 classes"):
        detections_to_coco({**d, "labels": torch.tensor([2])}, 7, (0.5, 4, 10), (150, 60), cat_ids=[3, 9])


def test_writers(tmp_path):
    preds = [det(1, 1, [0.5, 1, 2, 3])]
    assert json.loads(write_predictions(preds, tmp_path / "p.json").read_text()) == preds
    m = {"map": 0.5, "ap50": 1.0, "ap75": 0.0, "per_class": {"a": 0.5}, "num_images": 1, "num_predictions": 1}
    assert json.loads(write_metrics(m, tmp_path / "m.json").read_text()) == m
    csv = tmp_path / "all.csv"
    append_csv(csv, csv_row(m, name="run1"))
    append_csv(csv, csv_row(m, name="run2"))
    lines = csv.read_text().splitlines()
    assert lines[0] == "name,map,ap50,ap75,num_images,num_predictions" and len(lines) == 3
    assert lines[2].startswith("run2,0.50000,1.00000,0.00000")
    with pytest.raises(DataError, match="existing CSV columns"):
        append_csv(csv, {"other": 1})


def _tool():
    spec = importlib.util.spec_from_file_location("tool_evaluate", ROOT / "tools" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_evaluate_tool(tiny, tmp_path, capsys):
    path, img_dir, d = tiny
    preds = write_json([det(a["image_id"], a["category_id"], a["bbox"]) for a in d["annotations"]], tmp_path / "p.json")
    tool = _tool()
    args = ["--pred", str(preds), "--gt", str(path), "--images", str(img_dir), "--csv", str(tmp_path / "r.csv"),
            "--metrics-out", str(tmp_path / "m.json")]
    assert tool.main(args) == 0
    out = capsys.readouterr().out
    assert "mAP@[.5:.95]    1.0000" in out and (tmp_path / "r.csv").is_file()
    assert json.loads((tmp_path / "m.json").read_text())["per_class"] == pytest.approx({"a": 1.0, "b": 1.0}, abs=EPS)
    merged = tool.main(["--pred", str(preds), "--gt", str(path), "--class-map", '{"a": x, "b": x}'])
    assert merged == 0 and "x " in capsys.readouterr().out
    for bad, msg in [(["--pred", str(preds), "--gt", str(tmp_path / "none.json")], "none.json: file not found"),
                     (["--gt", str(path)], "exactly one of --pred"),
                     (["--weights", str(tmp_path / "no.pt"), "--gt", str(path), "--images", str(img_dir)], "no.pt")]:
        assert tool.main(bad) == 2
        lines = capsys.readouterr().err.strip().splitlines()  # progress/info lines may come first
        assert lines[-1].startswith("error: ") and msg in lines[-1]
        assert sum(line.startswith("error: ") for line in lines) == 1 and not any("Traceback" in x for x in lines)


def test_evaluate_tool_runs_a_checkpoint(tiny, tmp_path, capsys):
    models = pytest.importorskip("cvkd.models")
    checkpoint = pytest.importorskip("cvkd.checkpoint")
    path, img_dir, _ = tiny
    model = models.build_detector("yolov8n.yaml", ["x"], width=0.0625, depth=0.33)
    meta = {"family": "yolo", "arch": model.arch_spec(), "class_names": ["x"]}
    checkpoint.save_checkpoint(tmp_path / "m.pt", "detector", model.model.state_dict(), meta)
    args = ["--weights", str(tmp_path / "m.pt"), "--gt", str(path), "--images", str(img_dir), "--imgsz", "64",
            "--device", "cpu", "--save-pred", str(tmp_path / "p.json")]
    tool = _tool()
    assert tool.main(args + ["--class-map", '{"a": x, "b": x}']) == 0
    assert "3 images," in capsys.readouterr().out
    preds = json.loads((tmp_path / "p.json").read_text())  # an untrained model: whatever it found, valid entries
    assert all(p["category_id"] == 1 and p["image_id"] in (1, 2, 3) and len(p["bbox"]) == 4 for p in preds)
    assert tool.main(args) == 2  # classes a, b vs the model's x
    assert "class map does not match the model" in capsys.readouterr().err
