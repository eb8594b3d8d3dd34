"""Localization distillation (``ld``) on heads that predict each box edge as a distribution over bins (YOLOv8's DFL
head): the student's bins match the teacher's, softened, at the positive locations; balanced to a ratio of the
detector's own loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from detectors.faster_rcnn import grid_centres

NAME = "ld"
DEFAULTS = {"weight": 0.25, "temperature": 10.0, "balance": 0.5}
SEARCH = {"balance": ("log", 0.05, 5.0), "temperature": ("log", 2.0, 20.0)}
TEACHER = True


def check(family: dict) -> None:
    if "dense_boxes" not in family:
        raise ValueError(f"ld needs a head that predicts box-edge distributions (YOLO), not {family['name']}")


def ld_loss(student_bins: torch.Tensor, teacher_bins: torch.Tensor, tau: float = 10.0) -> torch.Tensor:
    """Zheng et al. 2022, "Localization distillation for dense object detection", on box edges predicted as
    distributions over bins (YOLOv8's DFL head, GFL).

    student_bins, teacher_bins: (E, B) logits, one row per box edge of the positive locations (4 per location);
    loss = tau² · mean over the E edges of KL(softmax(t / tau) ‖ softmax(s / tau)).
    """
    if student_bins.shape[0] == 0:
        return student_bins.sum() * 0.0
    return F.kl_div(F.log_softmax(student_bins / tau, dim=1), F.softmax(teacher_bins / tau, dim=1),
                    reduction="batchmean") * tau * tau


def terms(d, hp: dict, teacher: dict, targets: list[dict], keys, losses) -> dict[str, torch.Tensor]:
    """LD on the Detect head's DFL bins at the positive locations: here the anchor points whose centre lies
    inside a ground-truth box (the candidate region of centre sampling; the assigner's own positives are inside
    ultralytics' loss and not exposed)."""
    s, t = d._captured["dense_boxes"].float(), teacher["dense_boxes"].float()
    image_h, image_w = d._captured["x"].shape[-2:]
    points = torch.cat([grid_centres(f.shape[-2], f.shape[-1], image_h / f.shape[-2], 0.5, s.device).reshape(-1, 2)
                        for f in d._captured["taps"].values()])  # (A, 2), in the head's anchor order
    rows_s, rows_t = [], []
    for n, target in enumerate(targets):
        boxes = target["boxes"].to(s.device)
        inside = ((points[:, None, 0] > boxes[None, :, 0]) & (points[:, None, 0] < boxes[None, :, 2]) &
                  (points[:, None, 1] > boxes[None, :, 1]) & (points[:, None, 1] < boxes[None, :, 3])).any(1)
        bins = s.shape[-1] // 4
        rows_s.append(s[n, inside].reshape(-1, bins))
        rows_t.append(t[n, inside].reshape(-1, bins))
    return {"kd_ld": ld_loss(torch.cat(rows_s), torch.cat(rows_t), hp.get("temperature", 10.0))}
