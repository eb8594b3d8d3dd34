"""Structured pruning and fp16 weights of tiny detectors: real shrinkage, still trains, save and load (int8:
tests/test_quantize_pt2e.py)."""
from __future__ import annotations

import pytest
import torch

from detectors.faster_rcnn import build_faster_rcnn
from methods.prune import prune_backbone
from methods.quantize import fp16_weights
from study.cost import count_gflops, count_params, size_mb

from helpers import SMALL


def tiny(backbone="resnet18"):
    torch.manual_seed(0)
    return build_faster_rcnn(backbone, 3, fpn_channels=16, roi_dim=32, **SMALL)


def batch(n=2):
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 64, 96, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])} for _ in range(n)]
    return images, targets


def assert_trains_and_predicts(model, images, targets):
    model.train()
    loss = sum(model(images, targets).values())
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        assert len(model(images)) == len(images)


@pytest.mark.parametrize("criterion", ["l1", "taylor", "group_norm", "random"])
def test_pruning_removes_channels_and_the_model_still_trains(criterion):
    model = tiny()
    images, targets = batch()
    params0, (gflops0, _) = count_params(model), count_gflops(model, images[0])
    report = prune_backbone(model, images[0], criterion, flops_reduction=0.3,
                            loss_fn=lambda: sum(model(images, targets).values()))
    assert count_params(model) < params0 and report["params_after"] == count_params(model)
    assert report["gflops_after"] <= 0.7 * gflops0 and report["gflops_before"] == pytest.approx(gflops0)
    assert report["tap_channels_after"][2] < 512  # C5 lost channels for real
    assert_trains_and_predicts(model, images, targets)


def test_uniform_channel_ratio_and_shallow_backbone():
    model = tiny("shallow")
    params0 = count_params(model.backbone.body)
    prune_backbone(model, batch()[0][0], "l1", flops_reduction=None, channel_ratio=0.5)
    assert count_params(model.backbone.body) < 0.5 * params0


def test_pruned_model_saves_and_loads_with_the_same_outputs(tmp_path):
    model = tiny()
    images, _ = batch()
    prune_backbone(model, images[0], "l1", flops_reduction=0.4)
    model.eval()
    torch.save(model, tmp_path / "pruned.pt")
    loaded = torch.load(tmp_path / "pruned.pt", weights_only=False).eval()
    x = torch.stack(images)
    with torch.no_grad():
        a, b = model.backbone(x), loaded.backbone(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fp16_weights_halve_the_size():
    model = tiny()
    assert size_mb(fp16_weights(model)) == pytest.approx(size_mb(model) / 2, rel=0.05)


# ---------------------------------------------------------------- YOLO (ultralytics)
def tiny_yolo(name="yolov8t"):
    from detectors.yolo import build_yolo
    torch.manual_seed(0)
    return build_yolo(name, 3)


def test_split_c2f_computes_the_same_function():
    from detectors.yolo import SplitC2f, split_c2f
    model = tiny_yolo().eval()
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model.model(x)[0]
        assert split_c2f(model.model) == 8  # YOLOv8: 4 C2f in the backbone, 4 in the neck
        after = model.model(x)[0]
    assert sum(isinstance(m, SplitC2f) for m in model.model.model) == 8
    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize("criterion", ["l1", "taylor", "group_norm", "random"])
def test_yolo_pruning_removes_channels_and_still_trains(criterion):
    model = tiny_yolo()
    images, targets = batch()
    params0, (gflops0, _) = count_params(model), count_gflops(model, images[0])
    head_out = [(c[-1].out_channels) for c in (*model.detect.cv2, *model.detect.cv3)]
    report = prune_backbone(model, images[0], criterion, flops_reduction=0.3,
                            loss_fn=lambda: sum(model(images, targets).values()))
    assert count_params(model) < params0 and report["gflops_after"] <= 0.7 * gflops0
    assert report["tap_channels_after"][0] < 32  # P3 lost channels for real (32 before)
    assert [(c[-1].out_channels) for c in (*model.detect.cv2, *model.detect.cv3)] == head_out  # outputs kept
    assert_trains_and_predicts(model, images, targets)


def test_pruned_yolo_round_to_and_save_load(tmp_path):
    model = tiny_yolo()
    images, _ = batch()
    prune_backbone(model, images[0], "l1", flops_reduction=0.4, round_to=8)
    convs = [m for m in model.model.model[:-1].modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    model.eval()
    torch.save(model, tmp_path / "pruned.pt")
    loaded = torch.load(tmp_path / "pruned.pt", weights_only=False).eval()
    x = torch.stack(images)
    with torch.no_grad():
        assert torch.equal(model.model(x)[0], loaded.model(x)[0])
