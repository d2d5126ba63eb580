"""Paired gains with intervals: the re-weighted accumulation against pycocotools, and intervals on constructed cases
whose answer is known."""
import math

import numpy as np
import pytest

from cvkd.eval import coco_metrics
from cvkd.eval.bootstrap import combine_interval, image_matches, paired_gain, t_quantile, weighted_map


def synthetic(n_images=12, seed=0, miss=()):
    """A 2-category ground truth (1-4 boxes an image, one crowd) and noisy detections: jittered true boxes with
    random scores plus false positives; images in ``miss`` get no detections."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 200})
        for _ in range(rng.integers(1, 5)):
            x, y, w, h = rng.uniform(0, 120, 2).tolist() + rng.uniform(10, 80, 2).tolist()
            cat = int(rng.integers(1, 3))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(len(anns) == 3)})
            if i not in miss and rng.random() < 0.85:
                j = rng.normal(0, 4, 4)
                dets.append({"image_id": i, "category_id": cat, "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]],
                             "score": float(rng.uniform(0.2, 1))})
        for _ in range(0 if i in miss else rng.integers(0, 3)):
            dets.append({"image_id": i, "category_id": int(rng.integers(1, 3)),
                         "bbox": rng.uniform(0, 150, 2).tolist() + [20.0, 20.0], "score": float(rng.uniform(0, 0.9))})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    return gt, dets


def pycoco_map(gt, dets):
    return coco_metrics(gt, dets, ["a", "b"], [1, 2])["map"]


def test_unit_weights_equal_pycocotools():
    gt, dets = synthetic()
    assert weighted_map(image_matches(gt, dets)) == pytest.approx(pycoco_map(gt, dets), abs=1e-12)
    assert weighted_map(image_matches(gt, [])) == 0.0


def test_integer_weights_equal_pycocotools_on_the_duplicated_set():
    gt, dets = synthetic(seed=1)
    w = np.array([0, 2, 1, 3, 0, 1, 1, 0, 2, 1, 1, 0])
    images, anns, dup = [], [], []  # image i repeated w[i] times, as new images
    for i, k in enumerate(w, 1):
        for c in range(k):
            new = 1000 * (c + 1) + i
            images.append({**gt["images"][i - 1], "id": new})
            anns += [{**a, "image_id": new} for a in gt["annotations"] if a["image_id"] == i]
            dup += [{**d, "image_id": new} for d in dets if d["image_id"] == i]
    anns = [{**a, "id": k} for k, a in enumerate(anns, 1)]
    expected = pycoco_map({**gt, "images": images, "annotations": anns}, dup)
    assert weighted_map(image_matches(gt, dets), w) == pytest.approx(expected, abs=1e-12)


def test_interval_combines_seed_and_image_variation():
    # image variation 0: the seed part alone, t with 2 degrees of freedom (4.3027)
    lo, hi, sd_seed, sd_img = combine_interval([0.01, 0.02, 0.03], np.full(100, 0.02))
    assert sd_seed == pytest.approx(0.01) and sd_img == pytest.approx(0.0, abs=1e-15)
    assert (lo, hi) == pytest.approx((0.02 - 4.302653 * 0.01 / math.sqrt(3), 0.02 + 4.302653 * 0.01 / math.sqrt(3)))
    # both: the variances add; Welch-Satterthwaite degrees of freedom between 2 and infinity
    reps = np.array([0.01, 0.03] * 50)
    lo, hi, _, sd_img = combine_interval([0.01, 0.02, 0.03], reps)
    v_s, v_i = 0.01 ** 2 / 3, sd_img ** 2
    df = 2 * (v_s + v_i) ** 2 / v_s ** 2
    assert hi - 0.02 == pytest.approx(t_quantile(df) * math.sqrt(v_s + v_i), rel=1e-9)
    assert 1.96 < t_quantile(df) < 4.30
    # one seed: the image part with the normal quantile
    lo, hi, sd_seed, _ = combine_interval([0.05], reps)
    assert math.isnan(sd_seed) and hi - 0.05 == pytest.approx(1.959964 * sd_img, rel=1e-5)


def test_identical_models_gain_nothing():
    gt, dets = synthetic()
    m = image_matches(gt, dets)
    g = paired_gain([(m, m), (m, m), (m, m)], n_boot=200)
    assert g.gain == 0.0 and g.lo == 0.0 and g.hi == 0.0 and not g.significant


def perfect_and_missing(n: int, missed: int):
    """One box an image; A finds every box exactly, B misses ``missed`` images."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in range(1, n + 1)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}
            for i in range(1, n + 1)]
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    perfect = [{"image_id": i, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9} for i in range(1, n + 1)]
    return image_matches(gt, perfect), image_matches(gt, perfect[missed:])


def test_known_gain_of_a_perfect_model_over_one_that_misses_images():
    # B's AP is the share of the 101 recall points it reaches at precision 1: recall 0.8 -> 81 of them
    a, b = perfect_and_missing(40, 8)
    assert weighted_map(a) == 1.0 and weighted_map(b) == pytest.approx(81 / 101)
    g = paired_gain([(a, b)] * 3, n_boot=500)
    assert g.gain == pytest.approx(20 / 101) and g.sd_seed == 0.0
    assert g.lo < g.gain < g.hi and g.sd_images > 0
    assert g.significant  # identical seeds: the image part alone, normal quantile
    reverse = paired_gain([(b, a)] * 3, n_boot=500)
    assert reverse.gain == pytest.approx(-20 / 101) and reverse.hi < 0
    # on 10 images (2 missed), 11 % of resamples draw neither missed image: too few images to tell
    a, b = perfect_and_missing(10, 2)
    assert not paired_gain([(a, b)], n_boot=500).significant


def test_copies_of_a_frame_are_resampled_together():
    # every image twice (two augmented copies of one frame): resampled as independent images, the copies shrink the
    # interval by ~sqrt(2); drawn by frame it matches the set of distinct frames
    a, b = perfect_and_missing(30, 6)
    a2, b2 = perfect_and_missing(60, 12)  # B misses images 1-12: frames 1-6, both copies
    frame = [(i + 1) // 2 for i in range(1, 61)]  # images 2f-1 and 2f are frame f's copies
    distinct = paired_gain([(a, b)], n_boot=2000, seed=1)
    by_image = paired_gain([(a2, b2)], n_boot=2000, seed=1)
    by_frame = paired_gain([(a2, b2)], n_boot=2000, seed=1, groups=frame)
    assert distinct.gain == by_image.gain == by_frame.gain
    assert by_frame.sd_images == pytest.approx(distinct.sd_images, rel=0.15)
    assert by_image.sd_images == pytest.approx(distinct.sd_images / math.sqrt(2), rel=0.15)
    with pytest.raises(ValueError, match="labels for 60"):
        paired_gain([(a2, b2)], n_boot=10, groups=frame[:-1])


def test_cvkd_val_compares_seeds(tmp_path, capsys):
    import json

    from cvkd.commands.val import main

    gt, dets = synthetic(n_images=30)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    files = {}
    for name, drop in (("a", 0), ("b", 8)):  # b loses every detection of 8, 9, 10 images (seeds 0, 1, 2)
        for s in range(3):
            keep = [d for d in dets if d["image_id"] > drop + (s if drop else 0)]
            files[name, s] = tmp_path / f"{name}{s}.json"
            files[name, s].write_text(json.dumps(keep))
    out = tmp_path / "gain.json"
    args = ["--gt", str(tmp_path / "gt.json"), "--pred", *(str(files["a", s]) for s in range(3)),
            "--baseline", *(str(files["b", s]) for s in range(3)), "--n-boot", "300", "--metrics-out", str(out)]
    assert main(args) == 0
    g = json.loads(out.read_text())
    assert g["gain"] > 0 and g["significant"] and "95 % interval" in capsys.readouterr().out
    assert len(set(g["per_seed"])) == 3 and g["sd_seed"] > 0
    assert main(args[:6] + ["--baseline", str(files["b", 0])]) == 2  # 3 vs 1 files: one line, exit 2


def test_compressed_detections_are_read_and_a_corrupt_file_is_one_line(tmp_path):
    import json
    import lzma

    from cvkd.data import DataError, read_json

    with lzma.open(tmp_path / "p.json.xz", "wt", encoding="utf-8") as f:
        json.dump([{"image_id": 1}], f)
    assert read_json(tmp_path / "p.json.xz") == [{"image_id": 1}]
    (tmp_path / "bad.json.xz").write_bytes(b"not xz at all")
    with pytest.raises(DataError, match="bad.json.xz"):
        read_json(tmp_path / "bad.json.xz")


def test_a_kept_detections_file_scores_as_its_list(tmp_path):
    """file_matches reads a .json.xz through the set's class map: merging both categories into one changes the score
    exactly as merging them in the lists does."""
    import json
    import lzma

    from cvkd.data import load_coco, to_coco_dict
    from cvkd.eval.bootstrap import file_matches

    gt, dets = synthetic()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with lzma.open(tmp_path / "d.json.xz", "wt", encoding="utf-8") as f:
        json.dump(dets, f)
    data = load_coco(tmp_path / "gt.json", check_images=False)
    assert weighted_map(file_matches(tmp_path / "d.json.xz", data)) == pytest.approx(pycoco_map(gt, dets), abs=1e-12)
    merged = load_coco(tmp_path / "gt.json", class_map={"a": "x", "b": "x"}, check_images=False)
    gt_m = to_coco_dict(merged)
    dets_m = [{**d, "category_id": gt_m["categories"][0]["id"]} for d in dets]
    got = weighted_map(file_matches(tmp_path / "d.json.xz", merged, gt_m))
    assert got == pytest.approx(weighted_map(image_matches(gt_m, dets_m)), abs=1e-12)
    assert got != pytest.approx(pycoco_map(gt, dets), abs=1e-6)


def test_unpaired_difference_is_welchs_interval():
    from scipy.stats import ttest_ind

    from cvkd.eval.bootstrap import unpaired_difference

    a, b = [0.3256, 0.3632, 0.3309, 0.3565], [0.3515, 0.3989, 0.3771]
    d, lo, hi = unpaired_difference(a, b)
    ref = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(sum(a) / 4 - sum(b) / 3) and (lo, hi) == pytest.approx((ref.low, ref.high))
    # hand case: b constant, so df = n_a - 1 = 2 and the half width is t(2) * sd_a / sqrt(3) = 4.3027 / sqrt(3)
    d, lo, hi = unpaired_difference([1.0, 2.0, 3.0], [0.0, 0.0])
    assert d == 2.0 and hi - d == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)
    with pytest.raises(ValueError):
        unpaired_difference([1.0], [0.0, 1.0])


def test_one_seed_verdicts_say_they_make_no_claim():
    from cvkd.eval.bootstrap import Gain

    def gain(lo, hi, seeds):
        return Gain(gain=(lo + hi) / 2, lo=lo, hi=hi, per_seed=[0.0] * seeds, map_a=[], map_b=[], sd_seed=0.0,
                    sd_images=0.0, n_boot=10)

    assert gain(0.01, 0.02, 3).verdict() == "significant"
    assert gain(-0.01, 0.02, 3).verdict() == "not significant"
    assert gain(0.01, 0.02, 1).verdict(units="frames") == "above 0 over frames (1 seed)"
    assert gain(-0.02, -0.01, 1).verdict() == "below 0 over images (1 seed)"
    assert gain(-0.02, 0.01, 1).verdict() == "not significant (1 seed)"
    assert gain(-0.02, -0.01, 1).verdict(trained=False) == "significant"  # e.g. PTQ vs its FP32 file
    assert "(above 0 over images; 1 seed: val images only" in gain(0.01, 0.02, 1).line()  # cvkd val's line
