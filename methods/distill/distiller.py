"""A thin distillation wrapper: a student detector, a frozen teacher of the same family, weighted loss terms.

The student is trained by its own losses plus weighted distillation terms, all from its one training forward
pass: forward hooks give its feature taps and logits. Where they are is the detector family's knowledge, declared in
``detectors/`` (``FAMILY`` of each module); :func:`register_hooks` reads that declaration for every family:

- taps (``c3..c5`` backbone stages and ``p3..p5`` FPN levels of the torchvision families; ``p3..p5``, the neck maps
  the Detect head reads, of YOLO), each compared with the teacher's tap of the same name;
- Hinton KD: on a RoI head (Faster R-CNN) the teacher's box head classifies the *student's* sampled proposals, so
  logit rows line up, and softmax distributions are compared (:func:`hinton_kd_loss`); on dense sigmoid heads
  (FCOS, YOLO) the class logits at every location are compared per class (:func:`sigmoid_kd_loss`). Ultralytics sums
  its losses over the batch, so the distillation terms of a YOLO student are multiplied by the batch size too.

FitNets, PKD, CWD and FGFI map the student's map through a 1x1 adapter to the teacher's shape first. Because the
teacher is frozen (eval-mode BN, no dropout) and every image lies on a fixed canvas, its outputs for an (image,
flip) pair never change: :class:`TeacherCache` computes them once and reuses them across epochs and across the
runs of a study. This is exact.
"""
from __future__ import annotations

import torch
from torch import nn

from detectors import declaration, module_at
from methods.distill import METHODS
from methods.distill.adapters import FeatureAdapter

ADAPTED = tuple(name for name, m in METHODS.items() if getattr(m, "ADAPTED", False))
TEACHER_FREE = tuple(name for name, m in METHODS.items() if not m.TEACHER)  # controls: label smoothing


def parse_method(method: str) -> list[str]:
    """``"hinton+at"`` -> ``["hinton", "at"]``; raises on an unknown part. A variant after ``@`` (``"at@tuned"``:
    the same method with other settings) names a row, not a method, and is dropped."""
    parts = [p for p in method.split("@")[0].split("+") if p]
    unknown = [p for p in parts if p not in METHODS]
    if unknown or not parts:
        raise ValueError(f"unknown distillation method '{method}' (parts: {', '.join(METHODS)}, joined by '+')")
    return parts


def needs_teacher(method: str) -> bool:
    """Whether a method (``"hinton+ls"``, ``"ls"``) reads a teacher: any part that is not a teacher-free control."""
    return any(p not in TEACHER_FREE for p in parse_method(method))


# ------------------------------------------------------------------ one hook registrar for every family
def _keep(captured: dict, name: str, pick):
    def hook(module, args, output):
        captured[name] = pick(args, output)
    return hook


def _keep_taps(captured: dict, taps: dict[str, dict]):
    """Store each declared tap of this module: the key of its name in the output dict, or its n-th input."""
    def hook(module, args, output):
        store = captured.setdefault("taps", {})
        for name, tap in taps.items():
            store[name] = args[0][tap["input"]] if "input" in tap else output[name]
    return hook


def register_hooks(model: nn.Module, family: dict, captured: dict) -> list:
    """Forward hooks from a family's declaration (:mod:`detectors`): the network's input (``x``), every tap
    (``taps``), the dense logits and box bins where declared, and the RoI head's sampled proposals and logits where
    the family has one. One training forward pass fills ``captured``."""
    hooks = [module_at(model, family["input"]).register_forward_hook(_keep(captured, "x", lambda a, o: a[0]))]
    by_module: dict[str, dict] = {}
    for name, tap in family["taps"].items():
        by_module.setdefault(tap["module"], {})[name] = tap
    hooks += [module_at(model, path).register_forward_hook(_keep_taps(captured, taps))
              for path, taps in by_module.items()]
    for key in ("dense_logits", "dense_boxes"):
        if key in family:
            pick = family[key]["pick"]
            hooks.append(module_at(model, family[key]["module"]).register_forward_hook(
                _keep(captured, key, lambda a, o, pick=pick: pick(o))))
    if "roi" in family:
        roi = family["roi"]
        hooks += [module_at(model, roi["pool"]).register_forward_hook(_keep(captured, "proposals", lambda a, o: (a[1], a[2]))),
                  module_at(model, roi["predictor"]).register_forward_hook(_keep(captured, "roi_logits", lambda a, o: o[0]))]
    return hooks


class TeacherCache:
    """The teacher's taps (and dense logits) per (image index, flip code), computed once, bounded in memory."""

    def __init__(self, teacher: nn.Module, budget_mb: float = 4096):
        # channels-last for the frozen teacher's feature pass (docs/decisions.md, "channels-last")
        self.teacher = teacher.eval().to(memory_format=torch.channels_last)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.family = declaration(teacher)
        self.budget_bytes = budget_mb * 2**20
        self.used_bytes = 0
        self.store: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def compute(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.family["teacher"](self.teacher, x.contiguous(memory_format=torch.channels_last))

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
    r · mean(detector loss) / mean(raw term), so that term / detector loss = r at the start. The two losses fall at
    different rates, so the ratio drifts (docs/decisions.md, "balanced weights"); with
    ``rebalance: K`` (steps, or ``epoch``: ``steps_per_epoch``) the weight is measured again over every K steps after
    the window, from that block's means, and used for the next block. ``warmup_epochs`` (any method; needs
    ``steps_per_epoch``) ramps the weight linearly from 0 over the first epochs after that.
    :meth:`resolved_weights` gives the weights used (a re-balanced method's as the list of its blocks' weights).
    """

    def __init__(self, student: nn.Module, teacher_cache: TeacherCache | None, methods: dict[str, dict],
                 steps_per_epoch: int | None = None):
        super().__init__()
        self.student = student
        self.teacher_cache = teacher_cache
        self.methods = methods
        self.family = declaration(student)
        name = self.family["name"]
        if teacher_cache is None and any(m not in TEACHER_FREE for m in methods):
            raise ValueError(f"{', '.join(m for m in methods if m not in TEACHER_FREE)} needs a teacher")
        if teacher_cache is not None and name != teacher_cache.family["name"]:
            raise ValueError(f"a {name} student needs a {name} teacher, not {teacher_cache.family['name']}")
        for method in methods:
            if hasattr(METHODS[method], "check"):
                METHODS[method].check(self.family)
        self.batch_scaled = getattr(student, "losses_summed_over_batch", False)
        self._captured: dict = {}
        self._teacher_kernels: dict = {}  # NST's K(t, t) per (tap, image, flip)
        self._hooks = register_hooks(student, self.family, self._captured)
        self.adapters = nn.ModuleDict()
        s_ch = self.family["tap_channels"](student)
        t_ch = self.family["tap_channels"](teacher_cache.teacher) if teacher_cache is not None else {}
        for method in ADAPTED:
            for tap in methods.get(method, {}).get("taps", []):
                if tap not in s_ch:
                    raise ValueError(f"{name} has no feature tap '{tap}' (taps: {', '.join(s_ch)})")
                self.adapters[self._adapter_key(method, tap)] = FeatureAdapter(s_ch[tap], t_ch[tap])
        self.steps_per_epoch = steps_per_epoch
        self.weights = {name: (0.0 if "balance" in hp else float(hp.get("weight", 1.0))) for name, hp in methods.items()}
        self._measured = {name: [0.0, 0.0, 0] for name, hp in methods.items() if "balance" in hp}  # term, det, steps
        self._every = {name: self._rebalance_steps(name, hp, steps_per_epoch) for name, hp in methods.items()
                       if "rebalance" in hp}
        self._history = {name: [] for name in self._every}  # the weight of every block
        self._step = 0
        self.last_raw: dict[str, dict[str, torch.Tensor]] = {}
        # balanced terms are clipped apart from the detector's own loss (study.train.backward_clipped_apart)
        self.clip_apart = bool(self._measured)

    @staticmethod
    def _rebalance_steps(name: str, hp: dict, steps_per_epoch: int | None) -> int:
        if "balance" not in hp:
            raise ValueError(f"{name}: rebalance needs balance (the ratio to hold)")
        every = steps_per_epoch if hp["rebalance"] == "epoch" else hp["rebalance"]
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"{name}: rebalance must be a number of steps >= 1 or 'epoch' (with steps_per_epoch), "
                             f"not {hp['rebalance']!r}")
        return every

    @staticmethod
    def _adapter_key(name: str, tap: str) -> str:
        return tap if name == "fitnets" else f"{name}_{tap}"

    def resolved_weights(self) -> dict[str, float]:
        """Each method's weight as used after its measurement window (the raw weight when not balanced; a list of the
        blocks' weights when re-balanced)."""
        return self.weights | {name: list(history) for name, history in self._history.items()}

    def adapter_params(self) -> int:
        return sum(p.numel() for p in self.adapters.parameters())

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()

    def _raw_terms(self, name: str, hp: dict, teacher: dict, targets: list[dict], keys,
                   losses: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """A method's unweighted terms, one per tap (``kd_<method>_<tap>``) or one for the method; ``losses`` are
        the student's own (label smoothing reads its classifier's cross-entropy there)."""
        method = METHODS[name]
        if hasattr(method, "terms"):
            return method.terms(self, hp, teacher, targets, keys, losses or {})
        student_taps = self._captured["taps"]
        terms = {}
        for tap in hp["taps"]:
            if tap not in student_taps:
                raise ValueError(f"{self.family['name']} has no feature tap '{tap}' "
                                 f"(taps: {', '.join(student_taps)})")
            s, t = student_taps[tap].contiguous().float(), teacher[tap].float()
            if name in ADAPTED:
                s = self.adapters[self._adapter_key(name, tap)](s, t.shape[-2:])
            terms[f"kd_{name}_{tap}"] = method.tap_term(self, hp, tap, s, t, targets, keys)
        return terms

    def _weight(self, name: str, hp: dict, raw: dict[str, torch.Tensor], detector_loss: torch.Tensor) -> float:
        """The method's weight at this step (0 in a balanced method's measurement window)."""
        if not self.training:
            return self.weights[name]
        weight = self.weights[name]
        if name in self._measured:
            window = hp.get("balance_steps", 20)
            in_window = self._measured[name][2] < window
            if in_window or name in self._every:
                self._measure(name, hp["balance"], raw, detector_loss, window)
            if in_window:
                return 0.0
        warmup = hp.get("warmup_epochs", 0)
        if warmup and self.steps_per_epoch:
            start = hp.get("balance_steps", 20) if name in self._measured else 0
            weight *= min(1.0, (self._step - start + 1) / (warmup * self.steps_per_epoch))
        return weight

    def _measure(self, name: str, ratio: float, raw: dict[str, torch.Tensor], detector_loss: torch.Tensor,
                 window: int) -> None:
        """Add this step to the current block's sums; at the end of the window, and of every re-balancing block
        after it, set the weight that makes the block's mean term ``ratio`` x its mean detector loss."""
        measured = self._measured[name]
        measured[0] += float(sum(v.detach() for v in raw.values()))
        measured[1] += float(detector_loss.detach())
        measured[2] += 1
        after = measured[2] - window
        if after == 0 or (name in self._every and after > 0 and after % self._every[name] == 0):
            self.weights[name] = ratio * measured[1] / max(measured[0], 1e-12)
            if name in self._every:
                self._history[name].append(self.weights[name])
            measured[:2] = [0.0, 0.0]

    def forward(self, images: list[torch.Tensor], targets: list[dict], keys: list[tuple[int, int]] | None = None):
        """The student's own losses plus one weighted ``kd_<method>[_<tap>]`` term per method and tap."""
        self._captured.clear()
        losses = self.student(images, targets)
        detector_loss = sum(losses.values())
        teacher = self.teacher_cache.features(self._captured["x"], keys) if self.teacher_cache is not None else {}
        scale = len(images) if self.batch_scaled else 1
        self.last_raw = {}  # each method's unweighted terms (times the batch scale), detached: no host sync
        for name, hp in self.methods.items():
            # the terms in fp32 even when the detector trains under bf16 autocast (fp32 inputs, autocast off)
            with torch.autocast(self._captured["x"].device.type, enabled=False):
                terms = self._raw_terms(name, hp, teacher, targets, keys, losses)
            raw = {k: scale * v for k, v in terms.items()}
            self.last_raw[name] = {k: v.detach() for k, v in raw.items()}
            weight = self._weight(name, hp, raw, detector_loss)
            losses |= {k: weight * v for k, v in raw.items()}
        if self.training:
            self._step += 1
        return losses
