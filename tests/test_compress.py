"""Structured pruning and int8 quantization of tiny detectors: real shrinkage, still trains, close outputs,
save and load."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detectors.faster_rcnn import build_faster_rcnn
from methods.prune import prune_backbone
from methods.quantize import fp16_weights, load_int8, quantize_backbone_int8
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


def test_int8_backbone_stays_close_to_float_and_saves(tmp_path):
    model = tiny().eval()
    calibration = torch.rand(8, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    qmodel, info = quantize_backbone_int8(model, calibration)
    assert info["int8_parts"] == "backbone body + FPN"
    x = model.transform(list(calibration))[0].tensors
    with torch.no_grad():
        ref, out = model.backbone(x), qmodel.backbone(x)
    for k in ref:
        assert F.cosine_similarity(ref[k].flatten(), out[k].flatten(), dim=0) >= 0.99, k
    assert size_mb(qmodel.backbone) < 0.4 * size_mb(model.backbone)
    with torch.no_grad():
        detections = qmodel(list(calibration[:2]))
    assert len(detections) == 2
    torch.save(qmodel.state_dict(), tmp_path / "int8.pt")
    loaded = load_int8(tiny().eval(), torch.load(tmp_path / "int8.pt"), torch.rand(2, 3, 64, 96))
    with torch.no_grad():
        again = loaded.backbone(x)
    assert all(torch.equal(out[k], again[k]) for k in out)


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


def briefly_trained_yolo():
    """A tiny YOLO after 40 SGD steps on 16 bundled BCCD images at 128 px, and those images: an untrained
    ultralytics model's features are noise of shrinking scale, which says nothing about quantization."""
    from study.data import load_dataset
    from study.images import load_images
    data = load_dataset("voc:data/bccd")
    images = load_images(data.splits["train"][:16], (96, 128), 128)
    x = images.images.float() / 255
    targets = [{"boxes": b, "labels": label} for b, label in zip(images.boxes, images.labels)]
    model = tiny_yolo("yolov8t").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step in range(40):
        idx = [(step * 8 + j) % 16 for j in range(8)]
        loss = sum(model(list(x[idx]), [targets[j] for j in idx]).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    return model.eval(), x


def test_yolo_int8_trunk_stays_close_to_float_and_saves(tmp_path):
    from detectors.yolo import YOLOTrunk, split_c2f
    from methods.quantize import quantize_int8
    model, calibration = briefly_trained_yolo()
    qmodel, info = quantize_int8(model, calibration)
    assert info["int8_parts"] == "backbone + neck"
    reference = YOLOTrunk(split_c2f(model.model) and model.model).eval()
    with torch.no_grad():
        ref, out = reference(calibration), qmodel.model.trunk(calibration)
    for r, o in zip(ref, out):
        assert F.cosine_similarity(r.flatten(), o.flatten(), dim=0) >= 0.99
        mean = r.mean(dim=(0, 2, 3), keepdim=True)  # and about each channel's mean, a stricter check
        assert F.cosine_similarity((r - mean).flatten(), (o - mean).flatten(), dim=0) >= 0.98
    assert size_mb(qmodel.model.trunk) < 0.4 * size_mb(reference)  # int8 weights; the Detect head stays float
    assert size_mb(qmodel) < size_mb(model)
    with torch.no_grad():
        detections = qmodel(list(calibration[:2]))
    assert len(detections) == 2 and detections[0]["boxes"].shape[1] == 4
    torch.save(qmodel.state_dict(), tmp_path / "int8.pt")
    loaded = load_int8(tiny_yolo("yolov8t").eval(), torch.load(tmp_path / "int8.pt"), calibration[:2])
    with torch.no_grad():
        again = loaded.model.trunk(calibration)
    assert all(torch.equal(a, b) for a, b in zip(out, again))
