"""Images decoded and resized once per run, kept in memory as uint8, with their boxes on the same canvas.

Every image is scaled so that its longer side is ``image_size`` (aspect kept) and placed at the top-left of one
canvas shared by the whole dataset (height and width rounded up to a multiple of 32). Because all images have
the same size, the detector sees them unresized, and a frozen teacher's features for an (image, flip) pair are
fixed, which is what lets the distiller cache them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

from study.data import DataError, Sample


def canvas_size(samples: list[Sample], image_size: int) -> tuple[int, int]:
    """(height, width) of the canvas holding every sample scaled to longest side ``image_size``."""
    height = width = 32
    for s in samples:
        scale = image_size / max(s.width, s.height)
        height = max(height, math.ceil(s.height * scale / 32) * 32)
        width = max(width, math.ceil(s.width * scale / 32) * 32)
    return height, width


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, H, W) uint8
    boxes: list[torch.Tensor]  # per image (K, 4) float32 on the canvas
    labels: list[torch.Tensor]  # per image (K,) int64
    scales: list[float]  # canvas pixels per original pixel
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)


def decode_resized(sample: Sample, image_size: int) -> tuple[torch.Tensor, float]:
    """The sample's image decoded, RGB, resized so that its longer side is ``image_size``: ((3, h, w) uint8, scale)."""
    scale = image_size / max(sample.width, sample.height)
    new_w, new_h = max(1, round(sample.width * scale)), max(1, round(sample.height * scale))
    try:
        with Image.open(sample.image_path) as im:
            im = im.convert("RGB").resize((new_w, new_h), Image.BILINEAR)
    except Exception as exc:
        raise DataError(f"{sample.image_path}: image cannot be decoded ({type(exc).__name__})") from None
    image = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(new_h, new_w, 3).permute(2, 0, 1)
    return image, scale


def load_images(samples: list[Sample], canvas: tuple[int, int], image_size: int) -> ImageSet:
    height, width = canvas
    images = torch.zeros((len(samples), 3, height, width), dtype=torch.uint8)
    boxes, labels, scales = [], [], []
    for i, s in enumerate(samples):
        image, scale = decode_resized(s, image_size)
        images[i, :, :image.shape[1], :image.shape[2]] = image
        boxes.append(torch.from_numpy(s.boxes).float() * scale)
        labels.append(torch.from_numpy(s.labels).long())
        scales.append(scale)
    return ImageSet(images, boxes, labels, scales, samples)


def flip_batch(images: torch.Tensor, boxes: list[torch.Tensor], flips: list[int]):
    """Apply per-image flips (bit 0: horizontal, bit 1: vertical) to a uint8 batch and its boxes."""
    height, width = images.shape[-2:]
    out_images, out_boxes = [], []
    for img, b, code in zip(images, boxes, flips):
        b = b.clone()
        if code & 1:
            img = img.flip(-1)
            b[:, [0, 2]] = width - b[:, [2, 0]]
        if code & 2:
            img = img.flip(-2)
            b[:, [1, 3]] = height - b[:, [3, 1]]
        out_images.append(img)
        out_boxes.append(b)
    return torch.stack(out_images), out_boxes
