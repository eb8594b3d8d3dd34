"""COCO mAP recomputed from match tables, against pycocotools and by hand; bootstrap intervals worked out by hand."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from study.bootstrap import (image_resamples, level_interval, map_from_tables, match_tables, replicate_means,
                             run_replicates, two_level_interval)

CLASSES = ["a", "b", "c"]


def make_gt(images: list[list[tuple[int, list[float]]]], n_classes: int = len(CLASSES)) -> COCO:
    """Ground truth as ``coco_ground_truth`` builds it: image i gets id i; boxes are (category, [x, y, w, h])."""
    imgs, anns = [], []
    for i, boxes in enumerate(images):
        imgs.append({"id": i, "width": 400, "height": 400, "file_name": f"{i}.jpg"})
        for cat, (x, y, w, h) in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": imgs, "annotations": anns,
                  "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(n_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_map(gt: COCO, detections: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def synthetic(seed: int, n_images: int = 12):
    """Jittered detections of random boxes, with misses, false positives, images without ground truth, scores
    rounded to 0.05 (ties within and across images) and one image with more than 100 detections of a class."""
    rng = np.random.default_rng(seed)
    images, detections = [], []
    for i in range(n_images):
        boxes = [] if i % 5 == 3 else [(int(rng.integers(1, 4)), [float(v) for v in rng.uniform(0, 300, 2)]
                                        + [float(v) for v in rng.uniform(8, 90, 2)])
                                       for _ in range(int(rng.integers(0, 7)))]
        images.append(boxes)
        for cat, (x, y, w, h) in boxes:
            if rng.random() < 0.2:
                continue  # a miss
            jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
            detections.append({"image_id": i, "category_id": cat, "score": round(float(rng.uniform(0.05, 1)) * 20) / 20,
                               "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]]})
        for _ in range(int(rng.integers(0, 5))):  # false positives anywhere
            detections.append({"image_id": i, "category_id": int(rng.integers(1, 4)),
                               "score": round(float(rng.uniform(0.05, 1)) * 20) / 20,
                               "bbox": [float(v) for v in rng.uniform(0, 300, 2)]
                               + [float(v) for v in rng.uniform(5, 60, 2)]})
    for j in range(110):  # beyond maxDets 100: only the top 100 of image 0, class 1 count
        detections.append({"image_id": 0, "category_id": 1, "score": float(rng.uniform(0.01, 0.3)),
                           "bbox": [float(rng.uniform(0, 300)), float(rng.uniform(0, 300)), 20.0, 20.0]})
    return make_gt(images), detections


def duplicated(gt: COCO, detections: list[dict], weights) -> tuple[COCO, list[dict]]:
    """The data set with image i listed weights[i] times in a row (fresh, ascending image ids)."""
    images, dets = [], []
    for i, w in enumerate(weights):
        boxes = [(a["category_id"], a["bbox"]) for a in gt.imgToAnns[i]]
        for _ in range(w):
            dets += [d | {"image_id": len(images)} for d in detections if d["image_id"] == i]
            images.append(boxes)
    return make_gt(images), dets


@pytest.mark.parametrize("seed", [0, 1])
def test_tables_reproduce_pycocotools_exactly(seed):
    gt, detections = synthetic(seed)
    expected = coco_map(gt, detections)
    assert 0.1 < expected < 0.95  # non-trivial
    assert map_from_tables(match_tables(gt, detections)) == pytest.approx(expected, abs=1e-12)


def test_weights_equal_pycocotools_on_the_duplicated_data_set():
    gt, detections = synthetic(2, n_images=8)
    tables = match_tables(gt, detections)
    for weights in ([2, 0, 1, 3, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 5, 3], [1, 1, 1, 1, 1, 1, 1, 1]):
        expected = coco_map(*duplicated(gt, detections, weights))
        assert map_from_tables(tables, np.array(weights)) == pytest.approx(expected, abs=1e-12)


def test_tied_scores_of_an_image_interleave_its_copies():
    # one ground truth, a TP and an FP of equal score (TP listed first): drawn twice, the stable sort gives
    # TP FP TP FP (copy by copy), not TP TP FP FP: recall .5 .5 1 1, precision 1 1/2 2/3 1/2 -> 51 x 1 + 50 x 2/3
    gt = make_gt([[(1, [0, 0, 10, 10])], [(1, [50, 50, 20, 20])]], n_classes=1)
    dets = [{"image_id": 0, "category_id": 1, "score": 0.5, "bbox": [0, 0, 10, 10]},
            {"image_id": 0, "category_id": 1, "score": 0.5, "bbox": [200, 200, 10, 10]},
            {"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [300, 300, 10, 10]},
            {"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [50, 50, 20, 20]}]
    tables = match_tables(gt, dets)
    assert map_from_tables(tables, np.array([2, 0])) == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    for weights in ([1, 1], [2, 0], [0, 3], [2, 1], [1, 2]):
        assert map_from_tables(tables, np.array(weights)) == pytest.approx(coco_map(*duplicated(gt, dets, weights)),
                                                                           abs=1e-12)


def one_image_case():
    gt = make_gt([[(1, [0, 0, 10, 10]), (1, [50, 50, 10, 10])]], n_classes=1)
    dets = [{"image_id": 0, "category_id": 1, "score": 0.9, "bbox": [0, 0, 10, 10]},
            {"image_id": 0, "category_id": 1, "score": 0.8, "bbox": [200, 200, 10, 10]},
            {"image_id": 0, "category_id": 1, "score": 0.7, "bbox": [50, 50, 10, 10]}]
    return gt, dets


def test_hand_worked_average_precision():
    # sorted TP .9, FP .8, TP .7 with 2 ground truths: recall .5, .5, 1; precision 1, 1/2, 2/3 -> monotone 1, 2/3,
    # 2/3; the 51 recall thresholds 0..0.50 read 1, the 50 above read 2/3, at every IoU threshold
    gt, dets = one_image_case()
    tables = match_tables(gt, dets)
    expected = (51 + 50 * 2 / 3) / 101
    assert expected == pytest.approx(0.834983, abs=1e-6)
    assert map_from_tables(tables) == pytest.approx(expected, abs=1e-12)
    assert coco_map(gt, dets) == pytest.approx(expected, abs=1e-12)
    # drawn twice: TP TP FP FP TP TP over 4 ground truths gives the same curve
    assert map_from_tables(tables, np.array([2])) == pytest.approx(expected, abs=1e-12)


def test_zero_weight_drops_an_image():
    gt1, dets1 = one_image_case()
    gt = make_gt([[(1, [0, 0, 10, 10]), (1, [50, 50, 10, 10])], [(1, [100, 100, 30, 30])]], n_classes=1)
    dets = dets1 + [{"image_id": 1, "category_id": 1, "score": 0.95, "bbox": [300, 300, 10, 10]},
                    {"image_id": 1, "category_id": 1, "score": 0.6, "bbox": [100, 100, 30, 30]}]
    tables = match_tables(gt, dets)
    assert map_from_tables(tables) == pytest.approx(coco_map(gt, dets), abs=1e-12)
    assert map_from_tables(tables, np.array([1, 0])) == pytest.approx(map_from_tables(match_tables(gt1, dets1)),
                                                                      abs=1e-12)
    assert map_from_tables(tables, np.array([0, 1])) == pytest.approx(0.5, abs=1e-12)  # FP then TP: precision 1/2
    with pytest.raises(ValueError, match="non-negative integers"):
        map_from_tables(tables, np.array([1, 1, 1]))


def test_no_detections_give_zero():
    gt, _ = synthetic(0)
    tables = match_tables(gt, [])
    assert map_from_tables(tables) == 0.0
    assert map_from_tables(tables, image_resamples(len(tables["image_ids"]), 1, 0)[0]) == 0.0


def test_resamples_and_replicates_are_determined_by_the_seed():
    gt, detections = synthetic(0)
    tables = match_tables(gt, detections)
    n = len(tables["image_ids"])
    r = image_resamples(n, 20, seed=7)
    assert r.shape == (20, n) and (r.sum(axis=1) == n).all() and r.min() >= 0
    assert (r == image_resamples(n, 20, seed=7)).all() and not (r == image_resamples(n, 20, seed=8)).all()
    reps = run_replicates(tables, r)
    assert reps.shape == (20,) and reps[3] == map_from_tables(tables, r[3])
    assert (reps == run_replicates(tables, image_resamples(n, 20, seed=7))).all()
    assert reps.std() > 0
    assert run_replicates(tables, np.ones((2, n), dtype=int)) == pytest.approx([coco_map(gt, detections)] * 2,
                                                                               abs=1e-12)


def test_two_cells_without_image_variance_by_hand():
    # differences 0 and 2 in every image resample: a replicate draws two cells, so its mean is 0, 1 or 2 with
    # probabilities 1/4, 1/2, 1/4; the 2.5th and 97.5th percentiles are 0 and 2; p = 2 * P(rep <= 0) = 1/2
    n_boot = 4000
    row = {("t0", 0): np.full(n_boot, 0.5), ("t1", 1): np.full(n_boot, 0.7), ("t1", 2): np.full(n_boot, 0.9)}
    base = {("t0", 0): np.full(n_boot, 0.5), ("t1", 1): np.full(n_boot, 0.5)}  # ("t1", 2) is not shared
    diffs = {c: row[c] - base[c] for c in base}
    reps = replicate_means(diffs, n_boot, seed=3)
    values, counts = np.unique(np.round(reps, 12), return_counts=True)
    assert values.tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert counts / n_boot == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    out = two_level_interval(row, base, {c: 0.6 for c in row} | {("t1", 1): 0.8}, {c: 0.6 for c in base},
                             n_boot, seed=3)
    assert out["n"] == 2 and out["mean"] == pytest.approx(0.1)
    assert (out["low"], out["high"]) == (pytest.approx(0.0), pytest.approx(0.2))
    assert out["p"] == pytest.approx(0.5, abs=0.05)
    assert out == two_level_interval(row, base, {c: 0.6 for c in row} | {("t1", 1): 0.8}, {c: 0.6 for c in base},
                                     n_boot, seed=3)
    level = level_interval({c: row[c] for c in base}, {c: 0.6 for c in base}, n_boot, seed=3)
    assert (level["n"], level["mean"], level["low"], level["high"]) == (2, pytest.approx(0.6), pytest.approx(0.5),
                                                                        pytest.approx(0.7))


def test_one_cell_interval_is_its_own_image_interval():
    rng = np.random.default_rng(0)
    n_boot = 500
    row, base = {"c": rng.normal(0.62, 0.02, n_boot)}, {"c": rng.normal(0.60, 0.02, n_boot)}
    out = two_level_interval(row, base, {"c": 0.63}, {"c": 0.6}, n_boot, seed=1, level=0.9)
    assert out["mean"] == pytest.approx(0.03)
    assert [out["low"], out["high"]] == pytest.approx(np.percentile(row["c"] - base["c"], [5, 95]).tolist())
    d = row["c"] - base["c"]
    assert out["p"] == pytest.approx(min(1, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))
    level = level_interval(row, {"c": 0.63}, n_boot, seed=1)
    assert [level["low"], level["high"]] == pytest.approx(np.percentile(row["c"], [2.5, 97.5]).tolist())


def test_replicate_arrays_must_have_n_boot_values():
    with pytest.raises(ValueError, match=r"expected one value per image resample, \(100,\)"):
        two_level_interval({"c": np.zeros(99)}, {"c": np.zeros(99)}, {"c": 0.0}, {"c": 0.0}, n_boot=100, seed=0)
    with pytest.raises(ValueError, match="expected one value per image resample"):
        level_interval({"c": np.zeros(100), "d": np.zeros(10)}, {"c": 0.0, "d": 0.0}, n_boot=100, seed=0)
    assert two_level_interval({"c": np.zeros(3)}, {"d": np.zeros(3)}, {}, {}, n_boot=3, seed=0)["n"] == 0
