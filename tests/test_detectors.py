"""Faster R-CNN over every backbone: forward/backward on tiny inputs, named taps, sizes."""
from __future__ import annotations

import pytest
import torch

from detectors.backbones import BODIES, build_body
from detectors.faster_rcnn import build_faster_rcnn
from study.cost import count_params


def tiny_batch(n=2, size=(64, 96)):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 60.0, 30.0]]),
                "labels": torch.tensor([1, 3])} for _ in range(n)]
    return images, targets


@pytest.mark.parametrize("backbone", sorted(BODIES))
def test_forward_backward_and_eval(backbone):
    torch.manual_seed(0)
    model = build_faster_rcnn(backbone, num_classes=3, fpn_channels=16, roi_dim=32,
                              rpn_pre_nms_train=50, rpn_post_nms_train=20, rpn_pre_nms_test=20, rpn_post_nms_test=10)
    images, targets = tiny_batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4


@pytest.mark.parametrize("backbone", sorted(BODIES))
def test_body_taps_have_declared_channels_and_strides(backbone):
    body, channels = build_body(backbone)
    feats = body(torch.rand(1, 3, 64, 96))
    assert list(feats) == ["c3", "c4", "c5"]
    for (name, f), ch, stride in zip(feats.items(), channels, (8, 16, 32)):
        assert f.shape[1:] == (ch, 64 // stride, 96 // stride), name


def test_fpn_taps_and_batchnorm_stays_trainable():
    model = build_faster_rcnn("shallow", 3, fpn_channels=16, roi_dim=32)
    feats = model.backbone(torch.rand(1, 3, 64, 96))
    assert list(feats) == ["p3", "p4", "p5", "p6"] and feats["p3"].shape == (1, 16, 8, 12)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.weight.requires_grad for m in bns)


def test_teacher_is_larger_than_every_student():
    sizes = {name: count_params(build_body(name)[0]) for name in BODIES}
    assert sizes["resnet50"] > sizes["resnet18"] > sizes["shallow"]
    assert sizes["shallow"] < 0.05 * sizes["resnet18"]


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_body("vgg")


FAMILY_MODELS = [("faster_rcnn", "shallow"), ("faster_rcnn", "resnet18"), ("faster_rcnn", "resnet50"),
                 ("fcos", "shallow"), ("fcos", "resnet18"),
                 ("yolo", "yolov8p"), ("yolo", "yolov8t"), ("yolo", "yolov8n"), ("yolo", "yolov8s"), ("yolo", "yolo11n")]


@pytest.mark.parametrize("family, model_name", FAMILY_MODELS)
def test_declared_taps_match_a_real_forward(family, model_name):
    """Every family x model: each declared tap is captured by the generic hooks with the declared channels and
    stride, and the declared anchors cover its grid."""
    from detectors import declaration, family_of
    from detectors.faster_rcnn import build_faster_rcnn
    from detectors.fcos import build_fcos
    from detectors.yolo import build_yolo
    from methods.distill.distiller import register_hooks

    torch.manual_seed(0)
    build = {"faster_rcnn": lambda: build_faster_rcnn(model_name, 3, fpn_channels=16, roi_dim=16),
             "fcos": lambda: build_fcos(model_name, 3, fpn_channels=32), "yolo": lambda: build_yolo(model_name, 3)}
    model = build[family]().eval()
    assert family_of(model) == family
    decl = declaration(model)
    captured: dict = {}
    hooks = register_hooks(model, decl, captured)
    with torch.no_grad():
        model([torch.rand(3, 64, 96)])
    for h in hooks:
        h.remove()
    assert tuple(captured["x"].shape[-2:]) == (64, 96)
    channels = decl["tap_channels"](model)
    assert set(captured["taps"]) == set(decl["taps"]) == set(channels)
    for name, tap in decl["taps"].items():
        feat = captured["taps"][name]
        assert feat.shape[1] == channels[name], name
        assert (64 / feat.shape[-2], 96 / feat.shape[-1]) == (tap["stride"], tap["stride"]), name
        if "anchors" in decl:
            anchors = decl["anchors"](model, name, feat.shape[-2], feat.shape[-1], tap["stride"])
            assert anchors.shape[:2] == feat.shape[-2:] and anchors.shape[-1] == 4
    if "dense_logits" in decl:
        assert captured["dense_logits"].shape[-1] == 3  # one logit per class at every location
