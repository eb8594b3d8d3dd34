"""FitNets regressors: train-time modules that map a student feature to its teacher feature's shape.

They are not part of the deployed student; their parameters are reported apart (``adapter_params`` in runs.csv).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureAdapter(nn.Module):
    """1x1 conv + BN from the student's channels to the teacher's; bilinear resize to the teacher's H x W if needed."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(teacher_channels)

    def forward(self, student_feat: torch.Tensor, teacher_hw: tuple[int, int]) -> torch.Tensor:
        out = self.bn(self.conv(student_feat))
        if tuple(out.shape[-2:]) != tuple(teacher_hw):
            out = F.interpolate(out, size=teacher_hw, mode="bilinear", align_corners=False)
        return out
