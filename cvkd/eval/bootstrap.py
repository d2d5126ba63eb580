"""Paired gains with 95 % intervals: is model A better than model B on this val set, across training seeds?

The gain is the mean over seeds of ``mAP_A - mAP_B`` (same seed, same val images). Its interval accounts for two
sources of variation:

* **training seeds**: the spread of the per-seed gains, ``sd_seed^2 / n`` (n seeds);
* **val images**: the variance of the seed-mean gain over bootstrap resamples of the val images (one resample is
  shared by every seed and both models, since they were all scored on the same images).

The two add (independent sources), and the interval is ``gain +- t_{df, 0.975} * sqrt(sd_seed^2 / n + var_images)``
with Welch-Satterthwaite degrees of freedom ``df = (n - 1) (v_seed + v_images)^2 / v_seed^2`` (n - 1 for the seed part,
which is estimated from n values; infinite for the image part, estimated from thousands of resamples): t with n - 1
when the seeds dominate, the normal quantile when the images do. With one seed the seed part is unknown and left out
(the report says so). An interval that contains 0 is "not significant".

Re-scoring a resample with pycocotools would take seconds each; instead :func:`image_matches` runs COCOeval's
per-image matching once, and :func:`weighted_map` re-accumulates AP@[.5:.95] exactly as ``COCOeval.accumulate`` does
(area ``all``, 100 detections per image, 101 recall points), with each image counted as often as the resample drew
it. With every weight 1 it equals pycocotools' mAP (tested).
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

REC_THRS = np.linspace(0.0, 1.0, 101)


@dataclass
class CategoryMatches:
    """One category's detections over all images, sorted by score as COCOeval sorts them."""
    image: np.ndarray  # (D,) image index of each detection
    tp: np.ndarray  # (T, D) bool, matched at IoU threshold t (and not ignored)
    fp: np.ndarray  # (T, D) bool
    n_gt: np.ndarray  # (I,) non-ignored ground-truth boxes per image


@dataclass
class ImageMatches:
    categories: list[CategoryMatches]
    n_images: int


def image_matches(gt_dict: dict, results: list[dict]) -> ImageMatches:
    """COCOeval's per-image matching of ``results`` against ``gt_dict`` (both in COCO format, same category ids)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes([dict(r) for r in results]) if results else COCO()
        if not results:
            dt.dataset = {"images": gt_dict["images"], "categories": gt_dict["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
    p = ev.params
    n_img, n_area, max_det = len(p.imgIds), len(p.areaRng), p.maxDets[-1]
    cats = []
    for k in range(len(p.catIds)):
        image, scores, tp, fp = [], [], [], []
        n_gt = np.zeros(n_img, dtype=np.int64)
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + i]  # area 'all' is the first range
            if e is None:
                continue
            d = len(e["dtScores"][:max_det])
            ignore = e["dtIgnore"][:, :d].astype(bool)
            matched = e["dtMatches"][:, :d] > 0
            image.append(np.full(d, i))
            scores.append(np.asarray(e["dtScores"][:max_det]))
            tp.append(matched & ~ignore)
            fp.append(~matched & ~ignore)
            n_gt[i] = int(np.count_nonzero(e["gtIgnore"] == 0))
        if not image:
            cats.append(CategoryMatches(np.zeros(0, int), np.zeros((len(p.iouThrs), 0), bool),
                                        np.zeros((len(p.iouThrs), 0), bool), n_gt))
            continue
        order = np.argsort(-np.concatenate(scores), kind="mergesort")  # as COCOeval.accumulate
        cats.append(CategoryMatches(np.concatenate(image)[order], np.concatenate(tp, 1)[:, order],
                                    np.concatenate(fp, 1)[:, order], n_gt))
    return ImageMatches(cats, n_img)


def file_matches(path, data, gt_dict: dict | None = None) -> ImageMatches:
    """:func:`image_matches` of a detections file (COCO results ``.json``, or the ``.json.xz`` benchmarks keep) against
    the validated set ``data`` (a ``cvkd.data.CocoData``), its categories mapped as the set's class map says; pass
    ``gt_dict = to_coco_dict(data)`` when scoring many files against one set."""
    from cvkd.data import to_coco_dict
    from cvkd.data.coco import read_json
    from cvkd.eval.coco_eval import remap_predictions

    return image_matches(gt_dict or to_coco_dict(data), remap_predictions(read_json(path), data, str(path)))


def weighted_map(m: ImageMatches, weights: np.ndarray | None = None) -> float:
    """AP@[.5:.95] with image ``i`` counted ``weights[i]`` times (None = once each); categories without ground
    truth are left out of the mean, -1 if none has any (pycocotools' conventions)."""
    w = np.ones(m.n_images) if weights is None else np.asarray(weights, dtype=np.float64)
    aps = []
    for c in m.categories:
        n_gt = float(np.dot(w, c.n_gt))
        if n_gt == 0:
            continue
        wd = w[c.image]  # (D,) weight of each detection
        tp_sum = np.cumsum(c.tp * wd, axis=1)  # (T, D)
        fp_sum = np.cumsum(c.fp * wd, axis=1)
        ap_t = []
        for tps, fps in zip(tp_sum, fp_sum):  # weight-0 detections repeat the previous point: no effect
            rc = tps / n_gt
            pr = tps / (tps + fps + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr  # precision envelope
            idx = np.searchsorted(rc, REC_THRS, side="left")
            q = np.where(idx < len(pr), pr[np.minimum(idx, len(pr) - 1)] if len(pr) else 0.0, 0.0)
            ap_t.append(float(np.mean(q)))
        aps.append(float(np.mean(ap_t)))
    return float(np.mean(aps)) if aps else -1.0


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile (``df`` degrees of freedom)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass
class Gain:
    gain: float  # mean over seeds of map_a - map_b
    lo: float
    hi: float
    per_seed: list[float]
    map_a: list[float]
    map_b: list[float]
    sd_seed: float  # sd of the per-seed gains (nan for one seed)
    sd_images: float  # bootstrap sd of the seed-mean gain over val-image resamples
    n_boot: int

    @property
    def significant(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def verdict(self, units: str = "images", trained: bool = True) -> str:
        """The table's word for the interval. With one trained model per side (one training seed) the interval holds
        the val ``units``' variation only: it ranks but makes no claim, and says so. ``trained=False``: models with no
        training seed to vary (e.g. a calibrated PTQ file against its FP32 source), whose interval is the whole story."""
        if len(self.per_seed) > 1 or not trained:
            return "significant" if self.significant else "not significant"
        return (f"above 0 over {units} (1 seed)" if self.lo > 0 else f"below 0 over {units} (1 seed)" if self.hi < 0
                else "not significant (1 seed)")

    def line(self) -> str:
        verdict = self.verdict().removesuffix(" (1 seed)")  # the seed count follows it
        n = len(self.per_seed)
        seeds = f"{n} seeds" if n > 1 else "1 seed: val images only"
        return (f"gain {self.gain:+.4f}, 95 % interval [{self.lo:+.4f}, {self.hi:+.4f}] ({verdict}; {seeds}, "
                f"sd seeds {self.sd_seed:.4f}, sd images {self.sd_images:.4f})")


def combine_interval(per_seed: list[float], image_means: np.ndarray, level: float = 0.95) -> tuple[float, float, float,
                                                                                                   float]:
    """(lo, hi, sd_seed, sd_images) for the mean of ``per_seed`` gains, given bootstrap replicates ``image_means`` of
    the seed-mean gain over val-image resamples (see the module docstring)."""
    n = len(per_seed)
    g = float(np.mean(per_seed))
    sd_img = float(np.std(image_means, ddof=1)) if len(image_means) > 1 else 0.0
    sd_seed = float(np.std(per_seed, ddof=1)) if n > 1 else float("nan")
    v_seed, v_img = (sd_seed ** 2 / n if n > 1 else 0.0), sd_img ** 2
    # Welch-Satterthwaite: n - 1 degrees of freedom for the seed part, (practically) infinite for the image part
    df = (n - 1) * (v_seed + v_img) ** 2 / v_seed ** 2 if v_seed > 0 else 1e9
    half = t_quantile(min(df, 1e9), level) * math.sqrt(v_seed + v_img)
    return g - half, g + half, sd_seed, sd_img


def unpaired_difference(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), lo, hi): Welch's interval for two groups of independent runs (e.g. two tools' baselines,
    whose seeds share nothing), over training seeds only; at least 2 values each."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("an unpaired interval needs at least 2 runs of each group")
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    d = float(np.mean(a) - np.mean(b))
    if va + vb == 0:
        return d, d, d
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(df, level) * math.sqrt(va + vb)
    return d, d - half, d + half


def paired_gain(pairs: list[tuple[ImageMatches, ImageMatches]], n_boot: int = 2000, seed: int = 0,
                level: float = 0.95, groups: list | np.ndarray | None = None) -> Gain:
    """A vs B over seeds: ``pairs`` = [(matches of A, matches of B) per seed], all on the same val images.

    ``groups``: one label per val image, in ascending image-id order (COCOeval's), when images are not independent,
    e.g. augmented copies of one source frame: the bootstrap then draws whole groups (a cluster bootstrap), since
    resampling copies as if they were distinct images would narrow the interval by up to sqrt(copies)."""
    n_img = {m.n_images for pair in pairs for m in pair}
    if len(n_img) != 1:
        raise ValueError(f"every prediction set must be scored on the same val images, got sizes {sorted(n_img)}")
    map_a = [weighted_map(a) for a, _ in pairs]
    map_b = [weighted_map(b) for _, b in pairs]
    per_seed = [a - b for a, b in zip(map_a, map_b)]
    rng = np.random.default_rng(seed)
    n = n_img.pop()
    if groups is None:
        codes = np.arange(n)
    elif len(groups) != n:
        raise ValueError(f"groups gives {len(groups)} labels for {n} val images")
    else:
        codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()  # (n,) group index of each image
    k = int(codes.max()) + 1
    reps = np.empty(n_boot)
    for r in range(n_boot):
        # one resample for every seed and model: k groups drawn with replacement, each image weighted by its group's
        # draw count
        w = np.bincount(rng.integers(0, k, k), minlength=k).astype(np.float64)[codes]  # (n,)
        reps[r] = np.mean([weighted_map(a, w) - weighted_map(b, w) for a, b in pairs])
    lo, hi, sd_seed, sd_img = combine_interval(per_seed, reps, level)
    return Gain(float(np.mean(per_seed)), lo, hi, per_seed, map_a, map_b, sd_seed, sd_img, n_boot)
