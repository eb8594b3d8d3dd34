"""FitNets (``fitnets``): a 1×1 conv + BN adapter maps a student feature to the teacher's shape, and the mean squared
error between them is minimised, per tap."""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "fitnets"
DEFAULTS = {"weight": 100.0, "taps": ["c3", "c4", "c5"]}
SEARCH = {"weight": ("log", 0.01, 100.0), "taps": "taps"}
TEACHER = True
ADAPTED = True


def fitnets_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Romero et al. 2015, "FitNets: hints for thin deep nets".

    loss = mean over all elements of (r(s) - t)², where r(s) is the student's hint already passed through its
    regressor (adapter), so both tensors have the same shape.
    """
    return F.mse_loss(student_feat, teacher_feat)


def tap_term(d, hp: dict, tap: str, s: torch.Tensor, t: torch.Tensor, targets, keys) -> torch.Tensor:
    return fitnets_loss(s, t)
