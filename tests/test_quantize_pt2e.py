"""PT2E (torchao) int8 of tiny detectors: non-strict export of modules called twice, close outputs, the lowered
graph, full detectors still detecting. Skipped where torchao is not installed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")

from detectors.faster_rcnn import build_faster_rcnn  # noqa: E402
from methods.quantize_pt2e import lower_x86, quantize_int8_pt2e, quantize_module, split_repeated_calls  # noqa: E402
from helpers import SMALL, one_thread  # noqa: E402


@pytest.fixture(autouse=True)
def torch_on_one_thread():
    with one_thread():
        yield


def tiny(backbone="resnet18"):
    torch.manual_seed(0)
    return build_faster_rcnn(backbone, 3, fpn_channels=16, roi_dim=32, **SMALL).eval()


def images(n=8, h=64, w=96):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(5))


def test_non_strict_export_of_a_block_calling_relu_twice_quantizes():
    """torchvision's BasicBlock calls ``self.relu`` twice: the repeated call gets its own partition."""
    from torchvision.models.resnet import BasicBlock
    block = BasicBlock(8, 8).eval()
    x = torch.rand(2, 8, 16, 16)
    gm = torch.export.export(block, (x,), strict=False).module()
    assert split_repeated_calls(gm) >= 1
    q = quantize_module(block, [x, torch.rand(2, 8, 16, 16)], strict=False)
    with torch.no_grad():
        assert F.cosine_similarity(block(x).flatten(), q(x).flatten(), dim=0) >= 0.99


def test_faster_rcnn_backbone_int8_is_close_runs_any_batch_and_lowers():
    model = tiny()
    calibration = images()
    qmodel, info = quantize_int8_pt2e(model, calibration)
    assert info["int8_parts"].startswith("backbone") and info["export"] == "non-strict"
    assert qmodel.backbone.out_channels == model.backbone.out_channels
    x = model.transform(list(calibration))[0].tensors
    with torch.no_grad():
        qmodel.eval()  # what the study calls before evaluating
        ref, out = model.backbone(x), qmodel.backbone(x)  # batch 8; calibrated in batches of 8
        assert list(out) == list(ref)
        for k in ref:
            assert F.cosine_similarity(ref[k].flatten(), out[k].flatten(), dim=0) >= 0.99, k
        assert len(qmodel(list(calibration[:3]))) == 3  # another batch size, through the float heads
        lowered = lower_x86(qmodel.backbone, x[:1])
        fast = lowered(x[:1])
    for k in ref:
        assert F.cosine_similarity(out[k][:1].flatten(), fast[k].flatten(), dim=0) >= 0.999, k
    assert any("onednn" in str(n.target) for n in lowered.graph.nodes)  # fused into oneDNN int8 kernels


def briefly_trained_yolo():
    """yolov8p after 10 SGD steps on 8 bundled BCCD images at 64 px: an untrained ultralytics model's features
    are noise of shrinking scale."""
    from detectors.yolo import build_yolo
    from study.data import load_dataset
    from study.images import load_images
    data = load_dataset("voc:data/bccd")
    loaded = load_images(data.splits["train"][:8], (64, 64), 64)
    x = loaded.images.float() / 255
    targets = [{"boxes": b, "labels": label} for b, label in zip(loaded.boxes, loaded.labels)]
    torch.manual_seed(0)
    model = build_yolo("yolov8p", 3).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(10):
        loss = sum(model(list(x), targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    return model.eval(), x


def test_yolo_trunk_int8_is_close_and_the_detector_detects():
    from detectors.yolo import YOLOTrunk
    model, x = briefly_trained_yolo()
    qmodel, info = quantize_int8_pt2e(model, x)
    assert info["int8_parts"] == "backbone + neck"
    with torch.no_grad():
        ref, out = YOLOTrunk(model.model).eval()(x), qmodel.model.trunk(x)
        for r, o in zip(ref, out):
            assert F.cosine_similarity(r.flatten(), o.flatten(), dim=0) >= 0.99
        detections = qmodel(list(x[:2]))
    assert len(detections) == 2 and detections[0]["boxes"].shape[1] == 4
