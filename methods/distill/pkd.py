"""PKD (``pkd``): detection feature distillation on the FPN or neck maps the heads read, by Pearson correlation: the
student's map passes a 1×1 adapter to the teacher's shape, then both are standardised per channel. Scale-free, so
its weight is set by ``balance`` (a ratio to the detector's own loss) rather than a fixed number."""
from __future__ import annotations

import torch

NAME = "pkd"
DEFAULTS = {"weight": 6.0, "taps": ["p3", "p4", "p5"], "balance": 0.5}
SEARCH = {"balance": ("log", 0.05, 5.0), "taps": "taps"}
TEACHER = True
ADAPTED = True


def _standardise_channels(x: torch.Tensor) -> torch.Tensor:
    """Each channel of (N, C, H, W) minus its mean over (N, H, W), over its unbiased std over (N, H, W) + 1e-6."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=True)
    return (x - mean) / (std + 1e-6)


def pkd_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Cao et al. 2022, "PKD: general distillation framework for object detectors via Pearson correlation
    coefficient".

    s and t have the same shape (N, C, H, W) (the student's map passes its 1x1 adapter first). Each channel of each
    is standardised over (N, H, W): x̂ = (x − mean) / (std_unbiased + 1e-6); loss = ½ · mean over all elements of
    (ŝ − t̂)², i.e. 1 − Pearson's r per channel (up to the n/(n−1) of the unbiased std). Scale-free: the loss does
    not grow with the magnitude of either map.
    """
    return 0.5 * (_standardise_channels(student_feat) - _standardise_channels(teacher_feat)).pow(2).mean()


def tap_term(d, hp: dict, tap: str, s: torch.Tensor, t: torch.Tensor, targets, keys) -> torch.Tensor:
    return pkd_loss(s, t)
