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
cuts at the wrong place (torch-pruning issue #147). :func:`split_c2f` first rewrites each such block into an
equivalent one whose two halves come from two convolutions (the original weights, cut in two), so that every
channel has its own dependency. Blocks with other splits (YOLO11's C2PSA attention) are not pruned.

Target: a FLOPs reduction (the channel ratio is raised step by step until the whole detector's FLOPs fall by at
least that fraction) or a plain channel ratio; uniform per layer or global.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch_pruning as tp

from methods.measure import count_gflops, count_params

IMPORTANCE = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1, group_reduction="first"),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "group_norm": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "random": lambda: tp.importance.RandomImportance(),
}


class SplitC2f(torch.nn.Module):
    """C2f with ``cv1`` cut into two convolutions ``cv1a``/``cv1b`` (its output halves): the same function."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        half = block.cv1.conv.out_channels // 2
        self.cv1a, self.cv1b = copy.deepcopy(block.cv1), copy.deepcopy(block.cv1)
        for conv, part in ((self.cv1a, slice(0, half)), (self.cv1b, slice(half, 2 * half))):
            conv.conv.weight = torch.nn.Parameter(block.cv1.conv.weight.data[part].clone())
            conv.conv.out_channels = half
            bn = conv.bn
            bn.num_features = half
            bn.weight = torch.nn.Parameter(block.cv1.bn.weight.data[part].clone())
            bn.bias = torch.nn.Parameter(block.cv1.bn.bias.data[part].clone())
            bn.running_mean = block.cv1.bn.running_mean[part].clone()
            bn.running_var = block.cv1.bn.running_var[part].clone()
        self.cv2, self.m = block.cv2, block.m
        for attr in ("f", "i", "type", "np"):  # ultralytics' routing attributes
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1a(x), self.cv1b(x)]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


def split_c2f(detection_model: torch.nn.Module) -> int:
    """Replace every C2f-family block of an ultralytics model by :class:`SplitC2f`; returns how many."""
    from ultralytics.nn.modules.block import C2f

    layers = detection_model.model
    count = 0
    for i, layer in enumerate(layers):
        if isinstance(layer, C2f) and type(layer).forward is C2f.forward:
            layers[i] = SplitC2f(layer)
            count += 1
    return count


def _yolo_setup(model: torch.nn.Module, image: torch.Tensor):
    """(module to trace, example input, ignored layers, output transform) for an ultralytics YOLO detector."""
    from ultralytics.nn.modules.block import C2PSA

    split_c2f(model.model)
    ignored = [model.detect] + [m for m in model.model.modules() if isinstance(m, C2PSA)]
    for conv_list in (model.detect.cv2, model.detect.cv3):  # keep the head's own widths; its inputs may shrink
        for branch in conv_list:
            ignored += list(branch)[1:]
    return model.model, image[None], ignored, (lambda out: out[0] if isinstance(out, tuple) else out)


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
    yolo = type(model).__name__ == "YOLODetector"
    if yolo:
        traced, example, ignored, output_transform = _yolo_setup(model, image)
    else:
        traced, example = model.backbone, model.transform([image])[0].tensors
        ignored, output_transform = [model.backbone.fpn], None
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
    with torch.no_grad():
        if yolo:
            model.eval()
            _, preds = model.model(example)
            channels = [f.shape[1] for f in preds["feats"]]
        else:
            model.backbone.body_channels = tuple(f.shape[1] for f in model.backbone.body(example).values())
            channels = list(model.backbone.body_channels)
    model.train(was_training)
    return {"gflops_before": gflops_before, "gflops_after": gflops, "params_before": params_before,
            "params_after": count_params(model), "tap_channels_after": channels, "round_to": round_to,
            "pruned_parts": "backbone + neck (Detect head's outputs kept)" if yolo else
            "backbone body (FPN lateral inputs follow)"}
