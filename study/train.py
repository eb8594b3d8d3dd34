"""One plain training loop in the style of torchvision's detection references.

SGD (or AdamW), linear warm-up then cosine decay per iteration, gradient clipping, AMP (bf16) on CUDA, h/v flips,
seeded. The validation split picks the best epoch (``best.pt``); ``last.pt`` is kept too. A non-finite loss raises
:class:`TrainingDiverged`, which the study records as a failed run.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from study.evaluate import coco_ground_truth, evaluate
from study.images import ImageSet, flip_batch


class TrainingDiverged(RuntimeError):
    pass


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise ValueError(f"unknown optimizer '{cfg['optimizer']}' (sgd, adamw)")


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear from 0.001 to 1 over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(model: torch.nn.Module, loss_fn: Callable, student: torch.nn.Module, train_set: ImageSet,
          val_set: ImageSet, class_names: list[str], cfg: dict, epochs: int, seed: int, run_dir: Path,
          device: torch.device, progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train ``model`` (the student, or a distiller holding it) with ``loss_fn(images, targets, keys) -> dict``.

    Returns the history (per-epoch mean losses, validation mAP) and the best validation mAP; the best student
    weights are left loaded in ``student`` and saved as ``run_dir/best.pt``. ``on_epoch(record)`` is called after
    every epoch (a search uses it to report validation mAP and to stop a bad trial by raising).
    """
    generator = seed_everything(seed)
    model.to(device)
    optimizer = make_optimizer(model.parameters(), cfg)
    batch_size = cfg["batch_size"]
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup = min(cfg["warmup_iters"], max(1, total_steps // 3))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup))
    use_amp = device.type == "cuda"
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
            if not torch.isfinite(loss):
                bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                raise TrainingDiverged(f"non-finite loss ({', '.join(bad)}) at epoch {epoch}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["clip_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad_norm"])
            optimizer.step()
            scheduler.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
            seen += len(idx)
            if progress:
                bar.set_postfix(loss=f"{float(loss):.3f}", img_s=f"{seen / (time.perf_counter() - epoch_start):.1f}")
        record = {"epoch": epoch, "img_s": seen / (time.perf_counter() - epoch_start),
                  "lr": optimizer.param_groups[0]["lr"]} | {k: v / seen for k, v in sums.items()}
        record["loss"] = sum(v for k, v in record.items() if k.startswith("loss") or k.startswith("kd_"))
        if epoch % cfg["val_every"] == 0 or epoch == epochs:
            record["val_map"] = evaluate(student, val_set, class_names, device, val_gt)["map"]
            if record["val_map"] > best_map:
                best_map, best_epoch = record["val_map"], epoch
                torch.save(student.state_dict(), run_dir / "best.pt")
        history.append(record)
        (run_dir / "history.json").write_text(json.dumps(history, indent=1))
        tqdm.write(f"{run_dir.name} epoch {epoch}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
        if on_epoch is not None:
            on_epoch(record)
    torch.save(student.state_dict(), run_dir / "last.pt")
    student.load_state_dict(torch.load(run_dir / "best.pt", map_location=device))
    train_s = time.perf_counter() - start
    return {"history": history, "best_val_map": best_map, "best_epoch": best_epoch, "train_s": train_s}
