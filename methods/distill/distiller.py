"""A thin distillation wrapper around a torchvision Faster R-CNN student and a frozen teacher.

The student is trained by its own losses plus weighted distillation terms. Forward hooks on the student give its
feature taps (``c3..c5`` from the backbone body, ``p3..p5`` from the FPN), the proposals its RoI head sampled and
its RoI classification logits, all from the one training forward pass. The teacher runs in eval mode under
``torch.no_grad`` on the same normalised canvas batch:

- feature methods (FitNets, AT, NST) compare the student's tap with the teacher's tap of the same name;
- Hinton KD runs the teacher's box head on the teacher's FPN features pooled at the *student's* sampled proposals,
  so that logit rows line up.

Because the teacher is frozen (eval-mode BN, no dropout) and every image lies on a fixed canvas, its features for an
(image, flip) pair never change: :class:`TeacherCache` computes them once and reuses them across epochs and across
the runs of a study. This is exact, not an approximation.
"""
from __future__ import annotations

import torch
from torch import nn

from methods.distill.adapters import FeatureAdapter
from methods.distill.losses import attention_transfer_loss, fitnets_loss, hinton_kd_loss, nst_loss

FEATURE_LOSSES = {"fitnets": fitnets_loss, "at": attention_transfer_loss, "nst": nst_loss}
METHODS = ("hinton",) + tuple(FEATURE_LOSSES)


def parse_method(method: str) -> list[str]:
    """``"hinton+at"`` -> ``["hinton", "at"]``; raises on an unknown part."""
    parts = [p for p in method.split("+") if p]
    unknown = [p for p in parts if p not in METHODS]
    if unknown or not parts:
        raise ValueError(f"unknown distillation method '{method}' (parts: {', '.join(METHODS)}, joined by '+')")
    return parts


class TeacherCache:
    """Teacher features (backbone and FPN taps) per (image index, flip code), computed once, bounded in memory."""

    def __init__(self, teacher: nn.Module, budget_mb: float = 4096):
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.budget_bytes = budget_mb * 2**20
        self.used_bytes = 0
        self.store: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def _compute(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.teacher.backbone.body(x)
        p = self.teacher.backbone.fpn(c)
        return {**c, **p}

    @torch.no_grad()
    def features(self, x: torch.Tensor, keys: list[tuple[int, int]] | None) -> dict[str, torch.Tensor]:
        """Teacher taps for the normalised batch ``x``; ``keys`` name its images for the cache (None: no cache)."""
        if keys is None:
            return self._compute(x)
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        fresh = self._compute(x[missing]) if missing else {}
        rows = {}
        for j, i in enumerate(missing):
            rows[i] = {name: f[j] for name, f in fresh.items()}
            size = sum(t.numel() * t.element_size() for t in rows[i].values())
            if self.used_bytes + size <= self.budget_bytes:
                self.store[keys[i]] = {name: t.clone() for name, t in rows[i].items()}
                self.used_bytes += size
        per_image = [rows[i] if i in rows else self.store[k] for i, k in enumerate(keys)]
        return {name: torch.stack([f[name] for f in per_image]) for name in per_image[0]}


class FasterRCNNDistiller(nn.Module):
    """Student + adapters; the teacher (inside ``teacher_cache``) is held outside the module tree.

    ``methods`` maps each method name to its hyperparameters, e.g.
    ``{"hinton": {"weight": 1.0, "temperature": 4}, "at": {"weight": 1000, "p": 2, "taps": ["c3", "c4", "c5"]}}``.
    """

    def __init__(self, student: nn.Module, teacher_cache: TeacherCache, methods: dict[str, dict]):
        super().__init__()
        self.student = student
        self.teacher_cache = teacher_cache
        self.methods = methods
        teacher = teacher_cache.teacher
        self.adapters = nn.ModuleDict()
        for tap in methods.get("fitnets", {}).get("taps", []):
            s_ch, t_ch = (self._tap_channels(student, tap), self._tap_channels(teacher, tap))
            self.adapters[tap] = FeatureAdapter(s_ch, t_ch)
        self._captured: dict = {}
        self._hooks = [
            student.backbone.register_forward_hook(self._keep_input("x")),
            student.backbone.body.register_forward_hook(self._keep_output("body")),
            student.backbone.fpn.register_forward_hook(self._keep_output("fpn")),
            student.roi_heads.box_roi_pool.register_forward_hook(self._keep_roi_input),
            student.roi_heads.box_predictor.register_forward_hook(self._keep_output("logits")),
        ]

    @staticmethod
    def _tap_channels(model: nn.Module, tap: str) -> int:
        if tap.startswith("c"):
            return model.backbone.body_channels[int(tap[1]) - 3]
        return model.backbone.out_channels

    def _keep_input(self, name):
        def hook(module, args, output):
            self._captured[name] = args[0]
        return hook

    def _keep_output(self, name):
        def hook(module, args, output):
            self._captured[name] = output[0] if name == "logits" else output
        return hook

    def _keep_roi_input(self, module, args, output):
        self._captured["proposals"], self._captured["image_shapes"] = args[1], args[2]

    def adapter_params(self) -> int:
        return sum(p.numel() for p in self.adapters.parameters())

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()

    def forward(self, images: list[torch.Tensor], targets: list[dict], keys: list[tuple[int, int]] | None = None):
        """The student's own losses plus one weighted ``kd_<method>[_<tap>]`` term per method and tap."""
        self._captured.clear()
        losses = self.student(images, targets)
        cap = self._captured
        teacher_feats = self.teacher_cache.features(cap["x"], keys)
        student_taps = {**cap["body"], **cap["fpn"]}
        for name, hp in self.methods.items():
            if name == "hinton":
                roi = self.teacher_cache.teacher.roi_heads
                with torch.no_grad():
                    pooled = roi.box_roi_pool({k: teacher_feats[k] for k in ("p3", "p4", "p5")},
                                              cap["proposals"], cap["image_shapes"])
                    teacher_logits, _ = roi.box_predictor(roi.box_head(pooled))
                losses["kd_hinton"] = hp["weight"] * hinton_kd_loss(cap["logits"], teacher_logits, hp["temperature"])
                continue
            loss_fn = FEATURE_LOSSES[name]
            for tap in hp["taps"]:
                s, t = student_taps[tap], teacher_feats[tap]
                if name == "fitnets":
                    term = loss_fn(self.adapters[tap](s, t.shape[-2:]), t)
                elif name == "at":
                    term = loss_fn(s, t, hp.get("p", 2))
                else:
                    term = loss_fn(s, t)
                losses[f"kd_{name}_{tap}"] = hp["weight"] * term
        return losses
