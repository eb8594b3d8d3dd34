"""The sparse-backward RoIAlign: its input gradient equals finite differences and torchvision's own CPU kernel."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from detectors.faster_rcnn import build_faster_rcnn
from detectors.roi_align import SparseGradMultiScaleRoIAlign, roi_align


def random_rois(n_images, k, height, width, scale, generator):
    """Boxes in image pixels; some reach past the map's edges (where torchvision clamps or zeroes points)."""
    size = torch.tensor([width / scale, height / scale], dtype=torch.float64)
    corner = torch.rand(k, 2, generator=generator, dtype=torch.float64) * size * 1.2 - 0.1 * size
    extent = torch.rand(k, 2, generator=generator, dtype=torch.float64) * size * 0.6
    batch = torch.randint(0, n_images, (k, 1), generator=generator).double()
    return torch.cat([batch, corner, corner + extent], 1)


def test_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    rois = random_rois(2, 4, 5, 6, 0.5, g)
    # the output is piecewise linear in x (bilinear weights do not depend on x): central differences are exact
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (3, 3), 0.5, 2), (x,), eps=1e-4, atol=1e-8)


@pytest.mark.parametrize("n,c,h,w,k,scale,ratio", [
    (2, 5, 9, 11, 30, 0.5, 2),    # two sampling points a side, as the detectors use
    (2, 5, 9, 11, 30, 0.5, 0),    # adaptive: ceil(roi size / bins) points a side, per roi
    (3, 4, 6, 8, 40, 1 / 32, 2),  # a coarse level: many points clamp to the last row and column
    (1, 2, 7, 7, 1, 1.0, 3),
])
def test_gradient_matches_torchvision(n, c, h, w, k, scale, ratio):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g, requires_grad=True)
    rois = random_rois(n, k, h, w, scale, g)
    grad_out = torch.randn(k, c, 7, 7, dtype=torch.float64, generator=g)
    ours = roi_align(x, rois, (7, 7), scale, ratio)
    theirs = tv_roi_align(x, rois, (7, 7), scale, ratio, aligned=False)
    assert torch.equal(ours, theirs)  # the forward is torchvision's kernel
    (ours_grad,) = torch.autograd.grad((ours * grad_out).sum(), x)
    (their_grad,) = torch.autograd.grad((theirs * grad_out).sum(), x)
    torch.testing.assert_close(ours_grad, their_grad, rtol=0, atol=1e-12)


def test_no_rois_on_a_level_gives_a_zero_gradient():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5), (7, 7), 0.25, 2)
    (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    assert out.shape == (0, 3, 7, 7) and (grad is None or not grad.any())


def test_multiscale_pooler_matches_torchvision():
    g = torch.Generator().manual_seed(2)
    maps = {name: torch.randn(2, 4, 64 // s, 96 // s, dtype=torch.float64, generator=g, requires_grad=True)
            for name, s in (("p3", 8), ("p4", 16), ("p5", 32))}
    boxes = [random_rois(1, 20, 64, 96, 1.0, g)[:, 1:].clamp(min=0).abs() for _ in range(2)]
    boxes = [torch.cat([b[:, :2], b[:, :2] + b[:, 2:].clamp(min=2)], 1) for b in boxes]  # x2 > x1, y2 > y1
    grad_out = torch.randn(40, 4, 7, 7, dtype=torch.float64, generator=g)
    results = []
    for pooler in (SparseGradMultiScaleRoIAlign(["p3", "p4", "p5"], 7, 2), MultiScaleRoIAlign(["p3", "p4", "p5"], 7, 2)):
        out = pooler(maps, boxes, [(64, 96), (64, 96)])
        results.append((out, torch.autograd.grad((out * grad_out).sum(), list(maps.values()))))
    assert torch.equal(results[0][0], results[1][0])
    for ours, theirs in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_faster_rcnn_uses_it():
    model = build_faster_rcnn("shallow", num_classes=3, fpn_channels=16, roi_dim=32)
    assert isinstance(model.roi_heads.box_roi_pool, SparseGradMultiScaleRoIAlign)
