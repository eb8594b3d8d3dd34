"""Backbone bodies that return named stage outputs ``c3, c4, c5`` (strides 8, 16, 32). No pretrained weights.

- ``resnet50``: the deep teacher (torchvision's ResNet-50, randomly initialised).
- ``resnet18``: torchvision's ResNet-18.
- ``shallow``: the paper's idea of a shallow student: one BasicBlock per stage instead of two to three, and
  channels (24 stem, 32/64/128 at C3/C4/C5) a quarter of ResNet-18's. About 0.3 M parameters against
  ResNet-18's 11.2 M and ResNet-50's 23.5 M (see ``tests/test_detectors.py`` and the README for measured counts).
- ``shallow-xs``, ``shallow-s`` and ``shallow-l``: the same body at a quarter, half and twice those widths, the
  smaller and larger students of a size grid.

BatchNorm layers are ordinary trainable ``nn.BatchNorm2d`` (structured pruning needs them).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.resnet import BasicBlock


class ResNetBody(nn.Module):
    """A torchvision ResNet without its classifier, returning C3-C5."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2, self.layer3, self.layer4 = net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        c3 = self.layer2(self.stem(x))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return OrderedDict(c3=c3, c4=c4, c5=c5)


def _stage(in_ch: int, out_ch: int, blocks: int) -> nn.Sequential:
    down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, 2, bias=False), nn.BatchNorm2d(out_ch))
    layers = [BasicBlock(in_ch, out_ch, stride=2, downsample=down)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ShallowBody(nn.Module):
    """Stem to stride 4, then one BasicBlock stage each for C3, C4, C5."""

    def __init__(self, stem_channels: int = 24, channels: tuple[int, int, int] = (32, 64, 128), blocks: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True),
            nn.Conv2d(stem_channels, stem_channels, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True))
        self.layer2 = _stage(stem_channels, channels[0], blocks)
        self.layer3 = _stage(channels[0], channels[1], blocks)
        self.layer4 = _stage(channels[1], channels[2], blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    forward = ResNetBody.forward


BODIES = {
    "resnet50": (lambda: ResNetBody(resnet50(weights=None)), (512, 1024, 2048)),
    "resnet18": (lambda: ResNetBody(resnet18(weights=None)), (128, 256, 512)),
    "shallow": (lambda: ShallowBody(), (32, 64, 128)),
    "shallow-xs": (lambda: ShallowBody(6, (8, 16, 32)), (8, 16, 32)),
    "shallow-s": (lambda: ShallowBody(12, (16, 32, 64)), (16, 32, 64)),
    "shallow-l": (lambda: ShallowBody(48, (64, 128, 256)), (64, 128, 256)),
}


def build_body(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """The body and its C3-C5 channel counts."""
    if name not in BODIES:
        raise ValueError(f"unknown backbone '{name}' (known: {', '.join(BODIES)})")
    make, channels = BODIES[name]
    return make(), channels
