"""RoIAlign whose CPU backward is a sparse matrix product.

torchvision's CPU ``roi_align`` backward recomputes every sampling point's bilinear weights once per channel and adds
them one by one; on the shallow student it took 40% of a training step here. The gradient is linear in the output
gradient: for one feature level,

    dL/dx[n, c, y, x] = sum_{r, b} W[(n, y, x), (r, b)] * dL/dout[r, c, b]

where b runs over the R x R output bins and W[(n, y, x), (r, b)] = sum over roi r's sampling points s in bin b (on
image n) of the bilinear weight of pixel (y, x) at s, divided by the number of sampling points per bin. W does not
depend on the channel, so it is built once per call (4 corners x points per bin nonzeros per bin) and the gradient is
one sparse x dense product over all channels. The forward is torchvision's kernel unchanged; on other devices the
whole op is torchvision's.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def _axis_corners(start: Tensor, bin_size: Tensor, grid: Tensor, grid_max: int, bins: int, size: int):
    """Along one axis, for every roi, bin and sampling point: the two pixels read and their weights (R, bins, G, 2),
    zero where the point is past ``grid`` for its roi or more than one pixel outside the map."""
    dtype = start.dtype
    point = torch.arange(grid_max, device=start.device, dtype=dtype)
    bin_index = torch.arange(bins, device=start.device, dtype=dtype)
    v = (start[:, None, None] + bin_index[None, :, None] * bin_size[:, None, None]
         + (point[None, None, :] + 0.5) * (bin_size / grid)[:, None, None])
    valid = (point[None, None, :] < grid[:, None, None]) & (v >= -1.0) & (v <= size)
    v = v.clamp(min=0.0)
    low = v.floor().long()
    at_edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(v), v - low.to(dtype))
    weight = torch.stack([1.0 - frac, frac], -1) * valid[..., None].to(dtype)
    return torch.stack([low, high], -1), weight


def bilinear_corners(rois: Tensor, height: int, width: int, spatial_scale: float, pooled: tuple[int, int],
                     sampling_ratio: int) -> tuple[Tensor, Tensor]:
    """Where each output bin reads the feature map, as torchvision's RoIAlign (``aligned=False``) reads it.

    Returns (flat, weights), both (R * PH * PW, 4 * points per bin): for output bin r * PH * PW + b, the flat pixel
    index (n * H * W + y * W + x) of each bilinear corner of each of its sampling points, and that corner's weight
    divided by the points per bin. Points more than one pixel outside the map weigh 0 (torchvision's rule); points
    in [-1, 0) read row/column 0 and points at or past the last row/column read that row/column.
    """
    ph_n, pw_n = pooled
    n_rois = rois.shape[0]
    x1, y1 = rois[:, 1] * spatial_scale, rois[:, 2] * spatial_scale
    roi_w = (rois[:, 3] * spatial_scale - x1).clamp(min=1.0)
    roi_h = (rois[:, 4] * spatial_scale - y1).clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full((n_rois,), sampling_ratio, device=rois.device, dtype=torch.long)
    else:  # adaptive: ceil(roi size / bins) points per bin side, per roi
        grid_h, grid_w = torch.ceil(roi_h / ph_n).long(), torch.ceil(roi_w / pw_n).long()
    gh, gw = int(grid_h.max()), int(grid_w.max())
    y_idx, y_wt = _axis_corners(y1, roi_h / ph_n, grid_h, gh, ph_n, height)  # (R, PH, GH, 2)
    x_idx, x_wt = _axis_corners(x1, roi_w / pw_n, grid_w, gw, pw_n, width)  # (R, PW, GW, 2)
    count = (grid_h * grid_w).clamp(min=1).to(rois.dtype)
    # (R, PH, PW, GH, GW, 2, 2): y on dims 1, 3, 5 and x on dims 2, 4, 6
    base = rois[:, 0].long() * (height * width)
    flat = (base[:, None, None, None, None, None, None] + y_idx[:, :, None, :, None, :, None] * width
            + x_idx[:, None, :, None, :, None, :])
    weights = (y_wt[:, :, None, :, None, :, None] * x_wt[:, None, :, None, :, None, :]
               / count[:, None, None, None, None, None, None])
    return flat.reshape(n_rois * ph_n * pw_n, -1), weights.reshape(n_rois * ph_n * pw_n, -1)


def roi_align_input_grad(grad_out: Tensor, rois: Tensor, input_shape: tuple[int, int, int, int],
                         spatial_scale: float, sampling_ratio: int) -> Tensor:
    """dL/d input of RoIAlign (``aligned=False``) from dL/d output ``grad_out`` (K, C, PH, PW): one sparse product."""
    n, c, height, width = input_shape
    k, _, ph_n, pw_n = grad_out.shape
    if k == 0:
        return grad_out.new_zeros(input_shape)
    flat, weights = bilinear_corners(rois.to(grad_out.dtype), height, width, spatial_scale, (ph_n, pw_n),
                                     sampling_ratio)
    rows = torch.arange(flat.shape[0], device=flat.device)[:, None].expand_as(flat)
    matrix = torch.sparse_coo_tensor(torch.stack([flat.reshape(-1), rows.reshape(-1)]), weights.reshape(-1),
                                     (n * height * width, k * ph_n * pw_n), check_invariants=False)
    per_bin = grad_out.permute(0, 2, 3, 1).reshape(k * ph_n * pw_n, c)
    grad = torch.sparse.mm(matrix, per_bin.contiguous())  # (N * H * W, C)
    return grad.reshape(n, height, width, c).permute(0, 3, 1, 2)


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                sampling_ratio: int) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.shape, ctx.scale, ctx.ratio = tuple(features.shape), spatial_scale, sampling_ratio
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (rois,) = ctx.saved_tensors
        grad = roi_align_input_grad(grad_out, rois, ctx.shape, ctx.scale, ctx.ratio)
        return grad, None, None, None, None


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int) -> Tensor:
    """torchvision's ``roi_align`` (``aligned=False``; ``rois`` (K, 5) as batch index, x1, y1, x2, y2); on the CPU
    with the sparse backward above. Features in another dtype than ``rois`` (bf16 under autocast) are pooled in fp32,
    as torchvision's own autocast kernel does."""
    if features.dtype != rois.dtype:
        features, rois = features.float(), rois.float()
    if features.device.type != "cpu" or not features.requires_grad:
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=False)
    return _RoIAlign.apply(features, rois, output_size, spatial_scale, sampling_ratio)


class SparseGradMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same levels, scales and outputs) over :func:`roi_align`."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        maps = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(maps, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        size, ratio = tuple(self.output_size), self.sampling_ratio
        if len(maps) == 1:
            return roi_align(maps[0], rois, size, self.scales[0], ratio)
        levels = self.map_levels(boxes)
        out = maps[0].new_zeros((rois.shape[0], maps[0].shape[1]) + size)
        for level, (fmap, scale) in enumerate(zip(maps, self.scales)):
            index = torch.where(levels == level)[0]
            out[index] = roi_align(fmap, rois[index], size, scale, ratio).to(out.dtype)
        return out
