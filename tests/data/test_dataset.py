"""Letterbox maths, the eval/train Dataset, collate format, determinism, caching, loaders, the embedded demo set."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tinydata import make_image, write_json

from cvkd.data import (
    CocoDataset,
    DataError,
    build_loaders,
    collate_fn,
    letterbox,
    letterbox_boxes,
    load_coco,
    make_loader,
    unletterbox_boxes,
)
from cvkd.data.transforms import hsv_jitter

ROOT = Path(__file__).resolve().parents[2]


def test_letterbox_params_and_inverse():
    img = np.zeros((48, 64, 3), np.uint8)  # h=48, w=64
    out, r, (px, py) = letterbox(img, 128)
    assert out.shape == (128, 128, 3) and r == 2.0 and (px, py) == (0, 16)
    assert (out[:16] == 114).all() and (out[16:112] == 0).all() and (out[112:] == 114).all()
    out, r, (px, py) = letterbox(np.zeros((30, 100, 3), np.uint8), 64)  # 64 x 19.2 -> 19 rows, pad 45 = 22 + 23
    assert out.shape == (64, 64, 3) and r == 0.64 and (px, py) == (0, 22)
    boxes = np.array([[1.5, 2.0, 30.0, 25.5]], np.float64)
    lb = letterbox_boxes(boxes, r, (px, py))
    np.testing.assert_allclose(lb, [[0.96, 23.28, 19.2, 38.32]])
    np.testing.assert_allclose(unletterbox_boxes(lb, r, (px, py)), boxes, rtol=1e-12)
    t = unletterbox_boxes(torch.tensor(lb, dtype=torch.float32), r, (px, py))
    assert isinstance(t, torch.Tensor) and torch.allclose(t, torch.tensor(boxes, dtype=torch.float32))


def test_eval_item_is_exact_letterbox(tiny):
    path, img_dir, _ = tiny
    data = load_coco(path, img_dir)
    ds = CocoDataset(data, 64)
    it = ds[1]  # b.png: 48 wide, 64 high -> scale 1, pad_x 8
    assert it["img"].shape == (3, 64, 64) and it["img"].dtype == torch.uint8
    assert it["letterbox"] == (1.0, 8, 0) and it["orig_size"] == (64, 48) and it["image_id"] == 2
    assert torch.equal(it["boxes"], torch.tensor([[13.0, 5.0, 43.0, 45.0]]))
    assert (it["img"][:, :, :8] == 114).all() and (it["img"][:, :, 56:] == 114).all()
    from PIL import Image

    src = torch.from_numpy(np.array(Image.open(img_dir / "b.png"))).permute(2, 0, 1)  # (3, 64, 48)
    assert torch.equal(it["img"][:, :, 8:56], src)  # RGB order, pixels untouched at scale 1
    assert ds[2]["boxes"].shape == (0, 4) and ds[2]["labels"].dtype == torch.int64


def test_crowd_boxes_are_not_in_items(tiny):
    path, img_dir, d = tiny
    d["annotations"][0]["iscrowd"] = 1
    data = load_coco(write_json(d, path), img_dir)
    assert data.images[0].iscrowd.tolist() == [True, False]
    assert CocoDataset(data, 64)[0]["labels"].tolist() == [1]
    assert CocoDataset(data, 64, train=True, fliplr=0.0, scale=0.0, translate=0.0)[0]["labels"].tolist() == [1]


def test_cache_gives_identical_items(tiny):
    path, img_dir, _ = tiny
    data = load_coco(path, img_dir)
    plain, cached = CocoDataset(data, 96), CocoDataset(data, 96, cache=True, progress=False)
    assert 96 in data.image_cache and cached.cache is not None and plain.cache is None
    for i in range(3):
        assert torch.equal(plain[i]["img"], cached[i]["img"])
        assert torch.equal(plain[i]["boxes"], cached[i]["boxes"])
    assert CocoDataset(data, 96, cache=True).cache is data.image_cache[96]  # reused, not rebuilt


def test_train_interpolation(tiny):
    """interp="linear" shrinks with INTER_LINEAR (ultralytics' training images), "area" with INTER_AREA; each has its
    own cache entry, boxes are the same, and an unknown value is one DataError."""
    import cv2
    import numpy as np

    from cvkd.data.images import read_rgb

    path, img_dir, _ = tiny
    data = load_coco(path, img_dir)
    area = CocoDataset(data, 32, cache=True, progress=False)
    linear = CocoDataset(data, 32, cache=True, progress=False, interp="linear")
    assert area.cache is data.image_cache[32] and linear.cache is data.image_cache[(32, "linear")]
    for i, rec in enumerate(data.images):
        img = read_rgb(rec.path)
        r = 32 / max(rec.width, rec.height)
        size = (max(1, round(rec.width * r)), max(1, round(rec.height * r)))
        assert np.array_equal(linear.cache[i], cv2.resize(img, size, interpolation=cv2.INTER_LINEAR))
        assert np.array_equal(area.cache[i], cv2.resize(img, size, interpolation=cv2.INTER_AREA))
        assert torch.equal(area[i]["boxes"], linear[i]["boxes"])
    assert not np.array_equal(linear.cache[2], area.cache[2])  # 40 -> 32 px (at exactly 2x the two are equal)
    with pytest.raises(DataError, match="interp must be one of"):
        CocoDataset(data, 32, interp="cubic")

def test_collate_format(tiny):
    path, img_dir, _ = tiny
    ds = CocoDataset(load_coco(path, img_dir), 64)
    b = collate_fn([ds[0], ds[1], ds[2]])
    assert b["img"].shape == (3, 3, 64, 64) and b["img"].dtype == torch.float32
    assert 0.0 <= b["img"].min() and b["img"].max() <= 1.0
    assert b["batch_idx"].tolist() == [0.0, 0.0, 1.0] and b["cls"].tolist() == [0.0, 1.0, 0.0]
    assert b["bboxes"].shape == (3, 4) and b["bboxes"].dtype == torch.float32
    assert b["image_ids"] == [1, 2, 3] and b["orig_size"] == [(48, 64), (64, 48), (40, 40)]
    assert b["letterbox"] == [(1.0, 0, 8), (1.0, 8, 0), (1.6, 0, 0)]


def _train_set(tmp_path, n=6):
    """n 80x60 images with 3 boxes each."""
    d = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    for i in range(1, n + 1):
        make_image(tmp_path / f"{i}.png", 80, 60, seed=i)
        d["images"].append({"id": i, "file_name": f"{i}.png", "width": 80, "height": 60})
        for j, box in enumerate([[5, 5, 20, 20], [40, 10, 30, 40], [60, 45, 18, 14]]):
            d["annotations"].append({"id": 10 * i + j, "image_id": i, "category_id": 1 + j % 2, "bbox": box})
    return load_coco(write_json(d, tmp_path / "train.json"), tmp_path)


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_train_augmentation_deterministic_and_valid(tmp_path, mosaic):
    data = _train_set(tmp_path)
    ds = CocoDataset(data, 64, train=True, mosaic=mosaic, seed=3)
    a, b = ds[2], ds[2]
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["boxes"], b["boxes"])
    assert not torch.equal(a["img"], CocoDataset(data, 64, train=True, mosaic=mosaic, seed=4)[2]["img"])
    ds.set_epoch(1)
    assert not torch.equal(a["img"], ds[2]["img"])
    n_boxes = 0
    for i in range(len(ds)):
        it = ds[i]
        assert it["img"].shape == (3, 64, 64) and it["boxes"].shape[1] == 4
        bx = it["boxes"]
        assert (bx >= 0).all() and (bx <= 64).all() and (bx[:, 2:] - bx[:, :2] >= 2 - 1e-4).all()
        assert set(it["labels"].tolist()) <= {0, 1} and len(it["labels"]) == len(bx)
        n_boxes += len(bx)
    assert n_boxes > 0


def test_train_without_random_ops_equals_eval(tmp_path):
    data = _train_set(tmp_path, n=2)
    train = CocoDataset(data, 64, train=True, scale=0.0, translate=0.0, fliplr=0.0, hsv_h=0, hsv_s=0, hsv_v=0)
    ev = CocoDataset(data, 64)
    assert torch.equal(train[0]["img"], ev[0]["img"])
    torch.testing.assert_close(train[0]["boxes"], ev[0]["boxes"], atol=1e-4, rtol=0)


def test_hsv_value_gain_on_gray():
    gray = np.full((4, 4, 3), 114, np.uint8)
    gain = np.random.default_rng(0).uniform(-1, 1, 3)[2] * 0.5 + 1  # the value gain hsv_jitter draws first
    out = hsv_jitter(gray, np.random.default_rng(0), 0.0, 0.0, 0.5)
    assert abs(gain - 1) > 0.05 and (out == int(np.float32(114) * np.float32(gain))).all()
    assert hsv_jitter(gray, np.random.default_rng(0), 0.0, 0.0, 0.0) is gray  # all gains 0: untouched


def test_flip_moves_boxes(tmp_path):
    data = _train_set(tmp_path, n=1)
    flip = CocoDataset(data, 64, train=True, scale=0.0, translate=0.0, fliplr=1.0, hsv_h=0, hsv_s=0, hsv_v=0)
    ev = CocoDataset(data, 64)
    torch.testing.assert_close(flip[0]["img"], ev[0]["img"].flip(-1))
    got = flip[0]["boxes"][flip[0]["labels"].argsort(stable=True)]
    want = ev[0]["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor([64.0, 0, 64, 0])
    torch.testing.assert_close(got.sort(0).values, want.sort(0).values, atol=1e-3, rtol=0)


def test_loader_workers_match_main_process(tmp_path):
    data = _train_set(tmp_path, n=4)
    ds = CocoDataset(data, 64, train=True, mosaic=0.5, seed=0)
    main = [b["img"] for b in make_loader(ds, 2, shuffle=True, workers=0, seed=7)]
    work = [b["img"] for b in make_loader(ds, 2, shuffle=True, workers=2, seed=7)]
    assert len(main) == 2 and all(torch.equal(x, y) for x, y in zip(main, work))


def test_build_loaders_from_config(tmp_path):
    data = _train_set(tmp_path, n=3)
    cfg = SimpleNamespace(imgsz=64, workers=0, mosaic=1.0, scale=0.5, translate=0.1, fliplr=0.5, hsv_h=0.015,
                          hsv_s=0.7, hsv_v=0.4, train_interp="linear")
    loader, ds = build_loaders(cfg, SimpleNamespace(batch=2), data, seed=1, mosaic=False)
    assert ds.mosaic == 0.0 and ds.train and len(loader) == 2 and ds.interp == "linear"
    batch = next(iter(loader))
    assert batch["img"].shape == (2, 3, 64, 64) and batch["bboxes"].shape[1] == 4


def test_bad_imgsz_and_undecodable_image(tiny):
    path, img_dir, _ = tiny
    data = load_coco(path, img_dir)
    with pytest.raises(DataError, match="multiple of 32"):
        CocoDataset(data, 100)
    (img_dir / "a.png").write_bytes(b"broken after validation")
    with pytest.raises(DataError, match=r"image id 1: cannot decode image"):
        CocoDataset(data, 64)[0]


def test_embedded_demo_set():
    root = ROOT / "datasets" / "cctv_mini"
    cmap = {"0": "person", "1": "person"}
    train = load_coco(root / "train.json", root / "images" / "train", cmap)
    val = load_coco(root / "val.json", root / "images" / "val", cmap)
    assert (len(train), train.num_boxes, len(val), val.num_boxes) == (258, 3450, 44, 634)
    assert train.class_names == val.class_names == ["person"]
    assert max(max(r.width, r.height) for r in train.images + val.images) == 640
    frames = [r.file_name.split("_jpg.rf.")[0] for r in train.images]
    assert len(set(frames)) == len(frames)  # one copy per source frame
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size <= 12e6


@pytest.mark.parametrize("crop", [False, True])
def test_translation_is_a_fraction_of_the_output_size(crop):
    """The shift is +-translate * S for a plain S image and for a 2S mosaic canvas alike (ultralytics' rule); a shift
    of a fraction of the 2S canvas would reach twice as far."""
    from cvkd.data.transforms import apply_geometric, geometric_pipeline

    size, translate = 64, 0.1
    side = 2 * size if crop else size
    img = np.full((side, side, 3), 114, np.uint8)
    c = side / 2
    box = np.array([[c - 4, c - 4, c + 4, c + 4]], np.float32)  # (1, 4) an 8 px box at the centre
    pipe = geometric_pipeline(size, 0.0, translate, 0.0, crop=crop)
    shifts = []
    for seed in range(200):
        _, b, _ = apply_geometric(pipe, img, box, np.array([0]), seed)
        out_c = size / 2 if crop else c  # the centre crop moves the canvas centre to the output centre
        shifts.append(np.abs((b[0, :2] + b[0, 2:]) / 2 - out_c).max())
    assert max(shifts) <= translate * size + 0.5
    assert max(shifts) > 0.7 * translate * size  # it does translate, up to near the limit
