"""The tools a user would otherwise pick, run on the same data and settings: ultralytics' own trainer for YOLO,
torchvision's stock detection training loop for Faster R-CNN. Used by the parity check and the benchmark.

Ultralytics' trainer is product code (the rival rows train with it): it lives in :mod:`study.ultralytics_trainer`
and is re-exported here. Torchvision's stock loop (``torchvision_stock_train``) is the benchmark's alone: each JPEG
decoded and resized on every access by DataLoader workers, as torchvision's detection references do.
"""
from __future__ import annotations

import math
import time

import torch

from study.images import decode_resized, flip_batch
from study.train import make_optimizer, warmup_cosine
from study.ultralytics_trainer import (MATCHED_SETTINGS, load_ultralytics_detector, model_yaml,  # noqa: F401
                                       no_font_downloads, ultralytics_train, write_ultralytics_checkpoint,
                                       write_yolo_view)


class DiskDataset(torch.utils.data.Dataset):
    """Decode and resize each JPEG on every access, flip at random: torchvision's references' data path."""

    def __init__(self, samples, image_size: int, hflip: bool, vflip: bool):
        self.samples, self.image_size, self.hflip, self.vflip = samples, image_size, hflip, vflip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        image, scale = decode_resized(s, self.image_size)
        code = (int(self.hflip and torch.rand(()) < 0.5)) | (2 * int(self.vflip and torch.rand(()) < 0.5))
        images, boxes = flip_batch(image[None], [torch.from_numpy(s.boxes).float() * scale], [code])
        return images[0].float().div(255), {"boxes": boxes[0], "labels": torch.from_numpy(s.labels).long()}


def _collate(batch):
    return tuple(zip(*batch))


def torchvision_stock_train(model: torch.nn.Module, samples, image_size: int, cfg: dict, epochs: int,
                            device: torch.device, workers: int, bf16: bool = False) -> dict:
    """Images/s per epoch of torchvision's references/detection ``train_one_epoch`` pattern: a DataLoader with
    ``workers`` processes, SGD, warm-up, ``loss.item()`` every step (its logger), gradient clipping as ours; with
    ``bf16`` its forward runs under bf16 autocast (as its ``--amp`` does on a GPU)."""
    model.to(device).train()
    loader = torch.utils.data.DataLoader(DiskDataset(samples, image_size, cfg["hflip"], cfg["vflip"]),
                                         batch_size=cfg["batch_size"], shuffle=True, num_workers=workers,
                                         collate_fn=_collate, persistent_workers=workers > 0)
    optimizer = make_optimizer(model, cfg)
    total = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, cfg["warmup_iters"]))
    epoch_img_s = []
    for _ in range(epochs):
        seen, start = 0, time.perf_counter()
        for images, targets in loader:
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                losses = model(images, targets)
            loss = sum(losses.values())
            if not math.isfinite(loss.item()):
                raise RuntimeError("non-finite loss")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad_norm"])
            optimizer.step()
            scheduler.step()
            seen += len(images)
        epoch_img_s.append(seen / (time.perf_counter() - start))
    return {"epoch_img_s": epoch_img_s}
