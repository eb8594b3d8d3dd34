"""Shared by the feature methods that compare maps of different sizes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def match_spatial(student_feat: torch.Tensor, teacher_feat: torch.Tensor):
    """Average-pool the larger map to the smaller (H, W), each dimension on its own (maps need not be square)."""
    sh, sw = student_feat.shape[-2:]
    th, tw = teacher_feat.shape[-2:]
    size = (min(sh, th), min(sw, tw))
    if (sh, sw) != size:
        student_feat = F.adaptive_avg_pool2d(student_feat, size)
    if (th, tw) != size:
        teacher_feat = F.adaptive_avg_pool2d(teacher_feat, size)
    return student_feat, teacher_feat
