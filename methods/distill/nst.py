"""Neuron selectivity transfer (``nst``): the student matches the distribution of the teacher's channel activation
patterns, a squared MMD with a degree-2 polynomial kernel over L2-normalised channel vectors, per tap. The teacher's
own kernel term does not depend on the student, so it is computed once per (tap, image, flip) and kept."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.distill._spatial import match_spatial

NAME = "nst"
DEFAULTS = {"weight": 50.0, "taps": ["c3", "c4", "c5"]}
SEARCH = {"weight": ("log", 1.0, 500.0), "taps": "taps"}
TEACHER = True


def _poly2_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over the batch and channel pairs (i, j) of (a_i · b_j)²; a: (N, Ca, HW), b: (N, Cb, HW)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def _nst_normalized(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = match_spatial(student_feat, teacher_feat)
    return F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2)


def nst_teacher_kernel(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Per image n, mean over the teacher's channel pairs (i, j) of K(t_i, t_j) = (t_i · t_j)²: shape (N,).

    NST's mean K(t, t) term is the mean of these (every image has the same channel count); it does not depend on the
    student, so a frozen teacher's values can be cached per image (the student's map sets the pooled H × W)."""
    _, t = _nst_normalized(student_feat, teacher_feat)
    return torch.bmm(t, t.transpose(1, 2)).pow(2).mean((1, 2))


def nst_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor,
             teacher_kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Huang & Wang 2017, "Like what you like: knowledge distill via neuron selectivity transfer".

    Each channel's H·W vector is L2-normalised; with the degree-2 polynomial kernel K(a, b) = (a · b)²,
    loss = mean K(t, t) + mean K(s, s) - 2 · mean K(s, t)   (squared MMD with means over channel pairs and the batch).
    Channel counts may differ; the larger map is average-pooled to the smaller H × W first. ``teacher_kernel``:
    mean K(t, t) computed before (:func:`nst_teacher_kernel`, averaged over the batch), else computed here.
    """
    s, t = _nst_normalized(student_feat, teacher_feat)
    k_tt = _poly2_kernel_mean(t, t) if teacher_kernel is None else teacher_kernel
    return k_tt + _poly2_kernel_mean(s, s) - 2 * _poly2_kernel_mean(s, t)


@torch.no_grad()
def teacher_kernel(d, tap: str, s: torch.Tensor, t: torch.Tensor, keys) -> torch.Tensor | None:
    """The batch's mean K(t, t) from per-(tap, image, flip) values computed once and kept in the distiller ``d``
    (its largest kernel: the teacher has the most channels); None without keys."""
    if keys is None:
        return None
    kept = d._teacher_kernels
    missing = [i for i, k in enumerate(keys) if (tap, k) not in kept]
    if missing:
        for i, value in zip(missing, nst_teacher_kernel(s[missing], t[missing])):
            kept[(tap, keys[i])] = value
    return torch.stack([kept[(tap, k)] for k in keys]).mean()


def tap_term(d, hp: dict, tap: str, s: torch.Tensor, t: torch.Tensor, targets, keys) -> torch.Tensor:
    return nst_loss(s, t, teacher_kernel(d, tap, s, t, keys))
