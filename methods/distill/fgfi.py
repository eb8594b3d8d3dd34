"""Fine-grained feature imitation (``fgfi``): the student's map (after a 1×1 adapter) imitates the teacher's only at
the near-object locations, found from the family's anchors and the ground-truth boxes; balanced to a ratio of the
detector's own loss. Anchor-free heads get one square anchor of 8 × stride per point (ATSS's base anchor), which
the family declares."""
from __future__ import annotations

import torch

NAME = "fgfi"
DEFAULTS = {"weight": 0.01, "psi": 0.5, "taps": ["p3", "p4", "p5"], "balance": 0.5}
SEARCH = {"balance": ("log", 0.05, 5.0), "taps": "taps", "psi": ("float", 0.3, 0.8)}
TEACHER = True
ADAPTED = True


def fgfi_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wang et al. 2019, "Distilling object detectors with fine-grained feature imitation".

    s (adapted) and t are (N, C, H, W), mask (N, H, W) of 0/1 marks the near-object locations (:func:`fgfi_mask`);
    loss = Σ_{n,c,h,w} M[n,h,w] · (s − t)² / (2 · Σ_{n,h,w} M), and 0 when the mask is empty.
    """
    mask = mask.to(student_feat.dtype)
    total = mask.sum()
    if total == 0:
        return student_feat.sum() * 0.0  # keeps the graph (and the device) of the student's map
    return (mask.unsqueeze(1) * (student_feat - teacher_feat).pow(2)).sum() / (2 * total)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of a (A, 4) with every box of b (B, 4), xyxy: (A, B)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def fgfi_mask(anchors: torch.Tensor, boxes: torch.Tensor, psi: float = 0.5) -> torch.Tensor:
    """FGFI's imitation region of one image at one level: anchors (H, W, A, 4) xyxy in input pixels (A anchors per
    location), ground-truth boxes (K, 4). For each box, the anchors whose IoU with it exceeds ψ · (that box's best
    anchor IoU) are kept; a location is in the mask if any of its anchors is. Returns (H, W) of 0/1."""
    h, w, a, _ = anchors.shape
    if len(boxes) == 0:
        return torch.zeros(h, w, device=anchors.device)
    iou = box_iou(anchors.reshape(-1, 4), boxes)  # (H·W·A, K)
    best = iou.max(dim=0).values  # per box
    keep = (iou > psi * best[None, :]) & (best[None, :] > 0)
    return keep.any(dim=1).reshape(h, w, a).any(dim=2).float()


def masks(d, hp: dict, tap: str, feat: torch.Tensor, targets: list[dict]) -> torch.Tensor:
    """The batch's masks (N, H, W) at one tap of the distiller ``d``'s student, from the family's anchors."""
    h, w = feat.shape[-2:]
    stride = d._captured["x"].shape[-2] / h
    anchors = d.family["anchors"](d.student, tap, h, w, stride)
    psi = hp.get("psi", 0.5)
    return torch.stack([fgfi_mask(anchors, t["boxes"].to(anchors.device).float(), psi) for t in targets])


def tap_term(d, hp: dict, tap: str, s: torch.Tensor, t: torch.Tensor, targets, keys) -> torch.Tensor:
    return fgfi_loss(s, t, masks(d, hp, tap, t, targets))
