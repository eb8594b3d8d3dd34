"""Detector families: builders, and what each family exposes to the methods as a declaration (``FAMILY`` in its
module): its name; its taps (the module holding each, in its output dict or as its n-th input, and its stride); the
module whose input is the network's input (and the heads int8 covers beside it); where its class logits are (RoI head, or dense logits); the channels of
each tap of a built model; the frozen teacher's feature pass; its anchors (FGFI); and what pruning traces and keeps.
Methods read these declarations (``methods.distill``, ``methods.prune``, ``methods.quantize``); no method guesses a
family from class names.
"""
from __future__ import annotations

from torch import nn


def _families() -> dict[str, dict]:
    from detectors import faster_rcnn, fcos, yolo
    return {m.FAMILY["name"]: m.FAMILY for m in (faster_rcnn, fcos, yolo)}


def family_of(model: nn.Module) -> str:
    """The family a builder stamped on the model (``detector_family``)."""
    name = getattr(model, "detector_family", None)
    if name is None:
        raise ValueError(f"{type(model).__name__} was not built by detectors/ (no detector_family)")
    return name


def declaration(model_or_name) -> dict:
    """The FAMILY declaration of a model (or a family name)."""
    name = model_or_name if isinstance(model_or_name, str) else family_of(model_or_name)
    families = _families()
    if name not in families:
        raise ValueError(f"unknown detector family '{name}' (known: {', '.join(families)})")
    return families[name]


def module_at(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted attribute path (``"backbone.fpn"``, ``"detect"``)."""
    for part in path.split("."):
        model = getattr(model, part)
    return model
