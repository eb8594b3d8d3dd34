"""Hinton KD (``hinton``): the student's class logits pulled towards the teacher's, softened by a temperature.

On a RoI head (Faster R-CNN) the teacher's box head classifies the *student's* sampled proposals, so that the rows
line up, and softmax distributions are compared (:func:`hinton_kd_loss`); on dense sigmoid heads (FCOS, YOLO) the
class logits at every location are compared per class (:func:`sigmoid_kd_loss`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from detectors import module_at

NAME = "hinton"
DEFAULTS = {"weight": 1.0, "temperature": 4.0}
SEARCH = {"temperature": ("float", 1.0, 8.0), "weight": ("log", 0.1, 10.0)}
TEACHER = True


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network".

    loss = T² · KL( softmax(t/T) ‖ softmax(s/T) ), summed over classes and averaged over the N rows ("batchmean").
    Logits have shape (N, C).
    """
    T = temperature
    return F.kl_div(F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),
                    reduction="batchmean") * T * T


def sigmoid_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD for sigmoid-classified dense heads (YOLOv8, FCOS): one binary distribution per class.

    Such heads score every class independently with a sigmoid, so there is no softmax over classes to soften.
    Each (location, class) logit is a Bernoulli distribution; with p = σ(t/T) and q = σ(s/T),
    loss = T² · (1/N) Σ_rows Σ_c [ p log(p/q) + (1-p) log((1-p)/(1-q)) ],
    the binary KL summed over classes and averaged over the N rows (locations), the "batchmean" of
    :func:`hinton_kd_loss`. KL rather than BCE so that the loss is 0 when the student matches the teacher (the
    two differ by the teacher's entropy, a constant). Logits have shape (N, C).
    """
    T = temperature
    s, t = student_logits / T, teacher_logits / T
    p = torch.sigmoid(t)
    cross_entropy = F.binary_cross_entropy_with_logits(s, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(t, p, reduction="none")
    return (cross_entropy - entropy).sum() / s.shape[0] * T * T


def terms(d, hp: dict, teacher: dict, targets, keys, losses) -> dict[str, torch.Tensor]:
    """The one term of a distiller ``d``'s step, from its captured logits (and the teacher's)."""
    cap, T = d._captured, hp["temperature"]
    if "roi" in d.family:  # the teacher's RoI head classifies the student's sampled proposals
        roi, model = d.family["roi"], d.teacher_cache.teacher
        proposals, image_shapes = cap["proposals"]
        with torch.no_grad():
            pool = module_at(model, roi["pool"])
            pooled = pool({k: teacher[k].float() for k in pool.featmap_names}, proposals, image_shapes)
            teacher_logits, _ = module_at(model, roi["predictor"])(module_at(model, roi["head"])(pooled))
        return {"kd_hinton": hinton_kd_loss(cap["roi_logits"].float(), teacher_logits, T)}
    s, t = cap["dense_logits"].float(), teacher["dense_logits"].float()
    return {"kd_hinton": sigmoid_kd_loss(s.flatten(0, 1), t.flatten(0, 1), T)}
