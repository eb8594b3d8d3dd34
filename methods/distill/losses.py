"""Distillation losses as small pure functions. Each returns the unweighted loss; weights are hyperparameters.

Conventions follow the literature's reference code (see the README): s = student, t = teacher; the caller passes
the teacher's tensors detached.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network".

    loss = T² · KL( softmax(t/T) ‖ softmax(s/T) ), summed over classes and averaged over the N rows ("batchmean").
    Logits have shape (N, C).
    """
    T = temperature
    return F.kl_div(F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),
                    reduction="batchmean") * T * T


def sigmoid_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD for sigmoid-classified dense heads (YOLOv8, FCOS): one binary distribution per class.

    Such heads score every class independently with a sigmoid, so there is no softmax over classes to soften.
    Each (location, class) logit is a Bernoulli distribution; with p = σ(t/T) and q = σ(s/T),
    loss = T² · (1/N) Σ_rows Σ_c [ p log(p/q) + (1-p) log((1-p)/(1-q)) ],
    the binary KL summed over classes and averaged over the N rows (locations), the "batchmean" of
    :func:`hinton_kd_loss`. KL rather than BCE so that the loss is 0 when the student matches the teacher (the
    two differ by the teacher's entropy, a constant). Logits have shape (N, C).
    """
    T = temperature
    s, t = student_logits / T, teacher_logits / T
    p = torch.sigmoid(t)
    cross_entropy = F.binary_cross_entropy_with_logits(s, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(t, p, reduction="none")
    return (cross_entropy - entropy).sum() / s.shape[0] * T * T


def fitnets_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Romero et al. 2015, "FitNets: hints for thin deep nets".

    loss = mean over all elements of (r(s) - t)², where r(s) is the student's hint already passed through its
    regressor (adapter), so both tensors have the same shape.
    """
    return F.mse_loss(student_feat, teacher_feat)


def _match_spatial(student_feat: torch.Tensor, teacher_feat: torch.Tensor):
    """Average-pool the larger map to the smaller (H, W), each dimension on its own (maps need not be square)."""
    sh, sw = student_feat.shape[-2:]
    th, tw = teacher_feat.shape[-2:]
    size = (min(sh, th), min(sw, tw))
    if (sh, sw) != size:
        student_feat = F.adaptive_avg_pool2d(student_feat, size)
    if (th, tw) != size:
        teacher_feat = F.adaptive_avg_pool2d(teacher_feat, size)
    return student_feat, teacher_feat


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """a(f) = l2_normalize(flatten(mean_c(f^p))): (N, C, H, W) -> (N, H·W)."""
    return F.normalize(feat.pow(p).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017, "Paying more attention to attention" (published code's form).

    loss = mean over (N, H·W) of (a(s) - a(t))², a(f) = l2_normalize(flatten(mean_c(f^p))).
    Channel counts may differ; the larger map is average-pooled to the smaller H × W first.
    """
    s, t = _match_spatial(student_feat, teacher_feat)
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


def _poly2_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over the batch and channel pairs (i, j) of (a_i · b_j)²; a: (N, Ca, HW), b: (N, Cb, HW)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def _nst_normalized(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = _match_spatial(student_feat, teacher_feat)
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
