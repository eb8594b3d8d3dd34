"""A thin distillation wrapper: a student detector, a frozen teacher of the same family, weighted loss terms.

The student is trained by its own losses plus weighted distillation terms, all from its one training forward
pass: forward hooks give its feature taps and logits. The teacher runs in eval mode under ``torch.no_grad`` on the
same input batch. Three detector families, one plain dict of functions each (:data:`FAMILIES`):

- Faster R-CNN (torchvision): taps ``c3..c5`` (backbone body) and ``p3..p5`` (FPN); Hinton KD runs the teacher's
  box head on the teacher's FPN features pooled at the *student's* sampled proposals, so logit rows line up, and
  compares softmax distributions (:func:`hinton_kd_loss`).
- FCOS (torchvision): the same taps; Hinton KD on the dense sigmoid class logits at every location
  (:func:`sigmoid_kd_loss`: a binary KL per class, since a sigmoid head has no softmax over classes).
- YOLO (ultralytics): taps ``p3..p5`` are the neck maps the Detect head reads; Hinton KD on Detect's dense sigmoid
  class logits at every anchor point, as for FCOS. Ultralytics sums its losses over the batch, so the
  distillation terms of a YOLO student are multiplied by the batch size too (weights keep their meaning).

Feature methods (FitNets, AT, NST) compare the student's tap with the teacher's tap of the same name; FitNets
maps the student's map through a 1x1 adapter first. Because the teacher is frozen (eval-mode BN, no dropout) and
every image lies on a fixed canvas, its outputs for an (image, flip) pair never change: :class:`TeacherCache`
computes them once and reuses them across epochs and across the runs of a study. This is exact.
"""
from __future__ import annotations

import torch
from torch import nn

from methods.distill.adapters import FeatureAdapter
from methods.distill.losses import (attention_transfer_loss, cwd_loss, fgfi_loss, fgfi_mask, fitnets_loss,
                                    hinton_kd_loss, ld_loss, nst_loss, nst_teacher_kernel, pkd_loss, sigmoid_kd_loss)

FEATURE_LOSSES = {"fitnets": fitnets_loss, "at": attention_transfer_loss, "nst": nst_loss, "pkd": pkd_loss,
                  "cwd": cwd_loss, "fgfi": fgfi_loss}
ADAPTED = ("fitnets", "pkd", "cwd", "fgfi")  # compare the student's map after a 1x1 adapter to the teacher's shape
METHODS = ("hinton", "ld") + tuple(FEATURE_LOSSES)
ANCHOR_FREE_SCALE = 8  # FGFI on anchor-free heads: one square anchor of 8 x stride per point (ATSS's base anchor)


def parse_method(method: str) -> list[str]:
    """``"hinton+at"`` -> ``["hinton", "at"]``; raises on an unknown part."""
    parts = [p for p in method.split("+") if p]
    unknown = [p for p in parts if p not in METHODS]
    if unknown or not parts:
        raise ValueError(f"unknown distillation method '{method}' (parts: {', '.join(METHODS)}, joined by '+')")
    return parts


def family_of(model: nn.Module) -> str:
    """'faster_rcnn', 'fcos' or 'yolo', from the model's class."""
    name = type(model).__name__
    if name == "YOLODetector":
        return "yolo"
    if name in ("FCOS", "FCOSDetector"):
        return "fcos"
    if hasattr(model, "roi_heads"):
        return "faster_rcnn"
    raise ValueError(f"no distillation support for {name}")


# ------------------------------------------------------------------ per family: the teacher's outputs
def _torchvision_features(teacher: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    c = teacher.backbone.body(x)
    return {**c, **teacher.backbone.fpn(c)}


def _fcos_features(teacher: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    feats = _torchvision_features(teacher, x)
    logits = teacher.head.classification_head([feats[k] for k in ("p3", "p4", "p5", "p6")])
    return feats | {"dense_logits": logits}


def _yolo_features(teacher: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    _, preds = teacher.model(x)
    return dict(zip(("p3", "p4", "p5"), preds["feats"])) | {"dense_logits": preds["scores"].transpose(1, 2),
                                                            "dense_boxes": preds["boxes"].transpose(1, 2)}


# ------------------------------------------------------------------ per family: the student's hooks
def _keep(captured: dict, name: str, pick):
    def hook(module, args, output):
        captured[name] = pick(args, output)
    return hook


def _torchvision_hooks(student: nn.Module, captured: dict) -> list:
    return [student.backbone.register_forward_hook(_keep(captured, "x", lambda a, o: a[0])),
            student.backbone.body.register_forward_hook(_keep(captured, "body", lambda a, o: dict(o))),
            student.backbone.fpn.register_forward_hook(_keep(captured, "fpn", lambda a, o: dict(o)))]


def _faster_rcnn_hooks(student: nn.Module, captured: dict) -> list:
    roi = student.roi_heads
    return _torchvision_hooks(student, captured) + [
        roi.box_roi_pool.register_forward_hook(_keep(captured, "proposals", lambda a, o: (a[1], a[2]))),
        roi.box_predictor.register_forward_hook(_keep(captured, "roi_logits", lambda a, o: o[0]))]


def _fcos_hooks(student: nn.Module, captured: dict) -> list:
    return _torchvision_hooks(student, captured) + [
        student.head.classification_head.register_forward_hook(_keep(captured, "dense_logits", lambda a, o: o))]


def _yolo_hooks(student: nn.Module, captured: dict) -> list:
    detect = student.detect
    return [student.model.register_forward_hook(_keep(captured, "x", lambda a, o: a[0])),
            detect.register_forward_hook(_keep(captured, "fpn", lambda a, o: dict(zip(("p3", "p4", "p5"), a[0])))),
            detect.register_forward_hook(_keep(captured, "dense_logits", lambda a, o: (
                o if isinstance(o, dict) else o[1])["scores"].transpose(1, 2))),
            detect.register_forward_hook(_keep(captured, "dense_boxes", lambda a, o: (
                o if isinstance(o, dict) else o[1])["boxes"].transpose(1, 2)))]


# ------------------------------------------------------------------ per family: anchors (FGFI) and points (LD)
def _level(tap: str) -> int:
    return int(tap[1:]) - 3  # c3/p3 -> 0 (stride 8), c4/p4 -> 1, c5/p5 -> 2


def _grid(h: int, w: int, stride: float, offset: float, device) -> torch.Tensor:
    """Centres (H, W, 2) as (x, y) of a stride-``stride`` grid, ``offset`` cells from the corner."""
    ys, xs = torch.meshgrid((torch.arange(h, device=device) + offset) * stride,
                            (torch.arange(w, device=device) + offset) * stride, indexing="ij")
    return torch.stack([xs, ys], dim=-1).float()


def _faster_rcnn_anchors(student: nn.Module, tap: str, h: int, w: int, stride: float) -> torch.Tensor:
    """The RPN's own anchors of the tap's level (torchvision: centred on x·stride), (H, W, A, 4)."""
    gen = student.rpn.anchor_generator
    level = _level(tap)
    base = gen.generate_anchors(gen.sizes[level], gen.aspect_ratios[level]).to(next(student.parameters()).device)
    centres = _grid(h, w, stride, 0.0, base.device).repeat(1, 1, 2)  # (H, W, 4) as x, y, x, y
    return centres[:, :, None, :] + base[None, None]


def _point_anchors(offset: float):
    def anchors(student: nn.Module, tap: str, h: int, w: int, stride: float) -> torch.Tensor:
        """Anchor-free heads: one square of ANCHOR_FREE_SCALE x stride per point, (H, W, 1, 4)."""
        centres = _grid(h, w, stride, offset, next(student.parameters()).device)
        half = ANCHOR_FREE_SCALE * stride / 2
        return torch.cat([centres - half, centres + half], dim=-1)[:, :, None, :]
    return anchors


FAMILIES = {
    "faster_rcnn": {"teacher": _torchvision_features, "hooks": _faster_rcnn_hooks, "anchors": _faster_rcnn_anchors},
    "fcos": {"teacher": _fcos_features, "hooks": _fcos_hooks, "anchors": _point_anchors(0.0)},
    "yolo": {"teacher": _yolo_features, "hooks": _yolo_hooks, "anchors": _point_anchors(0.5)},
}


class TeacherCache:
    """The teacher's taps (and dense logits) per (image index, flip code), computed once, bounded in memory."""

    def __init__(self, teacher: nn.Module, budget_mb: float = 4096):
        # channels-last: the frozen teacher's feature pass ran 1.2x faster on the CPU (results/bench/bench.md)
        self.teacher = teacher.eval().to(memory_format=torch.channels_last)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.family = family_of(teacher)
        self.budget_bytes = budget_mb * 2**20
        self.used_bytes = 0
        self.store: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def compute(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return FAMILIES[self.family]["teacher"](self.teacher, x.contiguous(memory_format=torch.channels_last))

    @torch.no_grad()
    def features(self, x: torch.Tensor, keys: list[tuple[int, int]] | None) -> dict[str, torch.Tensor]:
        """Teacher outputs for the input batch ``x``; ``keys`` name its images for the cache (None: no cache)."""
        if keys is None:
            return self.compute(x)
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        fresh = self.compute(x[missing]) if missing else {}
        rows = {}
        for j, i in enumerate(missing):
            rows[i] = {name: f[j] for name, f in fresh.items()}
            size = sum(t.numel() * t.element_size() for t in rows[i].values())
            if self.used_bytes + size <= self.budget_bytes:
                self.store[keys[i]] = {name: t.clone() for name, t in rows[i].items()}
                self.used_bytes += size
        per_image = [rows[i] if i in rows else self.store[k] for i, k in enumerate(keys)]
        return {name: torch.stack([f[name] for f in per_image]) for name in per_image[0]}


class Distiller(nn.Module):
    """Student + adapters; the teacher (inside ``teacher_cache``) is held outside the module tree.

    ``methods`` maps each method name to its hyperparameters, e.g.
    ``{"hinton": {"weight": 1.0, "temperature": 4}, "at": {"weight": 1000, "p": 2, "taps": ["c3", "c4", "c5"]}}``.

    Weights: a method's ``weight`` multiplies its terms (summed over its taps), unless it has ``balance: r``: then
    for the first ``balance_steps`` training steps (default 20) its terms are computed but weighted 0 while the mean
    of its raw terms and of the detector's own loss are measured, and from then on its weight is fixed at
    r · mean(detector loss) / mean(raw term), so that term / detector loss = r at the start. ``warmup_epochs`` (any
    method; needs ``steps_per_epoch``) ramps the weight linearly from 0 over the first epochs after that.
    :meth:`resolved_weights` gives the weights used.
    """

    def __init__(self, student: nn.Module, teacher_cache: TeacherCache, methods: dict[str, dict],
                 steps_per_epoch: int | None = None):
        super().__init__()
        self.student = student
        self.teacher_cache = teacher_cache
        self.methods = methods
        self.family = family_of(student)
        if self.family != teacher_cache.family:
            raise ValueError(f"a {self.family} student needs a {self.family} teacher, not {teacher_cache.family}")
        if "ld" in methods and self.family != "yolo":
            raise ValueError(f"ld needs a head that predicts box-edge distributions (YOLO), not {self.family}")
        self.batch_scaled = getattr(student, "losses_summed_over_batch", False)
        self._captured: dict = {}
        self._teacher_kernels: dict = {}  # NST's K(t, t) per (tap, image, flip)
        self._hooks = FAMILIES[self.family]["hooks"](student, self._captured)
        self.adapters = nn.ModuleDict()
        adapted = [(name, tap) for name in ADAPTED for tap in methods.get(name, {}).get("taps", [])]
        if adapted:
            s_ch, t_ch = self._tap_channels()
            for name, tap in adapted:
                self.adapters[self._adapter_key(name, tap)] = FeatureAdapter(s_ch[tap], t_ch[tap])
        self.steps_per_epoch = steps_per_epoch
        self.weights = {name: (0.0 if "balance" in hp else float(hp.get("weight", 1.0))) for name, hp in methods.items()}
        self._measured = {name: [0.0, 0.0, 0] for name, hp in methods.items() if "balance" in hp}  # term, det, steps
        self._step = 0
        self.last_raw: dict[str, dict[str, float]] = {}
        # balanced terms are clipped apart from the detector's own loss (study.train.backward_clipped_apart)
        self.clip_apart = bool(self._measured)

    @staticmethod
    def _adapter_key(name: str, tap: str) -> str:
        return tap if name == "fitnets" else f"{name}_{tap}"

    def resolved_weights(self) -> dict[str, float]:
        """Each method's weight as used after its measurement window (the raw weight when not balanced)."""
        return dict(self.weights)

    def _tap_channels(self) -> tuple[dict[str, int], dict[str, int]]:
        """Channels of every tap of the student and the teacher, from one small eval forward of each."""
        x = torch.zeros(1, 3, 128, 128, device=next(self.student.parameters()).device)
        was_training = self.student.training
        with torch.no_grad():
            self.student.eval()
            self.student([x[0]])
            self.student.train(was_training)
            teacher = self.teacher_cache.compute(self._captured["x"].to(next(self.teacher_cache.teacher.parameters()).device))
        student_taps = {**self._captured.get("body", {}), **self._captured["fpn"]}
        self._captured.clear()
        return ({k: v.shape[1] for k, v in student_taps.items()},
                {k: v.shape[1] for k, v in teacher.items() if v.dim() == 4})

    def adapter_params(self) -> int:
        return sum(p.numel() for p in self.adapters.parameters())

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()

    def _hinton(self, hp: dict, teacher: dict) -> torch.Tensor:
        cap, T = self._captured, hp["temperature"]
        if self.family == "faster_rcnn":
            roi = self.teacher_cache.teacher.roi_heads
            proposals, image_shapes = cap["proposals"]
            with torch.no_grad():
                pooled = roi.box_roi_pool({k: teacher[k] for k in ("p3", "p4", "p5")}, proposals, image_shapes)
                teacher_logits, _ = roi.box_predictor(roi.box_head(pooled))
            return hinton_kd_loss(cap["roi_logits"], teacher_logits, T)
        s, t = cap["dense_logits"], teacher["dense_logits"]
        return sigmoid_kd_loss(s.flatten(0, 1), t.flatten(0, 1).to(s.dtype), T)

    def _ld(self, hp: dict, teacher: dict, targets: list[dict]) -> torch.Tensor:
        """LD on the Detect head's DFL bins at the positive locations: here the anchor points whose centre lies
        inside a ground-truth box (the candidate region of centre sampling; the assigner's own positives are inside
        ultralytics' loss and not exposed)."""
        s, t = self._captured["dense_boxes"], teacher["dense_boxes"].to(self._captured["dense_boxes"].dtype)
        image_h, image_w = self._captured["x"].shape[-2:]
        points = torch.cat([_grid(f.shape[-2], f.shape[-1], image_h / f.shape[-2], 0.5, s.device).reshape(-1, 2)
                            for f in self._captured["fpn"].values()])  # (A, 2), in the head's anchor order
        rows_s, rows_t = [], []
        for n, target in enumerate(targets):
            boxes = target["boxes"].to(s.device)
            inside = ((points[:, None, 0] > boxes[None, :, 0]) & (points[:, None, 0] < boxes[None, :, 2]) &
                      (points[:, None, 1] > boxes[None, :, 1]) & (points[:, None, 1] < boxes[None, :, 3])).any(1)
            bins = s.shape[-1] // 4
            rows_s.append(s[n, inside].reshape(-1, bins))
            rows_t.append(t[n, inside].reshape(-1, bins))
        return ld_loss(torch.cat(rows_s), torch.cat(rows_t), hp.get("temperature", 10.0))

    def _fgfi_mask(self, tap: str, feat: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        h, w = feat.shape[-2:]
        stride = self._captured["x"].shape[-2] / h
        anchors = FAMILIES[self.family]["anchors"](self.student, tap, h, w, stride)
        psi = self.methods["fgfi"].get("psi", 0.5)
        return torch.stack([fgfi_mask(anchors, t["boxes"].to(anchors.device).float(), psi) for t in targets])

    @torch.no_grad()
    def _nst_teacher_kernel(self, tap: str, s: torch.Tensor, t: torch.Tensor, keys) -> torch.Tensor | None:
        """NST's mean K(t, t) for the batch from per-(tap, image, flip) values computed once (its largest kernel:
        the teacher has the most channels); None without keys."""
        if keys is None:
            return None
        missing = [i for i, k in enumerate(keys) if (tap, k) not in self._teacher_kernels]
        if missing:
            for i, value in zip(missing, nst_teacher_kernel(s[missing], t[missing])):
                self._teacher_kernels[(tap, keys[i])] = value
        return torch.stack([self._teacher_kernels[(tap, k)] for k in keys]).mean()

    def _raw_terms(self, name: str, hp: dict, teacher: dict, targets: list[dict], keys) -> dict[str, torch.Tensor]:
        """A method's unweighted terms, one per tap (``kd_<method>_<tap>``) or one for the method."""
        if name == "hinton":
            return {"kd_hinton": self._hinton(hp, teacher)}
        if name == "ld":
            return {"kd_ld": self._ld(hp, teacher, targets)}
        cap = self._captured
        student_taps = {**cap.get("body", {}), **cap["fpn"]}
        terms = {}
        for tap in hp["taps"]:
            if tap not in student_taps:
                raise ValueError(f"{self.family} has no feature tap '{tap}' (taps: {', '.join(student_taps)})")
            s, t = student_taps[tap].contiguous(), teacher[tap]
            if name in ADAPTED:
                s = self.adapters[self._adapter_key(name, tap)](s, t.shape[-2:])
            if name == "at":
                term = attention_transfer_loss(s, t, hp.get("p", 2))
            elif name == "nst":
                term = nst_loss(s, t, self._nst_teacher_kernel(tap, s, t, keys))
            elif name == "cwd":
                term = cwd_loss(s, t, hp.get("tau", 1.0))
            elif name == "fgfi":
                term = fgfi_loss(s, t, self._fgfi_mask(tap, t, targets))
            else:
                term = FEATURE_LOSSES[name](s, t)
            terms[f"kd_{name}_{tap}"] = term
        return terms

    def _weight(self, name: str, hp: dict, raw: dict[str, torch.Tensor], detector_loss: torch.Tensor) -> float:
        """The method's weight at this step (measuring a balanced method's ratio in its window)."""
        if not self.training:
            return self.weights[name]
        if name in self._measured:
            measured = self._measured[name]
            window = hp.get("balance_steps", 20)
            if measured[2] < window:
                measured[0] += float(sum(v.detach() for v in raw.values()))
                measured[1] += float(detector_loss.detach())
                measured[2] += 1
                if measured[2] == window:
                    self.weights[name] = hp["balance"] * measured[1] / max(measured[0], 1e-12)
                return 0.0
        weight = self.weights[name]
        warmup = hp.get("warmup_epochs", 0)
        if warmup and self.steps_per_epoch:
            start = hp.get("balance_steps", 20) if name in self._measured else 0
            weight *= min(1.0, (self._step - start + 1) / (warmup * self.steps_per_epoch))
        return weight

    def forward(self, images: list[torch.Tensor], targets: list[dict], keys: list[tuple[int, int]] | None = None):
        """The student's own losses plus one weighted ``kd_<method>[_<tap>]`` term per method and tap."""
        self._captured.clear()
        losses = self.student(images, targets)
        detector_loss = sum(losses.values())
        teacher = self.teacher_cache.features(self._captured["x"], keys)
        scale = len(images) if self.batch_scaled else 1
        self.last_raw = {}  # each method's unweighted terms (times the batch scale), for logs and tests
        for name, hp in self.methods.items():
            raw = {k: scale * v for k, v in self._raw_terms(name, hp, teacher, targets, keys).items()}
            self.last_raw[name] = {k: float(v.detach()) for k, v in raw.items()}
            weight = self._weight(name, hp, raw, detector_loss)
            losses |= {k: weight * v for k, v in raw.items()}
        if self.training:
            self._step += 1
        return losses
