"""Distillation losses: hand-computed values, independent implementations, zero at equality, gradients, shapes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.distill import attention_transfer_loss, fitnets_loss, hinton_kd_loss, nst_loss, sigmoid_kd_loss
from methods.distill import nst_teacher_kernel


# ------------------------------------------------------------------ hand-computed values
def test_hinton_hand_value_at_T1_and_T2():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)]])
    # T=1: p_t = (1/4, 3/4), q_s = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2)
    expected_t1 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert hinton_kd_loss(s, t, 1.0).item() == pytest.approx(expected_t1, abs=1e-6)
    # T=2: p_t = (1, sqrt 3)/(1 + sqrt 3), q_s uniform; times T^2 = 4
    p = [1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))]
    expected_t2 = 4 * sum(pi * math.log(pi / 0.5) for pi in p)
    assert hinton_kd_loss(s, t, 2.0).item() == pytest.approx(expected_t2, abs=1e-6)
    # batchmean: two identical rows give the same value, not half of it (reduction="mean" would divide by N*C)
    assert hinton_kd_loss(s.repeat(2, 1), t.repeat(2, 1), 2.0).item() == pytest.approx(expected_t2, abs=1e-6)


def test_fitnets_hand_value():
    s = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([[[[1.0, 3.0]]]])
    assert fitnets_loss(s, t).item() == pytest.approx((1 + 9) / 2)


def test_attention_transfer_hand_value():
    s = torch.tensor([[[[1.0, 1.0]]]])  # a(s) = (1, 1)/sqrt 2
    t = torch.tensor([[[[1.0, 0.0]]]])  # a(t) = (1, 0)
    # mean of ((1/sqrt2 - 1)^2, (1/sqrt2)^2) = 1 - 1/sqrt 2
    assert attention_transfer_loss(s, t).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


def test_nst_hand_values():
    s = torch.tensor([[[[1.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 1.0]]]])
    assert nst_loss(s, t).item() == pytest.approx(1 + 1 - 0)  # K(t,t)=1, K(s,s)=1, K(s,t)=0
    s2 = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # channels (1,0), (0,1)
    t2 = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]]]])  # both normalise to (1,0)
    # mean K(t,t) = 1; mean K(s,s) = mean[[1,0],[0,1]] = 0.5; mean K(s,t) = mean[[1,1],[0,0]] = 0.5
    assert nst_loss(s2, t2).item() == pytest.approx(1 + 0.5 - 2 * 0.5)


def test_nst_teacher_kernel_per_image_and_precomputed():
    t = torch.tensor([[[[1.0, 0.0]], [[0.0, 3.0]]],  # image 0: orthogonal channels, K = [[1, 0], [0, 1]]
                      [[[1.0, 0.0]], [[2.0, 0.0]]]])  # image 1: parallel channels, K = [[1, 1], [1, 1]]
    s = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 1.0]]]])
    per_image = nst_teacher_kernel(s, t)
    assert per_image.tolist() == pytest.approx([0.5, 1.0])
    assert nst_loss(s, t, per_image.mean()).item() == pytest.approx(nst_loss(s, t).item(), abs=1e-6)
    assert nst_loss(s, t, torch.tensor(0.0)).item() == pytest.approx(nst_loss(s, t).item() - 0.75, abs=1e-6)


# ------------------------------------------------------------------ independent implementations
def ref_hinton(s, t, T):
    total = 0.0
    for row_s, row_t in zip(s.double(), t.double()):
        p = torch.softmax(row_t / T, 0)
        log_q = torch.log_softmax(row_s / T, 0)
        total += float((p * (p.log() - log_q)).sum())
    return total / s.shape[0] * T * T


def pool_to(f, h, w):
    return F.adaptive_avg_pool2d(f, (h, w)) if f.shape[-2:] != (h, w) else f


def ref_at(s, t, p=2):
    h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
    s, t = pool_to(s.double(), h, w), pool_to(t.double(), h, w)
    total, count = 0.0, 0
    for n in range(s.shape[0]):
        a_s = (s[n] ** p).mean(0).reshape(-1)
        a_t = (t[n] ** p).mean(0).reshape(-1)
        a_s, a_t = a_s / a_s.norm(), a_t / a_t.norm()
        total += float(((a_s - a_t) ** 2).sum())
        count += a_s.numel()
    return total / count


def ref_nst(s, t):
    h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
    s, t = pool_to(s.double(), h, w), pool_to(t.double(), h, w)

    def kmean(a, b):
        vals = [float((a[n, i] @ b[n, j]) ** 2) for n in range(a.shape[0])
                for i in range(a.shape[1]) for j in range(b.shape[1])]
        return sum(vals) / len(vals)

    s = s.reshape(*s.shape[:2], -1)
    t = t.reshape(*t.shape[:2], -1)
    s = s / s.norm(dim=2, keepdim=True)
    t = t / t.norm(dim=2, keepdim=True)
    return kmean(t, t) + kmean(s, s) - 2 * kmean(s, t)


SHAPES = [((2, 4, 6, 8), (2, 8, 6, 8)), ((1, 3, 5, 7), (1, 6, 10, 14)), ((3, 16, 8, 4), (3, 2, 4, 2)),
          ((2, 5, 9, 6), (2, 5, 9, 6))]


@pytest.mark.parametrize("s_shape,t_shape", SHAPES)
def test_feature_losses_match_independent_implementations(s_shape, t_shape):
    g = torch.Generator().manual_seed(sum(s_shape) + sum(t_shape))
    s, t = torch.randn(*s_shape, generator=g), torch.randn(*t_shape, generator=g)
    assert attention_transfer_loss(s, t).item() == pytest.approx(ref_at(s, t), abs=1e-5)
    assert attention_transfer_loss(s, t, p=4).item() == pytest.approx(ref_at(s, t, 4), abs=1e-5)
    assert nst_loss(s, t).item() == pytest.approx(ref_nst(s, t), abs=1e-5)


@pytest.mark.parametrize("n,c,T", [(1, 2, 1.0), (7, 4, 4.0), (32, 25, 2.5)])
def test_hinton_matches_independent_implementation(n, c, T):
    g = torch.Generator().manual_seed(n * c)
    s, t = torch.randn(n, c, generator=g) * 3, torch.randn(n, c, generator=g) * 3
    assert hinton_kd_loss(s, t, T).item() == pytest.approx(ref_hinton(s, t, T), abs=1e-5)


# ------------------------------------------------------------------ properties
@pytest.mark.parametrize("loss", [fitnets_loss, attention_transfer_loss, nst_loss])
def test_feature_losses_are_zero_when_student_equals_teacher(loss):
    f = torch.randn(2, 6, 5, 7)
    assert loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_hinton_is_zero_when_logits_are_equal():
    logits = torch.randn(5, 4)
    assert hinton_kd_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("loss", [attention_transfer_loss, nst_loss])
def test_gradients_reach_the_student_only(loss):
    s = torch.randn(2, 4, 8, 6, requires_grad=True)
    t = torch.randn(2, 12, 4, 3)  # different channels and spatial size
    loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_sigmoid_kd_hand_value():
    # one row, two classes, T = 2: p = sigmoid(t/2), q = sigmoid(s/2), loss = 4 * sum_c KL(Bern(p_c) || Bern(q_c))
    s, t = torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, -2.0]])
    p, q = torch.sigmoid(t / 2), torch.sigmoid(s / 2)
    kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    expected = 4 * kl.sum().item()
    # by hand: p = (0.7311, 0.2689), q = (0.5, 0.7311)
    assert expected == pytest.approx(4 * (0.7311 * math.log(0.7311 / 0.5) + 0.2689 * math.log(0.2689 / 0.5)
                                          + 0.2689 * math.log(0.2689 / 0.7311) + 0.7311 * math.log(0.7311 / 0.2689)),
                                     abs=1e-3)
    assert sigmoid_kd_loss(s, t, 2.0).item() == pytest.approx(expected, abs=1e-5)
    # mean over rows: a repeated row gives the same value; equal logits give zero
    assert sigmoid_kd_loss(s.repeat(3, 1), t.repeat(3, 1), 2.0).item() == pytest.approx(expected, abs=1e-5)
    assert sigmoid_kd_loss(t, t.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ label smoothing (the teacher-free control)
def test_label_smoothing_term_turns_cross_entropy_into_torchs_label_smoothing():
    from methods.distill import label_smoothing_term
    torch.manual_seed(0)
    logits, labels = torch.randn(7, 4), torch.randint(0, 4, (7,))
    ce = F.cross_entropy(logits, labels)
    for eps in (0.05, 0.1, 0.3):
        smoothed = ce + eps * label_smoothing_term(logits, ce)
        assert smoothed.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=eps).item(), abs=1e-6)


def test_label_smoothing_term_hand_value():
    from methods.distill import label_smoothing_term
    # two classes, logits (0, ln 3): log p = (ln 1/4, ln 3/4); U = -(ln 1/4 + ln 3/4)/2; label 1: CE = -ln 3/4
    logits = torch.tensor([[0.0, math.log(3.0)]])
    ce = torch.tensor(-math.log(0.75))
    expected = -(math.log(0.25) + math.log(0.75)) / 2 + math.log(0.75)
    assert label_smoothing_term(logits, ce).item() == pytest.approx(expected, abs=1e-6)
