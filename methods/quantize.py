"""Half-precision weights, the size baseline beside int8 (int8 itself: :mod:`methods.quantize_pt2e`, torchao's PT2E
flow, post-training and quantization-aware)."""
from __future__ import annotations

import copy

import torch


def fp16_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose floating-point weights are stored in half precision (the size baseline).

    On a GPU it runs in half precision; on the CPU use :func:`upcast` for inference.
    """
    return copy.deepcopy(model).half()


def upcast(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of a half-precision model (weights keep their fp16 rounding)."""
    return copy.deepcopy(model).float()
