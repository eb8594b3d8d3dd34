"""What several test modules share: distillation hyperparameters on single-stage taps and a two-image batch."""
from __future__ import annotations

import torch

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
