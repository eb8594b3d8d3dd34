"""torchvision Faster R-CNN with a named backbone, slim configurable heads and named feature taps.

The model is torchvision's own ``FasterRCNN``; only its parts are chosen here:

- ``model.backbone.body(x)`` returns ``c3, c4, c5`` (backbone stages) and ``model.backbone.fpn(c)`` returns
  ``p3, p4, p5, p6`` (FPN levels; ``p6`` is the max-pooled level used by the RPN only). Forward hooks on those two
  modules give every feature tap without a second pass.
- ``model.roi_heads.box_roi_pool`` is called with the sampled proposals and ``model.roi_heads.box_predictor``
  returns the RoI classification logits: hooks there give what Hinton KD needs.
- The transform normalises and batches but does not resize: images arrive already on a fixed canvas
  (``study.images``), so boxes stay in canvas pixels.

What a distiller, a pruner or a quantizer needs to know about the family is declared here, in :data:`FAMILY` (read
through :mod:`detectors`): its taps (the module whose output holds each, and its stride), where the network's input
and its RoI logits are, the channels of each tap of a built model, the teacher's feature pass and the RPN anchors.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detectors.backbones import build_body
from detectors.roi_align import SparseGradMultiScaleRoIAlign

BACKBONE_TAPS = ("c3", "c4", "c5")
FPN_TAPS = ("p3", "p4", "p5")


class NamedFPN(nn.Module):
    """torchvision's FPN over C3-C5 plus a max-pooled level, returning ``p3, p4, p5, p6``."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool())

    def forward(self, c: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        out = self.fpn(c)
        return OrderedDict(zip(("p3", "p4", "p5", "p6"), out.values()))


class TappedBackbone(nn.Module):
    def __init__(self, body: nn.Module, body_channels: tuple[int, ...], fpn_channels: int):
        super().__init__()
        self.body = body
        self.body_channels = body_channels
        self.fpn = NamedFPN(body_channels, fpn_channels)
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(x))


class CanvasTransform(GeneralizedRCNNTransform):
    """Normalise and batch; no resizing (images are already on the study's canvas)."""

    def resize(self, image, target=None):
        return image, target


def build_faster_rcnn(backbone: str, num_classes: int, fpn_channels: int = 128, roi_dim: int = 512,
                      anchor_sizes: tuple[int, ...] = (16, 32, 64, 128),
                      rpn_pre_nms_train: int = 1000, rpn_post_nms_train: int = 500,
                      rpn_pre_nms_test: int = 500, rpn_post_nms_test: int = 200,
                      rpn_batch_per_image: int = 256, box_batch_per_image: int = 256,
                      score_thresh: float = 0.001, detections_per_image: int = 100) -> FasterRCNN:
    """Faster R-CNN (torchvision) over ``backbone`` for ``num_classes`` foreground classes, randomly initialised."""
    body, channels = build_body(backbone)
    tapped = TappedBackbone(body, channels, fpn_channels)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * len(anchor_sizes))
    # torchvision's MultiScaleRoIAlign, with a faster CPU backward (detectors/roi_align.py; same gradient)
    roi_pool = SparseGradMultiScaleRoIAlign(featmap_names=list(FPN_TAPS), output_size=7, sampling_ratio=2)
    model = FasterRCNN(
        tapped, num_classes=None,
        rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, roi_dim),
        box_predictor=FastRCNNPredictor(roi_dim, num_classes + 1),
        rpn_pre_nms_top_n_train=rpn_pre_nms_train, rpn_post_nms_top_n_train=rpn_post_nms_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_test, rpn_post_nms_top_n_test=rpn_post_nms_test,
        rpn_batch_size_per_image=rpn_batch_per_image, box_batch_size_per_image=box_batch_per_image,
        box_score_thresh=score_thresh, box_detections_per_img=detections_per_image)
    model.transform = CanvasTransform(min_size=1, max_size=1, image_mean=[0.485, 0.456, 0.406],
                                      image_std=[0.229, 0.224, 0.225])
    model.detector_family = FAMILY["name"]
    return model


# ---------------------------------------------------------------- what the family exposes (see detectors/__init__)
# the FPN levels are read from the backbone's output (the FPN's, unchanged), so that they are still there when the
# backbone is one int8 or fake-quantized graph (methods.quantize_pt2e: QAT with distillation)
TORCHVISION_TAPS = {**{name: {"module": "backbone.body", "stride": 2 ** (i + 3)} for i, name in enumerate(BACKBONE_TAPS)},
                    **{name: {"module": "backbone", "stride": 2 ** (i + 3)} for i, name in enumerate(FPN_TAPS)}}


def torchvision_tap_channels(model: nn.Module) -> dict[str, int]:
    """Channels of every tap of a built (or pruned) model, from its own record of them (no forward pass)."""
    backbone = model.backbone
    return {**dict(zip(BACKBONE_TAPS, backbone.body_channels)), **{k: backbone.out_channels for k in FPN_TAPS}}


def torchvision_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A frozen teacher's taps for the normalised batch ``x``: body and FPN, one pass, no heads."""
    c = model.backbone.body(x)
    return {**c, **model.backbone.fpn(c)}


def torchvision_prune_setup(model: nn.Module, image: torch.Tensor):
    """(module to trace, example input, layers to keep, output transform) for torch-pruning: the backbone body is
    pruned; the FPN keeps its width (its lateral convolutions lose inputs only)."""
    return model.backbone, model.transform([image])[0].tensors, [model.backbone.fpn], None


@torch.no_grad()
def torchvision_after_prune(model: nn.Module, example: torch.Tensor) -> None:
    """Record the pruned body's channels (what :func:`torchvision_tap_channels` reads)."""
    model.backbone.body_channels = tuple(f.shape[1] for f in model.backbone.body(example).values())


def _level(tap: str) -> int:
    return int(tap[1:]) - 3  # c3/p3 -> 0 (stride 8), c4/p4 -> 1, c5/p5 -> 2


def grid_centres(h: int, w: int, stride: float, offset: float, device) -> torch.Tensor:
    """Centres (H, W, 2) as (x, y) of a stride-``stride`` grid, ``offset`` cells from the corner."""
    ys, xs = torch.meshgrid((torch.arange(h, device=device) + offset) * stride,
                            (torch.arange(w, device=device) + offset) * stride, indexing="ij")
    return torch.stack([xs, ys], dim=-1).float()


def rpn_anchors(model: nn.Module, tap: str, h: int, w: int, stride: float) -> torch.Tensor:
    """The RPN's own anchors at the level of ``tap`` (torchvision centres them on x·stride): (H, W, A, 4) xyxy."""
    gen = model.rpn.anchor_generator
    level = _level(tap)
    base = gen.generate_anchors(gen.sizes[level], gen.aspect_ratios[level]).to(next(model.parameters()).device)
    centres = grid_centres(h, w, stride, 0.0, base.device).repeat(1, 1, 2)  # (H, W, 4) as x, y, x, y
    return centres[:, :, None, :] + base[None, None]


FAMILY = {
    "name": "faster_rcnn",
    "input": "backbone",  # the module whose first input is the normalised image batch
    "int8_heads": ("roi_heads.box_head",),  # int8 beside the input part, on its own inputs (methods.quantize_pt2e)
    "taps": TORCHVISION_TAPS,  # each tap is the key of the same name in its module's output dict
    "roi": {"pool": "roi_heads.box_roi_pool", "head": "roi_heads.box_head", "predictor": "roi_heads.box_predictor",
            "classifier_loss": "loss_classifier"},  # the key of its softmax cross-entropy in the losses
    "tap_channels": torchvision_tap_channels,
    "teacher": torchvision_features,
    "anchors": rpn_anchors,
    "prune_setup": torchvision_prune_setup,
    "after_prune": torchvision_after_prune,
    "pruned_parts": "backbone body (FPN lateral inputs follow)",
    "pruned_taps": BACKBONE_TAPS,
}
