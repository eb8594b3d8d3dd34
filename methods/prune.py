"""Structured pruning of detector backbones (and YOLO necks) with torch-pruning's dependency graph.

Channels are removed for real (the tensors shrink), so parameters, FLOPs and latency fall. What is pruned: every
convolution of the backbone body (stem and C2-C5 stages), and with them the input channels of the FPN's lateral
1x1 convolutions that read the pruned stages. What is left untouched, and why: the FPN's output width and the
RPN/RoI heads, because those channels feed modules outside the traced backbone (the RPN head and the RoI box head
are sized for the FPN width).

Criteria: ``l1`` (filter L1 norm, Li et al. 2017 "Pruning filters for efficient ConvNets"), ``taylor`` (first-order
Taylor expansion of the loss, Molchanov et al. 2019), ``group_norm`` (L2 norm over each coupled channel group, the
DepGraph paper's criterion, Fang et al. 2023) and ``random`` (the control).

YOLO (ultralytics): the backbone and neck (every layer before the Detect head) are pruned, and with them the
input channels of the head's first convolutions; the Detect head's outputs (box distributions, class logits, DFL)
are left untouched. Ultralytics' C2f block (and C3k2, its YOLO11 subclass) splits one convolution's output in two
halves with ``chunk``; pruning that convolution removes channels from the halves unevenly and ``chunk(2)`` then
cuts at the wrong place (torch-pruning issue #147). :func:`detectors.yolo.split_c2f` first rewrites each such block into an
equivalent one whose two halves come from two convolutions (the original weights, cut in two), so that every
channel has its own dependency. Blocks with other splits (YOLO11's C2PSA attention) are not pruned.

Target: a FLOPs reduction (the channel ratio is raised step by step until the whole detector's FLOPs fall by at
least that fraction) or a plain channel ratio; uniform per layer or global.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch_pruning as tp

from detectors import declaration
from methods.measure import count_gflops, count_params

IMPORTANCE = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1, group_reduction="first"),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "group_norm": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "random": lambda: tp.importance.RandomImportance(),
}


def prune_backbone(model: torch.nn.Module, image: torch.Tensor, criterion: str = "l1",
                   flops_reduction: float | None = 0.5, channel_ratio: float | None = None,
                   global_pruning: bool = False, steps: int = 20,
                   loss_fn: Callable[[], torch.Tensor] | None = None, round_to: int | None = None) -> dict:
    """Prune ``model.backbone.body`` (a YOLO's backbone and neck) in place; returns GFLOPs and parameter counts
    before and after. ``round_to`` keeps channel counts multiples of it (friendlier to CPU kernels).

    ``image`` is one (3, H, W) float image at the study's input size. With ``flops_reduction`` the ratio grows in
    ``steps`` equal steps up to 0.9 and stops at the first step that reaches the target; with ``channel_ratio`` it
    is pruned at that ratio in one step. ``taylor`` needs ``loss_fn`` (a training loss whose gradients it reads).
    """
    if criterion not in IMPORTANCE:
        raise ValueError(f"unknown pruning criterion '{criterion}' (known: {', '.join(IMPORTANCE)})")
    if (flops_reduction is None) == (channel_ratio is None):
        raise ValueError("give exactly one of flops_reduction and channel_ratio")
    if criterion == "taylor" and loss_fn is None:
        raise ValueError("the taylor criterion needs a loss function")
    was_training = model.training
    model.eval()
    gflops_before, _ = count_gflops(model, image)
    params_before = count_params(model)
    family = declaration(model)  # what to trace and keep is the detector family's knowledge
    traced, example, ignored, output_transform = family["prune_setup"](model, image)
    pruner = tp.pruner.MetaPruner(
        traced, example, importance=IMPORTANCE[criterion](),
        pruning_ratio=0.9 if flops_reduction is not None else channel_ratio,
        iterative_steps=steps if flops_reduction is not None else 1,
        ignored_layers=ignored, global_pruning=global_pruning, output_transform=output_transform,
        round_to=round_to)
    gflops = gflops_before
    for _ in range(pruner.iterative_steps):
        if criterion == "taylor":
            model.train()
            model.zero_grad()
            loss_fn().backward()
            model.eval()
        pruner.step()
        gflops, _ = count_gflops(model, image)
        if flops_reduction is not None and gflops <= gflops_before * (1 - flops_reduction):
            break
    model.zero_grad(set_to_none=True)
    model.eval()
    family["after_prune"](model, example)
    tap_channels = family["tap_channels"](model)
    model.train(was_training)
    return {"gflops_before": gflops_before, "gflops_after": gflops, "params_before": params_before,
            "params_after": count_params(model), "round_to": round_to,
            "tap_channels_after": [tap_channels[t] for t in family["pruned_taps"]],
            "pruned_parts": family["pruned_parts"]}
