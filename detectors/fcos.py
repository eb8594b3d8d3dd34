"""torchvision FCOS (single-stage, anchor-free) over the same backbones and FPN as the Faster R-CNN builder.

Holding ``backbone`` and ``fpn_channels`` fixed, a study can compare a two-stage and a single-stage head, and
distil both the same way: ``model.backbone.body`` gives ``c3..c5`` and ``model.backbone.fpn`` gives ``p3..p6``
(FCOS predicts on all four levels, strides 8-64), and ``model.head.classification_head`` returns the dense
sigmoid class logits (one row per location) that Hinton KD compares.

torchvision's FCOS indexes its one-hot class targets by label (0-based, no background class), while the study's
labels are 1-based as torchvision's two-stage detectors want them: :class:`FCOSDetector` shifts them by one on the
way in and out, so it has exactly ``num_classes`` sigmoid logits.
"""
from __future__ import annotations

from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead

import torch
from torch import nn

from detectors.backbones import build_body
from detectors.faster_rcnn import (BACKBONE_TAPS, TORCHVISION_TAPS, CanvasTransform, TappedBackbone, grid_centres,
                                   torchvision_after_prune, torchvision_features, torchvision_prune_setup,
                                   torchvision_tap_channels)

ANCHOR_FREE_SCALE = 8  # FGFI on an anchor-free head: one square of 8 x stride per point (ATSS's base anchor)


class FCOSDetector(FCOS):
    """torchvision's FCOS taking and returning the study's 1-based labels."""

    detector_family = "fcos"

    def forward(self, images, targets=None):
        if targets is not None:
            targets = [dict(t, labels=t["labels"] - 1) for t in targets]
        out = super().forward(images, targets)
        if not self.training:
            out = [dict(d, labels=d["labels"] + 1) for d in out]
        return out


def build_fcos(backbone: str, num_classes: int, fpn_channels: int = 128, head_convs: int = 4,
               score_thresh: float = 0.05, nms_thresh: float = 0.6, detections_per_image: int = 100,
               topk_candidates: int = 1000) -> FCOSDetector:
    """FCOS (torchvision) over ``backbone`` for ``num_classes`` foreground classes, randomly initialised."""
    body, channels = build_body(backbone)
    tapped = TappedBackbone(body, channels, fpn_channels)
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,), (64,)), aspect_ratios=((1.0,),) * 4)  # one point per cell
    head = FCOSHead(fpn_channels, num_anchors=1, num_classes=num_classes, num_convs=head_convs)
    model = FCOSDetector(tapped, num_classes=num_classes, anchor_generator=anchors, head=head,
                 score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_image,
                 topk_candidates=topk_candidates)
    model.transform = CanvasTransform(min_size=1, max_size=1, image_mean=[0.485, 0.456, 0.406],
                                      image_std=[0.229, 0.224, 0.225])
    return model


def point_anchors(offset: float):
    """Anchors of an anchor-free head for FGFI: one square of ANCHOR_FREE_SCALE x stride per point, centred where the
    head places its points (``offset`` cells from the corner): (H, W, 1, 4) xyxy."""
    def anchors(model: nn.Module, tap: str, h: int, w: int, stride: float) -> torch.Tensor:
        centres = grid_centres(h, w, stride, offset, next(model.parameters()).device)
        half = ANCHOR_FREE_SCALE * stride / 2
        return torch.cat([centres - half, centres + half], dim=-1)[:, :, None, :]
    return anchors


def fcos_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A frozen teacher's taps and its dense class logits (one row per location) for the normalised batch ``x``."""
    feats = torchvision_features(model, x)
    return feats | {"dense_logits": model.head.classification_head([feats[k] for k in ("p3", "p4", "p5", "p6")])}


FAMILY = {
    "name": "fcos",
    "input": "backbone",
    "taps": TORCHVISION_TAPS,
    "dense_logits": {"module": "head.classification_head", "pick": lambda output: output},  # (N, locations, C)
    "tap_channels": torchvision_tap_channels,
    "teacher": fcos_features,
    "anchors": point_anchors(0.0),  # torchvision's FCOS puts its points at x·stride
    "prune_setup": torchvision_prune_setup,
    "after_prune": torchvision_after_prune,
    "pruned_parts": "backbone body (FPN lateral inputs follow)",
    "pruned_taps": BACKBONE_TAPS,
}
