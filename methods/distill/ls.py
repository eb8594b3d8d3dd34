"""Label smoothing (``ls``, weight = ε): a control with no teacher, soft targets that carry no knowledge. It turns
the RoI head's cross-entropy into the label-smoothed one, so it needs a softmax RoI classifier (Faster R-CNN);
YOLO's per-class sigmoid sits inside ultralytics' loss, whose assigned targets the harness does not see."""
from __future__ import annotations

import torch

NAME = "ls"
DEFAULTS = {"weight": 0.1}
SEARCH = {"weight": ("float", 0.02, 0.3)}
TEACHER = False


def check(family: dict) -> None:
    if "roi" not in family:
        raise ValueError(f"ls smooths a softmax RoI classifier (Faster R-CNN), which {family['name']} does not have")


def label_smoothing_term(logits: torch.Tensor, cross_entropy: torch.Tensor) -> torch.Tensor:
    """The term that turns a softmax classifier's cross-entropy into label-smoothed cross-entropy (Szegedy et al.
    2016).

    With K classes (background included), logits z (R, K) and the detector's own mean cross-entropy CE,
    U = mean over rows of -(1/K) Σ_k log softmax(z)_k, and ε · (U - CE) added to CE gives
    (1 - ε) · CE + ε · U, which is ``F.cross_entropy(z, y, label_smoothing=ε)``. The method's weight is ε.
    """
    uniform = -torch.log_softmax(logits, dim=1).mean(1).mean()
    return uniform - cross_entropy


def terms(d, hp: dict, teacher: dict, targets, keys, losses: dict) -> dict[str, torch.Tensor]:
    """The term from the distiller ``d``'s captured RoI logits and the classifier's loss among ``losses``."""
    classifier_loss = losses[d.family["roi"]["classifier_loss"]]
    return {"kd_ls": label_smoothing_term(d._captured["roi_logits"].float(), classifier_loss.float())}
