"""The training loop: seeded determinism on CPU, divergence detection, the learning-rate schedule."""
from __future__ import annotations

import pytest
import torch

from detectors.faster_rcnn import build_faster_rcnn
from study.data import load_dataset
from study.images import canvas_size, load_images
from study.train import TrainingDiverged, train, warmup_cosine

from helpers import SMALL

CFG = {"optimizer": "sgd", "batch_size": 2, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "warmup_iters": 2,
       "clip_grad_norm": 10.0, "hflip": True, "vflip": True, "val_every": 1}


@pytest.fixture
def sets(tiny_voc):
    data = load_dataset(f"voc:{tiny_voc}")
    canvas = canvas_size(data.splits["train"], 64)
    return data, load_images(data.splits["train"][:4], canvas, 64), load_images(data.splits["val"], canvas, 64)


def run_once(sets, tmp_path, seed, loss_fn=None):
    data, train_set, val_set = sets
    torch.manual_seed(123)  # same initial weights; the seed under test drives order and flips
    model = build_faster_rcnn("shallow", 3, fpn_channels=8, roi_dim=16, **SMALL)
    loss_fn = loss_fn or (lambda images, targets, keys: model(images, targets))
    result = train(model, loss_fn, model, train_set, val_set, data.class_names, CFG, 1, seed, tmp_path,
                   torch.device("cpu"), progress=False)
    return model, result


def test_channels_last_training_returns_a_default_layout_model(sets, tmp_path):
    data, train_set, val_set = sets
    model = build_faster_rcnn("shallow", 3, fpn_channels=8, roi_dim=16, **SMALL)
    conv_weight = next(p for p in model.parameters() if p.dim() == 4)
    layouts = []

    def loss_fn(images, targets, keys):
        layouts.append(conv_weight.is_contiguous(memory_format=torch.channels_last))
        return model(images, targets)

    train(model, loss_fn, model, train_set, val_set, data.class_names, dict(CFG, channels_last=True), 1, 0, tmp_path,
          torch.device("cpu"), progress=False)
    assert layouts and all(layouts)  # trained in channels-last
    assert all(p.is_contiguous() for p in model.parameters())  # handed back in the default layout


def test_same_seed_gives_identical_weights(sets, tmp_path):
    a, result = run_once(sets, tmp_path / "a", 0)
    b, _ = run_once(sets, tmp_path / "b", 0)
    c, _ = run_once(sets, tmp_path / "c", 1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    assert (tmp_path / "a" / "best.pt").is_file() and (tmp_path / "a" / "last.pt").is_file()
    assert (tmp_path / "a" / "history.json").is_file() and "val_map" in result["history"][0]


def test_non_finite_loss_stops_the_run(sets, tmp_path):
    nan_loss = lambda images, targets, keys: {"loss_x": torch.tensor(float("nan"), requires_grad=True)}
    with pytest.raises(TrainingDiverged, match="non-finite loss \\(loss_x\\) at epoch 1, step 1"):
        run_once(sets, tmp_path, 0, nan_loss)


def test_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.001)
    assert warmup_cosine(5, 100, 10) == pytest.approx(0.001 + 0.999 * 0.5)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def test_clipping_apart_keeps_the_detectors_own_gradient():
    from study.train import backward_clipped_apart
    # own loss a·p (gradient a, norm 5 < c = 10), distillation term 1000 b·p (gradient 1000 b, norm 1000), a ⊥ b
    a, b = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    p = torch.nn.Parameter(torch.zeros(3))
    backward_clipped_apart([p], {"loss": (a * p).sum(), "kd_x": 1000 * (b * p).sum()}, 10.0)
    assert torch.allclose(p.grad, torch.tensor([3.0, 4.0, 10.0]), atol=1e-4)  # a kept whole, 1000 b clipped to 10
    # clipping the sum instead (what training did before): the own part shrinks to 10 / |(3, 4, 1000)|
    p.grad = None
    ((a * p).sum() + 1000 * (b * p).sum()).backward()
    torch.nn.utils.clip_grad_norm_([p], 10.0)
    shrink = 10.0 / float(torch.linalg.vector_norm(torch.tensor([3.0, 4.0, 1000.0])))
    assert torch.allclose(p.grad[:2], a[:2] * shrink, atol=1e-5) and p.grad[0] < 0.05


def test_weight_ema_averages_floats_and_takes_a_buffer_whose_shape_changed():
    """d = decay·(1 − exp(−n/tau)); at n = 1 with decay 0.5, tau = 1/ln 2: d = 0.5·(1 − 0.5) = 0.25."""
    import math
    from study.train import WeightEMA
    model = torch.nn.Linear(1, 1, bias=False)
    model.register_buffer("scale", torch.ones(1))  # as a QAT observer's, per-tensor until it has seen a batch
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightEMA(model, decay=0.5, tau=1 / math.log(2))
    with torch.no_grad():
        model.weight.fill_(5.0)
    model.scale = torch.tensor([2.0, 3.0])  # now per channel
    ema.update(model)
    assert ema.model.weight.item() == pytest.approx(0.25 * 1.0 + 0.75 * 5.0)
    assert ema.model.scale.tolist() == [2.0, 3.0]
