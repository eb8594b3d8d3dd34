"""Bootstrap intervals for COCO mAP: resampling test images, and a two-level bootstrap over (teacher, seed) cells.

COCO mAP is not a mean over images, so a test-image bootstrap has to recompute it for every resample. Running
pycocotools once per resample would redo the box matching each time; but matching is per (category, image), so it
is done once (``match_tables``) and only ``COCOeval.accumulate``'s arithmetic is repeated (``map_from_tables``),
with an image drawn w times counting its detections and its ground truths w times.

A study's spread has two sources: the runs (teacher and student seeds) and the finite test set. The two-level
bootstrap draws both: cells with replacement, and, for every replicate b, the b-th test-image resample, which is
shared by every run (the test set is crossed with the runs), so ``run_replicates`` of every run must use the same
``image_resamples``.
"""
from __future__ import annotations

import contextlib
import io
import math
import statistics

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from study.evaluate import map_only

AREA = "all"
MAX_DETS = 100


def _empty_results(gt: COCO) -> COCO:
    """A results COCO with no detections (``COCO.loadRes`` refuses an empty list)."""
    dt = COCO()
    dt.dataset = {"images": list(gt.dataset.get("images", [])), "annotations": [],
                  "categories": list(gt.dataset.get("categories", []))}
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
    return dt


def match_tables(gt: COCO, detections: list[dict]) -> dict:
    """COCOeval's per (category, image) matches at area 'all', maxDets 100, laid out for ``map_from_tables``.

    Runs ``COCOeval(gt, dt, "bbox").evaluate()`` once. For category k, the evalImgs entries of images 0..N-1
    (COCOeval's order: ascending image id) are concatenated and stably sorted by −score (mergesort), exactly as
    ``accumulate`` does; a detection is a true positive at IoU threshold t iff dtMatches[t] ≠ 0 and not dtIgnore[t],
    a false positive iff dtMatches[t] = 0 and not dtIgnore[t] (ignored ones are neither). Returns::

        image_ids (N,)            COCO image ids, ascending; weights index this order
        iou_thresholds (T,), recall_thresholds (R,)   COCOeval's defaults (.5:.05:.95, linspace(0, 1, 101))
        category_ids (K,)
        gt_counts (K, N)          non-ignored ground truths per category and image (npig = gt_counts[k] · w)
        categories                K dicts in sorted order: score (D,), image (D,) image index, tp (T, D), fp (T, D),
                                  and tie units: unit_start, unit_len, unit_image (runs of equal score in one image)
    """
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(d) for d in detections]) if detections else _empty_results(gt)
        ev = map_only(COCOeval(gt, dt, "bbox"))  # the one area range read below: a quarter of the matching
        ev.evaluate()
    p = ev.params
    if p.maxDets[-1] != MAX_DETS:
        raise ValueError(f"COCOeval evaluated maxDets {p.maxDets[-1]}, expected {MAX_DETS}")
    image_ids, category_ids = list(p.imgIds), list(p.catIds)
    n, n_areas, a = len(image_ids), len(p.areaRng), p.areaRngLbl.index(AREA)
    t_count = len(p.iouThrs)
    gt_counts = np.zeros((len(category_ids), n), dtype=np.int64)
    categories = []
    for k in range(len(category_ids)):
        scores, images, matched, ignored = [], [], [], []
        for i in range(n):
            e = ev.evalImgs[(k * n_areas + a) * n + i]
            if e is None:
                continue
            gt_counts[k, i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            scores.append(np.asarray(e["dtScores"][:MAX_DETS], dtype=np.float64))
            images.append(np.full(len(scores[-1]), i, dtype=np.int64))
            matched.append(np.asarray(e["dtMatches"])[:, :MAX_DETS] != 0)  # accumulate: logical_and(dtm, ...)
            ignored.append(np.asarray(e["dtIgnore"])[:, :MAX_DETS].astype(bool))
        categories.append(_category_table(scores, images, matched, ignored, t_count))
    return {"image_ids": np.asarray(image_ids), "iou_thresholds": np.asarray(p.iouThrs, dtype=np.float64),
            "recall_thresholds": np.asarray(p.recThrs, dtype=np.float64),
            "category_ids": np.asarray(category_ids), "gt_counts": gt_counts, "categories": categories}


def _category_table(scores, images, matched, ignored, t_count: int) -> dict:
    if scores:
        score, image = np.concatenate(scores), np.concatenate(images)
        matched, ignored = np.concatenate(matched, axis=1), np.concatenate(ignored, axis=1)
    else:
        score, image = np.zeros(0), np.zeros(0, dtype=np.int64)
        matched = ignored = np.zeros((t_count, 0), dtype=bool)
    order = np.argsort(-score, kind="mergesort")
    score, image, matched, ignored = score[order], image[order], matched[:, order], ignored[:, order]
    # after the stable sort the order is (−score, image, position in image): equal scores of one image are adjacent
    starts = np.flatnonzero(np.r_[True, (score[1:] != score[:-1]) | (image[1:] != image[:-1])]) if score.size \
        else np.zeros(0, dtype=np.int64)
    return {"score": score, "image": image, "tp": matched & ~ignored, "fp": ~matched & ~ignored,
            "unit_start": starts, "unit_len": np.diff(np.r_[starts, score.size]), "unit_image": image[starts]}


def _expanded_order(cat: dict, weights: np.ndarray) -> np.ndarray:
    """Indices (into the sorted detections) of accumulate's order on the data set with image i repeated w_i times.

    With the copies of image i listed one after another, the stable sort orders detections by (−score, image,
    copy, position in image): a tie unit u (equal scores in one image, length L_u) becomes its L_u detections
    tiled w_{image(u)} times, not each repeated in place.
    """
    reps = cat["unit_len"] * weights[cat["unit_image"]]
    total = int(reps.sum())
    unit = np.repeat(np.arange(reps.size), reps)
    k = np.arange(total) - np.repeat(np.cumsum(reps) - reps, reps)
    return cat["unit_start"][unit] + k % cat["unit_len"][unit]


def map_from_tables(tables: dict, weights=None) -> float:
    """COCO mAP@[.5:.95] (area all, maxDets 100) with image i counted ``weights[i]`` times (None: every image once).

    Equals pycocotools' stats[0] on the data set where image i is listed w_i times in a row. Per category k and
    IoU threshold t, over the (expanded) sorted detections: TP_j, FP_j cumulative sums, npig = Σ_i w_i·G_ki,
    recall_j = TP_j / npig, precision_j = TP_j / (FP_j + TP_j + ε) (ε = np.spacing(1)), made monotone from the right
    (p_j ← max_{j' ≥ j} p_j'); at each recall threshold r (linspace(0, 1, 101)) q(r) = p at the first j with
    recall_j ≥ r (searchsorted, side='left'), 0 where there is none. Categories with npig = 0 are −1 and left out;
    mAP = mean of q over thresholds t, r and the remaining categories. NaN where no category has ground truth
    (pycocotools prints −1).
    """
    n = len(tables["image_ids"])
    if weights is None:
        w = np.ones(n, dtype=np.int64)
    else:
        w = np.asarray(weights)
        if w.shape != (n,) or not np.issubdtype(w.dtype, np.integer) or (w < 0).any():
            raise ValueError(f"weights must be {n} non-negative integers (one per image), not {w!r}")
        w = w.astype(np.int64)
    recall_thresholds = tables["recall_thresholds"]
    t_count, r_count = len(tables["iou_thresholds"]), len(recall_thresholds)
    precision = -np.ones((t_count, r_count, len(tables["categories"])))
    for k, cat in enumerate(tables["categories"]):
        npig = int(tables["gt_counts"][k] @ w)
        if npig == 0:
            continue
        idx = _expanded_order(cat, w)
        tp_sum = np.cumsum(cat["tp"][:, idx], axis=1).astype(float)
        fp_sum = np.cumsum(cat["fp"][:, idx], axis=1).astype(float)
        rc = tp_sum / npig
        pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        for t in range(t_count):
            inds = np.searchsorted(rc[t], recall_thresholds, side="left")
            inside = inds < idx.size
            precision[t, :, k] = 0.0
            precision[t, inside, k] = pr[t, inds[inside]]
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else math.nan


def image_resamples(n_images: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_images) multiplicities: row b counts how often each image is among n_images draws with replacement.

    Draws are ``numpy.random.Generator(PCG64(seed)).integers(0, n_images, (n_boot, n_images))``; rows sum to n_images.
    """
    draws = np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))
    flat = (draws + n_images * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_images).reshape(n_boot, n_images)


def run_replicates(tables: dict, resamples: np.ndarray) -> np.ndarray:
    """mAP of one run for every resample row (``map_from_tables(tables, resamples[b])``), shape (n_boot,)."""
    return np.array([map_from_tables(tables, w) for w in np.asarray(resamples)], dtype=float)


def _stack(values_by_cell: dict, cells: list, n_boot: int, what: str) -> np.ndarray:
    rows = []
    for c in cells:
        v = np.asarray(values_by_cell[c], dtype=float)
        if v.shape != (n_boot,):
            raise ValueError(f"{what} of cell {c!r} has shape {v.shape}: expected one value per image resample, "
                             f"({n_boot},); use run_replicates with image_resamples(..., n_boot={n_boot}, ...)")
        rows.append(v)
    return np.stack(rows)


def replicate_means(values_by_cell: dict, n_boot: int, seed: int) -> np.ndarray:
    """Two-level bootstrap replicates of the mean over cells, shape (n_boot,).

    Cells are ordered by repr; with n cells and v_c the cell's per-image-resample values (length n_boot),
    replicate b = (1/n) Σ_{j=1..n} v_{c_bj}[b], where c_b1..c_bn are drawn with replacement
    (``default_rng(seed).integers(0, n, (n_boot, n))``).
    """
    cells = sorted(values_by_cell, key=repr)
    if not cells:
        raise ValueError("no cells to resample")
    values = _stack(values_by_cell, cells, n_boot, "replicate array")
    draws = np.random.default_rng(seed).integers(0, len(cells), size=(n_boot, len(cells)))
    return values[draws, np.arange(n_boot)[:, None]].mean(axis=1)


def _percentiles(replicates: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def two_level_interval(row: dict, base: dict, point_row: dict, point_base: dict, n_boot: int, seed: int,
                       level: float = 0.95) -> dict:
    """Mean paired difference row − base over the cells both share, with a two-level bootstrap interval.

    mean = (1/n) Σ_c (point_row[c] − point_base[c]) (full test set); replicates are ``replicate_means`` of
    d_c = row[c] − base[c] (the same image resample b on both sides); low, high = the (1 ∓ level)/2 percentiles
    of the replicates; p = min(1, 2·min(#{rep ≤ 0}, #{rep ≥ 0}) / n_boot). With no shared cell every value is None.
    """
    cells = sorted(set(row) & set(base), key=repr)
    out = {"n": len(cells), "mean": None, "low": None, "high": None, "p": None}
    if not cells:
        return out
    diffs = _stack(row, cells, n_boot, "row replicate array") - _stack(base, cells, n_boot, "base replicate array")
    reps = replicate_means(dict(zip(cells, diffs)), n_boot, seed)
    out["mean"] = statistics.fmean(point_row[c] - point_base[c] for c in cells)
    out["low"], out["high"] = _percentiles(reps, level)
    out["p"] = min(1.0, 2 * min(float(np.mean(reps <= 0)), float(np.mean(reps >= 0))))
    return out


def level_interval(values_by_cell: dict, point_by_cell: dict, n_boot: int, seed: int, level: float = 0.95) -> dict:
    """One group's mean mAP over its cells, (1/n) Σ_c point[c], with the two-level bootstrap percentile interval."""
    cells = sorted(values_by_cell, key=repr)
    out = {"n": len(cells), "mean": None, "low": None, "high": None}
    if not cells:
        return out
    reps = replicate_means(values_by_cell, n_boot, seed)
    out["mean"] = statistics.fmean(point_by_cell[c] for c in cells)
    out["low"], out["high"] = _percentiles(reps, level)
    return out
