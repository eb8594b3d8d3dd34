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

SMALL = dict(rpn_pre_nms_train=50, rpn_post_nms_train=20, rpn_pre_nms_test=20, rpn_post_nms_test=10,
             box_batch_per_image=16)


def tiny(backbone="resnet18"):
    torch.manual_seed(0)
    return build_faster_rcnn(backbone, 3, fpn_channels=16, roi_dim=32, **SMALL)


def batch(n=2):
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 64, 96, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])} for _ in range(n)]
    return images, targets


@pytest.mark.parametrize("criterion", ["l1", "taylor", "group_norm", "random"])
def test_pruning_removes_channels_and_the_model_still_trains(criterion):
    model = tiny()
    images, targets = batch()
    params0, (gflops0, _) = count_params(model), count_gflops(model, images[0])
    report = prune_backbone(model, images[0], criterion, flops_reduction=0.3,
                            loss_fn=lambda: sum(model(images, targets).values()))
    assert count_params(model) < params0 and report["params_after"] == count_params(model)
    assert report["gflops_after"] <= 0.7 * gflops0 and report["gflops_before"] == pytest.approx(gflops0)
    assert report["body_channels_after"][2] < 512  # C5 lost channels for real
    model.train()
    loss = sum(model(images, targets).values())
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        assert len(model(images)) == 2


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
