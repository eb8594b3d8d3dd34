"""Channel-wise distillation (``cwd``): each channel's spatial map becomes a distribution, and the student's
(after a 1×1 adapter) matches the teacher's; balanced to a ratio of the detector's own loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "cwd"
DEFAULTS = {"weight": 10.0, "tau": 1.0, "taps": ["p3", "p4", "p5"], "balance": 0.5}
SEARCH = {"balance": ("log", 0.05, 5.0), "taps": "taps", "tau": ("float", 1.0, 4.0)}
TEACHER = True
ADAPTED = True


def cwd_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Shu et al. 2021, "Channel-wise knowledge distillation for dense prediction".

    s and t have the same shape (N, C, H, W). For every (n, c) the H·W map becomes a distribution softmax(x / tau);
    loss = tau² · Σ_{n,c} KL(p_t ‖ p_s) / (N · C), with KL(p ‖ q) = Σ_hw p log(p / q).
    """
    n, c = student_feat.shape[:2]
    log_p_s = F.log_softmax(student_feat.flatten(2) / tau, dim=2)
    log_p_t = F.log_softmax(teacher_feat.flatten(2) / tau, dim=2)
    return tau * tau * (log_p_t.exp() * (log_p_t - log_p_s)).sum() / (n * c)


def tap_term(d, hp: dict, tap: str, s: torch.Tensor, t: torch.Tensor, targets, keys) -> torch.Tensor:
    return cwd_loss(s, t, hp.get("tau", 1.0))
