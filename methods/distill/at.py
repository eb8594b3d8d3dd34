"""Attention transfer (``at``): the student matches the teacher's spatial attention map, the L2-normalised channel
mean of f^p, per tap; channel counts may differ."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.distill._spatial import match_spatial

NAME = "at"
DEFAULTS = {"weight": 1000.0, "p": 2, "taps": ["c3", "c4", "c5"]}
SEARCH = {"weight": ("log", 10.0, 10000.0), "p": ("choice", [1, 2, 4]), "taps": "taps"}
TEACHER = True


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """a(f) = l2_normalize(flatten(mean_c(f^p))): (N, C, H, W) -> (N, H·W)."""
    return F.normalize(feat.pow(p).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017, "Paying more attention to attention" (published code's form).

    loss = mean over (N, H·W) of (a(s) - a(t))², a(f) = l2_normalize(flatten(mean_c(f^p))).
    Channel counts may differ; the larger map is average-pooled to the smaller H × W first.
    """
    s, t = match_spatial(student_feat, teacher_feat)
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


def tap_term(d, hp: dict, tap: str, s: torch.Tensor, t: torch.Tensor, targets, keys) -> torch.Tensor:
    return attention_transfer_loss(s, t, hp.get("p", 2))
