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


# ---------------------------------------------------------------- detection-specific feature distillation
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


def cwd_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Shu et al. 2021, "Channel-wise knowledge distillation for dense prediction".

    s and t have the same shape (N, C, H, W). For every (n, c) the H·W map becomes a distribution softmax(x / tau);
    loss = tau² · Σ_{n,c} KL(p_t ‖ p_s) / (N · C), with KL(p ‖ q) = Σ_hw p log(p / q).
    """
    n, c = student_feat.shape[:2]
    log_p_s = F.log_softmax(student_feat.flatten(2) / tau, dim=2)
    log_p_t = F.log_softmax(teacher_feat.flatten(2) / tau, dim=2)
    return tau * tau * (log_p_t.exp() * (log_p_t - log_p_s)).sum() / (n * c)


def fgfi_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wang et al. 2019, "Distilling object detectors with fine-grained feature imitation".

    s (adapted) and t are (N, C, H, W), mask (N, H, W) of 0/1 marks the near-object locations (:func:`fgfi_mask`);
    loss = Σ_{n,c,h,w} M[n,h,w] · (s − t)² / (2 · Σ_{n,h,w} M), and 0 when the mask is empty.
    """
    mask = mask.to(student_feat.dtype)
    total = mask.sum()
    if total == 0:
        return student_feat.sum() * 0.0  # keeps the graph (and the device) of the student's map
    return (mask.unsqueeze(1) * (student_feat - teacher_feat).pow(2)).sum() / (2 * total)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of a (A, 4) with every box of b (B, 4), xyxy: (A, B)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def fgfi_mask(anchors: torch.Tensor, boxes: torch.Tensor, psi: float = 0.5) -> torch.Tensor:
    """FGFI's imitation region of one image at one level: anchors (H, W, A, 4) xyxy in input pixels (A anchors per
    location), ground-truth boxes (K, 4). For each box, the anchors whose IoU with it exceeds ψ · (that box's best
    anchor IoU) are kept; a location is in the mask if any of its anchors is. Returns (H, W) of 0/1."""
    h, w, a, _ = anchors.shape
    if len(boxes) == 0:
        return torch.zeros(h, w, device=anchors.device)
    iou = box_iou(anchors.reshape(-1, 4), boxes)  # (H·W·A, K)
    best = iou.max(dim=0).values  # per box
    keep = (iou > psi * best[None, :]) & (best[None, :] > 0)
    return keep.any(dim=1).reshape(h, w, a).any(dim=2).float()


def ld_loss(student_bins: torch.Tensor, teacher_bins: torch.Tensor, tau: float = 10.0) -> torch.Tensor:
    """Zheng et al. 2022, "Localization distillation for dense object detection", on box edges predicted as
    distributions over bins (YOLOv8's DFL head, GFL).

    student_bins, teacher_bins: (E, B) logits, one row per box edge of the positive locations (4 per location);
    loss = tau² · mean over the E edges of KL(softmax(t / tau) ‖ softmax(s / tau)).
    """
    if student_bins.shape[0] == 0:
        return student_bins.sum() * 0.0
    return F.kl_div(F.log_softmax(student_bins / tau, dim=1), F.softmax(teacher_bins / tau, dim=1),
                    reduction="batchmean") * tau * tau


def label_smoothing_term(logits: torch.Tensor, cross_entropy: torch.Tensor) -> torch.Tensor:
    """The term that turns a softmax classifier's cross-entropy into label-smoothed cross-entropy (Szegedy et al.
    2016), a control with no teacher: soft targets that carry no knowledge.

    With K classes (background included), logits z (R, K) and the detector's own mean cross-entropy CE,
    U = mean over rows of -(1/K) Σ_k log softmax(z)_k, and ε · (U - CE) added to CE gives
    (1 - ε) · CE + ε · U, which is ``F.cross_entropy(z, y, label_smoothing=ε)``. The method's weight is ε.
    """
    uniform = -torch.log_softmax(logits, dim=1).mean(1).mean()
    return uniform - cross_entropy
