"""One plain training loop in the style of torchvision's detection references.

SGD (or AdamW), linear warm-up then cosine decay per iteration, gradient clipping, AMP (bf16) on CUDA, h/v flips,
seeded. The validation split picks the best epoch (``best.pt``); ``last.pt`` is kept too. A non-finite loss raises
:class:`TrainingDiverged`, which the study records as a failed run.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from study.evaluate import coco_ground_truth, evaluate_map
from study.images import ImageSet, flip_batch


class TrainingDiverged(RuntimeError):
    pass


def seed_everything(seed: int) -> torch.Generator:
    """Seed every global generator a run draws from (Python's, NumPy's, torch's on every device) and return a
    fresh torch generator with the same seed, for the data order and flips."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def backward_clipped_apart(params: list[torch.nn.Parameter], losses: dict, max_norm: float) -> None:
    """Set ``.grad`` to g_own · min(1, c/‖g_own‖) + g_kd · min(1, c/‖g_kd‖), c = ``max_norm``: the gradients of the
    detector's own terms and of the distillation terms (``kd_*``) are clipped each on its own and then summed, so a
    large distillation term cannot shrink the detector's own gradient (as clipping their sum would)."""
    params = [p for p in params if p.requires_grad]
    own = sum(v for k, v in losses.items() if not k.startswith("kd_"))
    kd = [v for k, v in losses.items() if k.startswith("kd_") and v.requires_grad]
    parts = [torch.autograd.grad(own, params, retain_graph=bool(kd), allow_unused=True)]
    if kd:
        parts.append(torch.autograd.grad(sum(kd), params, allow_unused=True))
    for p in params:
        p.grad = None
    for grads in parts:
        present = [g for g in grads if g is not None]
        if not present:
            continue
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present]))
        factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g * factor if p.grad is None else p.grad + g * factor


def make_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; with ``no_decay_norm_bias`` (ultralytics' and timm's recipe),
    weight decay applies to conv/linear weights only: three groups, weights / norm weights / biases (the last one
    is the group :func:`lr_factors` can warm up on its own)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in named]}]
    if cfg.get("no_decay_norm_bias"):
        groups = [{"params": [p for _, p in named if p.ndim > 1]},
                  {"params": [p for n, p in named if p.ndim <= 1 and not n.endswith("bias")], "weight_decay": 0.0},
                  {"params": [p for n, p in named if p.ndim <= 1 and n.endswith("bias")], "weight_decay": 0.0}]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                               nesterov=bool(cfg.get("nesterov")))
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise ValueError(f"unknown optimizer '{cfg['optimizer']}' (sgd, adamw)")


class WeightEMA:
    """Exponential moving average of a model's floating-point state (weights and BN statistics), as ultralytics
    keeps it: after update n, ema = d·ema + (1-d)·model with d = decay·(1 - exp(-n / tau)), so the average
    starts as a copy and smooths more as training goes on."""

    def __init__(self, model: torch.nn.Module, decay: float, tau: float):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        source = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.shape != source[name].shape:  # a lazily shaped buffer (a QAT observer's per-channel scales)
                parent, _, attr = name.rpartition(".")
                owner = self.model.get_submodule(parent) if parent else self.model
                setattr(owner, attr, source[name].detach().clone())
            elif value.dtype.is_floating_point:
                value.mul_(d).add_(source[name].detach(), alpha=1 - d)


def lr_factors(cfg: dict, n_groups: int, total: int, warmup: int) -> list:
    """One LR factor function per parameter group: :func:`warmup_cosine` for all; with ``warmup_bias_lr``
    (ultralytics' recipe) the bias group starts at that LR instead and falls linearly to the schedule's value."""
    factors = [lambda s: warmup_cosine(s, total, warmup)] * n_groups
    if cfg.get("warmup_bias_lr") and n_groups == 3:
        start = cfg["warmup_bias_lr"] / cfg["lr"]
        factors[2] = lambda s: (start + (warmup_cosine(warmup, total, warmup) - start) * s / warmup
                                if s < warmup else warmup_cosine(s, total, warmup))
    return factors


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear from 0.001 to 1 over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def trains_bf16(device: torch.device, cfg: dict) -> bool:
    """Whether training steps run under bf16 autocast: always on a GPU; on the CPU when ``bf16_on_cpu`` (evaluation
    stays fp32 either way)."""
    return device.type == "cuda" or bool(cfg.get("bf16_on_cpu"))


def train(model: torch.nn.Module, loss_fn: Callable, student: torch.nn.Module, train_set: ImageSet,
          val_set: ImageSet, class_names: list[str], cfg: dict, epochs: int, seed: int, run_dir: Path,
          device: torch.device, progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train ``model`` (the student, or a distiller holding it) with ``loss_fn(images, targets, keys) -> dict``.

    Returns the history (per-epoch mean losses, validation mAP) and the best validation mAP; the best student
    weights are left loaded in ``student`` and saved as ``run_dir/best.pt``. ``on_epoch(record)`` is called after
    every epoch (a search uses it to report validation mAP and to stop a bad trial by raising).
    """
    generator = seed_everything(seed)
    # channels-last: faster convolutions on CPUs (oneDNN) and GPUs; back to the default layout at the end
    layout = torch.channels_last if cfg.get("channels_last") else torch.contiguous_format
    model.to(device)
    student.to(memory_format=layout)
    optimizer = make_optimizer(model, cfg)
    ema = WeightEMA(student, cfg["ema_decay"], cfg.get("ema_tau", 2000)) if cfg.get("ema_decay") else None
    evaluated = ema.model if ema is not None else student  # what is validated and saved
    batch_size = cfg["batch_size"]
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup = min(cfg["warmup_iters"], max(1, total_steps // 3))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factors(cfg, len(optimizer.param_groups),
                                                                         total_steps, warmup))
    momentum_warmup = cfg.get("warmup_momentum") if cfg["optimizer"] == "sgd" else None
    global_step = 0
    use_amp = trains_bf16(device, cfg)
    sync_free = device.type == "cuda"  # on a GPU, losses are checked once per epoch instead of every step
    val_gt = coco_ground_truth(val_set, class_names)
    history, best_map, best_epoch = [], -1.0, -1
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_set), generator=generator).tolist()
        sums: dict[str, float] = {}
        seen, epoch_start = 0, time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"{run_dir.name} ep {epoch}/{epochs}", disable=not progress,
                   leave=False, mininterval=2.0)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            flips = torch.randint(0, 4, (len(idx),), generator=generator)
            flips = flips & ((1 if cfg["hflip"] else 0) | (2 if cfg["vflip"] else 0))
            images, boxes = flip_batch(train_set.images[idx], [train_set.boxes[i] for i in idx], flips.tolist())
            images = images.to(device, non_blocking=True).float().div_(255)
            targets = [{"boxes": b.to(device), "labels": train_set.labels[i].to(device)} for b, i in zip(boxes, idx)]
            keys = list(zip(idx, flips.tolist()))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                losses = loss_fn(list(images), targets, keys)
            loss = sum(losses.values())
            if not sync_free and not torch.isfinite(loss):
                bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                raise TrainingDiverged(f"non-finite loss ({', '.join(bad)}) at epoch {epoch}, step {step + 1}")
            if momentum_warmup is not None and global_step <= warmup:  # ultralytics: momentum rises during warm-up
                for group in optimizer.param_groups:
                    group["momentum"] = momentum_warmup + (cfg["momentum"] - momentum_warmup) * global_step / warmup
            global_step += 1
            optimizer.zero_grad(set_to_none=True)
            if cfg["clip_grad_norm"] and getattr(model, "clip_apart", False):
                backward_clipped_apart(list(model.parameters()), losses, cfg["clip_grad_norm"])
            else:
                loss.backward()
                if cfg["clip_grad_norm"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad_norm"])
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(student)
            for k, v in losses.items():  # kept on the device: no host sync per step
                sums[k] = sums.get(k, 0.0) + v.detach().float() * len(idx)
            seen += len(idx)
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", img_s=f"{seen / (time.perf_counter() - epoch_start):.1f}")
        epoch_losses = {k: float(v) / seen for k, v in sums.items()}  # one host sync per epoch
        if sync_free and not all(math.isfinite(v) for v in epoch_losses.values()):
            bad = [k for k, v in epoch_losses.items() if not math.isfinite(v)]
            raise TrainingDiverged(f"non-finite loss ({', '.join(bad)}) at epoch {epoch}")
        record = {"epoch": epoch, "img_s": seen / (time.perf_counter() - epoch_start),
                  "lr": optimizer.param_groups[0]["lr"]} | epoch_losses
        record["loss"] = sum(epoch_losses.values())
        if epoch % cfg["val_every"] == 0 or epoch == epochs:
            record["val_map"] = evaluate_map(evaluated, val_set, class_names, device, val_gt)
            if record["val_map"] > best_map:
                best_map, best_epoch = record["val_map"], epoch
                torch.save(evaluated.state_dict(), run_dir / "best.pt")
        history.append(record)
        (run_dir / "history.json").write_text(json.dumps(history, indent=1))
        tqdm.write(f"{run_dir.name} epoch {epoch}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
        if on_epoch is not None:
            on_epoch(record)
    torch.save(evaluated.state_dict(), run_dir / "last.pt")
    student.load_state_dict(torch.load(run_dir / "best.pt", map_location=device))
    student.to(memory_format=torch.contiguous_format)
    train_s = time.perf_counter() - start
    return {"history": history, "best_val_map": best_map, "best_epoch": best_epoch, "train_s": train_s}
