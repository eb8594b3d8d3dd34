"""PKD, CWD, FGFI (and its mask) and LD against values worked out by hand on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch

from methods.distill import cwd_loss, fgfi_loss, fgfi_mask, ld_loss, pkd_loss

# KL((1/4, 3/4) || (1/2, 1/2)) = 1/4 ln(1/2) + 3/4 ln(3/2)
KL_QUARTER = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)  # 0.130812
# at tau = 2: t/2 = (0, ln 3 / 2) gives p_t = (1, sqrt 3) / (1 + sqrt 3) against (1/2, 1/2), times tau^2 = 4
P0 = 1 / (1 + math.sqrt(3))
KL_TAU2 = 4 * (P0 * math.log(2 * P0) + (1 - P0) * math.log(2 * (1 - P0)))  # 0.145397


def test_pkd_by_hand_and_scale_free():
    s = torch.tensor([[1.0, 5.0], [3.0, 7.0]]).reshape(2, 2, 1, 1)  # channel 0: (1, 3); channel 1: (5, 7)
    t = torch.tensor([[10.0, -1.0], [0.0, 1.0]]).reshape(2, 2, 1, 1)  # channel 0: (10, 0); channel 1: (-1, 1)
    # each channel over (N, H, W) = 2 values: mean m, unbiased std sqrt(2) * |a - m| -> standardised to -+1/sqrt 2
    # channel 0: s^ = (-0.707, 0.707), t^ = (0.707, -0.707): squared differences 2, 2; channel 1: equal, 0, 0
    assert pkd_loss(s, t).item() == pytest.approx(0.5 * (2 + 2 + 0 + 0) / 4, rel=1e-5)
    assert pkd_loss(s * 1000 + 3, t).item() == pytest.approx(0.5, rel=1e-5)  # no scale, no offset


def test_cwd_by_hand():
    s = torch.zeros(1, 2, 1, 2)
    t = torch.tensor([[[[0.0, math.log(3)]], [[0.0, 0.0]]]])  # channel 0: p_t = (1/4, 3/4); channel 1: = p_s
    assert cwd_loss(s, t, tau=1.0).item() == pytest.approx(KL_QUARTER / 2, rel=1e-5)  # sum over (n, c) / (N C = 2)
    assert cwd_loss(s[:, :1], t[:, :1], tau=2.0).item() == pytest.approx(KL_TAU2, rel=1e-5)


def test_fgfi_loss_by_hand_and_empty_mask():
    s = torch.zeros(1, 2, 2, 2)
    t = torch.full((1, 2, 2, 2), 100.0)  # far off everywhere ...
    t[0, :, 0, 0] = torch.tensor([1.0, 2.0])  # ... except at the one masked location: squared 1 + 4 = 5
    mask = torch.zeros(1, 2, 2)
    mask[0, 0, 0] = 1
    assert fgfi_loss(s, t, mask).item() == pytest.approx(5 / (2 * 1))
    s.requires_grad_(True)
    empty = fgfi_loss(s, t, torch.zeros(1, 2, 2))
    assert empty.item() == 0.0 and empty.requires_grad


def test_fgfi_mask_by_hand():
    anchors = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10]], dtype=torch.float).reshape(1, 3, 1, 4)
    # box (0,0,12,10): IoU 100/120 = 0.833 with the first anchor, 20/200 = 0.1 with the second (< 0.5 x 0.833), 0
    assert fgfi_mask(anchors, torch.tensor([[0.0, 0, 12, 10]])).tolist() == [[1.0, 0.0, 0.0]]
    # box (5,0,15,10): 50/150 = 1/3 with the first two anchors, both above 0.5 x 1/3
    assert fgfi_mask(anchors, torch.tensor([[5.0, 0, 15, 10]])).tolist() == [[1.0, 1.0, 0.0]]
    assert fgfi_mask(anchors, torch.zeros(0, 4)).tolist() == [[0.0, 0.0, 0.0]]
    two_per_location = torch.stack([anchors, anchors + torch.tensor([100.0, 0, 100, 0])], dim=2).squeeze(3)
    assert fgfi_mask(two_per_location, torch.tensor([[100.0, 0, 112, 10]])).tolist() == [[1.0, 0.0, 0.0]]


def test_ld_by_hand():
    s = torch.zeros(2, 2)
    t = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]])  # edge 0: KL_QUARTER; edge 1: 0
    assert ld_loss(s, t, tau=1.0).item() == pytest.approx(KL_QUARTER / 2, rel=1e-5)  # mean over the 2 edges
    assert ld_loss(s[:1], t[:1], tau=2.0).item() == pytest.approx(KL_TAU2, rel=1e-5)
    assert ld_loss(torch.zeros(0, 16), torch.zeros(0, 16)).item() == 0.0
