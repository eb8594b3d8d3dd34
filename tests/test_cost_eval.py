"""Cost measurement (FLOPs against a hand count, size, latency) and the COCO evaluator on hand-checked cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from study.cost import count_gflops, count_params, latency_ms, size_mb
from study.data import Sample
from study.evaluate import coco_ground_truth, coco_map, coco_metrics
from study.images import ImageSet


class OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)

    def forward(self, images):
        return self.conv(torch.stack(images))


def test_flops_of_one_conv_match_the_hand_count():
    # MACs = out_channels * H * W * in_channels * k * k = 8 * 10 * 12 * 3 * 3 * 3; FLOPs = 2 * MACs
    gflops, proposals = count_gflops(OneConv(), torch.rand(3, 10, 12))
    assert gflops * 1e9 == 2 * 8 * 10 * 12 * 3 * 3 * 3
    assert proposals is None


def test_params_size_and_latency(tmp_path):
    model = OneConv()
    assert count_params(model) == 8 * 3 * 3 * 3
    mb = size_mb(model, tmp_path / "w.pt")
    assert (tmp_path / "w.pt").stat().st_size / 1e6 == mb and mb > 8 * 27 * 4 / 1e6
    assert latency_ms(model, torch.rand(3, 10, 12), torch.device("cpu"), warmup=1, runs=3, threads=1) > 0


def _image_set(boxes, labels, size=(100, 100)):
    samples = [Sample(image_path=__import__("pathlib").Path(f"im{i}.jpg"), width=size[0], height=size[1],
                      boxes=np.asarray(b, dtype=np.float32).reshape(-1, 4), labels=np.asarray(l, dtype=np.int64))
               for i, (b, l) in enumerate(zip(boxes, labels))]
    return ImageSet(torch.zeros(len(samples), 3, 1, 1, dtype=torch.uint8), [], [], [1.0] * len(samples), samples)


def _det(image_id, box, label, score=0.9):
    return {"image_id": image_id, "category_id": label, "score": score,
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}


def test_perfect_detections_give_map_one():
    boxes = [[[10, 10, 40, 50], [50, 50, 90, 95]], [[5, 5, 60, 60]]]
    labels = [[1, 2], [2]]
    gt = coco_ground_truth(_image_set(boxes, labels), ["a", "b"])
    dets = [_det(i, b, l) for i, (bs, ls) in enumerate(zip(boxes, labels)) for b, l in zip(bs, ls)]
    m = coco_metrics(gt, dets, ["a", "b"])
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert m["per_class_ap"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}


def test_shifted_box_gives_the_hand_computed_map():
    # GT 10x10 at the origin, detection shifted 2 px right: IoU = 80 / 120 = 0.667, a hit at the IoU thresholds
    # 0.50, 0.55, 0.60, 0.65 (4 of 10) with precision 1 at recall 1, a miss at the other 6: mAP = 0.4.
    gt = coco_ground_truth(_image_set([[[0, 0, 10, 10]]], [[1]]), ["a"])
    m = coco_metrics(gt, [_det(0, [2, 0, 12, 10], 1)], ["a"])
    assert m["map"] == pytest.approx(0.4)
    assert m["map50"] == pytest.approx(1.0) and m["map75"] == pytest.approx(0.0)
    assert m["map_small"] == pytest.approx(0.4) and m["map_large"] is None  # 100 px² is "small"; no large GT


def test_no_detections_give_zero():
    gt = coco_ground_truth(_image_set([[[0, 0, 10, 10]]], [[1]]), ["a"])
    assert coco_metrics(gt, [], ["a"])["map"] == 0.0


def test_map_alone_matches_the_hand_computed_cases():
    gt = coco_ground_truth(_image_set([[[0, 0, 10, 10]]], [[1]]), ["a"])
    assert coco_map(gt, [_det(0, [2, 0, 12, 10], 1)]) == pytest.approx(0.4)  # as above: 4 of 10 IoU thresholds
    assert coco_map(gt, []) == 0.0
    no_truth = coco_ground_truth(_image_set([[]], [[]]), ["a"])
    assert coco_map(no_truth, [_det(0, [2, 0, 12, 10], 1)]) is None  # coco_metrics' map is None there too


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_alone_is_coco_metrics_map_bit_for_bit(seed):
    """Per-epoch validation reads :func:`coco_map`; the reported test mAP comes from :func:`coco_metrics`: they must
    agree exactly (``==``), also with small, medium and large boxes, tied scores, more than 100 detections on an
    image, and a class with no ground truth."""
    rng = np.random.default_rng(seed)
    boxes, labels = [], []
    for _ in range(6):
        xy = rng.uniform(0, 300, (5, 2))
        wh = rng.choice([8.0, 20.0, 60.0, 150.0], (5, 2)) * rng.uniform(0.8, 1.2, (5, 2))
        boxes.append(np.concatenate([xy, xy + wh], 1).tolist())
        labels.append(rng.integers(1, 3, 5).tolist())  # classes 1-2; class 3 has no ground truth
    gt = coco_ground_truth(_image_set(boxes, labels, size=(500, 500)), ["a", "b", "c"])
    dets = []
    for i, (bs, ls) in enumerate(zip(boxes, labels)):
        for b, l in zip(bs, ls):  # near-hits of every ground truth
            dets.append(_det(i, (np.asarray(b) + rng.normal(0, 3, 4)).tolist(), l, float(rng.uniform(0.2, 1))))
        for _ in range(110 if i == 0 else 20):  # clutter; image 0 past the 100-detection limit
            xy, wh = rng.uniform(0, 400, 2), rng.uniform(5, 100, 2)
            dets.append(_det(i, [*xy, *(xy + wh)], int(rng.integers(1, 4)), float(rng.choice([0.3, 0.5, 0.7]))))
    assert coco_map(gt, dets) == coco_metrics(gt, dets, ["a", "b", "c"])["map"]
