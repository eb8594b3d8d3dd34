"""What a model costs to run, counted without running a study: parameters, and FLOPs of one eval forward pass
(``torch.utils.flop_counter``; convolutions and matrix products, a multiply-add counted as 2 FLOPs, RoIAlign and NMS
not counted). Here, below both, because pruning targets FLOPs and the study reports them."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gflops(model: torch.nn.Module, image: torch.Tensor) -> tuple[float, int | None]:
    """(GFLOPs of one eval forward of ``image`` (3, H, W float), proposals that reached the RoI head)."""
    model.eval()
    seen: dict[str, int] = {}
    hook = None
    roi_pool = getattr(getattr(model, "roi_heads", None), "box_roi_pool", None)
    if roi_pool is not None:
        hook = roi_pool.register_forward_hook(lambda m, args, out: seen.__setitem__("n", sum(len(p) for p in args[1])))
    counter = FlopCounterMode(display=False)
    with counter:
        model([image])
    if hook is not None:
        hook.remove()
    return counter.get_total_flops() / 1e9, seen.get("n")
