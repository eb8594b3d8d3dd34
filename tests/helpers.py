"""What several test modules share: small Faster R-CNN settings, distillation hyperparameters on single-stage taps,
a two-image batch, and torch on one thread."""
from __future__ import annotations

import contextlib

import torch

# a Faster R-CNN small enough for a test: few proposals, few sampled RoIs
SMALL = dict(rpn_pre_nms_train=50, rpn_post_nms_train=20, rpn_pre_nms_test=20, rpn_post_nms_test=10,
             box_batch_per_image=16)

# single-stage families: YOLO has neck taps only (p3-p5)
DENSE_HP = {"hinton": {"weight": 1.0, "temperature": 4.0}, "fitnets": {"weight": 100.0, "taps": ["p3", "p5"]},
            "at": {"weight": 1000.0, "p": 2, "taps": ["p3", "p4"]}, "nst": {"weight": 50.0, "taps": ["p4"]},
            "pkd": {"weight": 6.0, "taps": ["p3", "p4"]}, "cwd": {"weight": 10.0, "tau": 1.0, "taps": ["p5"]},
            "fgfi": {"weight": 1.0, "psi": 0.5, "taps": ["p3"]}, "ld": {"weight": 0.25, "temperature": 10.0}}


def batch():
    """Two random 64 x 96 images with two boxes each (labels 1 and 3)."""
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 96, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 70.0, 50.0]]),
                "labels": torch.tensor([1, 3])} for _ in range(2)]
    return images, targets


@contextlib.contextmanager
def one_thread():
    """torch on one thread inside the block (the thread count a study's workers train with)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
