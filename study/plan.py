"""Run planning: what a profile asks for, as run specs with public, stable run ids.

A run is identified by a hash of everything that determines it (its hparams), so running a profile again skips
what already finished and a changed hyperparameter makes a new run. Per detector: the teachers (one per teacher
seed), every (method, seed) student (a distilled seed reads the teacher :func:`teacher_of` pairs it with;
``baseline-long`` is the compute control), then the compression runs of the first teacher.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from methods.distill.distiller import parse_method
from study.defaults import _merge


DETECTORS = ("faster_rcnn", "fcos", "yolo")
TUNED_SUFFIX = "@tuned"  # "hinton@tuned": Hinton with its searched settings, beside "hinton" at default weights
SHAPE_KEYS = {"faster_rcnn": "frcnn", "fcos": "fcos", "yolo": "yolo"}  # the hparams key of a detector's shape


@dataclass
class RunSpec:
    run_id: str
    role: str  # "teacher", "student" or "compressed"
    backbone: str  # the backbone (Faster R-CNN, FCOS) or the model (YOLO) of the role
    method: str  # teacher, baseline, or distillation methods joined by '+'
    seed: int
    hparams: dict
    detector: str = "faster_rcnn"

    def reads(self) -> list[str]:
        """The runs whose files this run reads (its teacher, the model it compresses)."""
        return [r for r in (self.hparams.get("teacher_run"), self.hparams.get("source_run")) if r]


def make_run_id(detector: str, backbone: str, method: str, seed: int, hparams: dict) -> str:
    digest = hashlib.sha1(json.dumps(hparams, sort_keys=True).encode()).hexdigest()[:8]
    return f"{detector}-{backbone}-{method.replace('+', '_')}-s{seed}-{digest}"


def detector_config(profile: dict, detector: str) -> dict:
    """One detector's teacher, student, train, distill, methods, compress and shape settings: its section
    (``faster_rcnn``, ``yolo``, ``fcos``) gives its roles, shape and compression rows and overrides the top-level
    ``train``/``distill``/``methods``."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector '{detector}' (known: {', '.join(DETECTORS)})")
    section = profile[detector]
    return {"teacher": section["teacher"], "student": section["student"],
            "train": _merge(profile["train"], section.get("train", {})),
            "distill": _merge(profile["distill"], section.get("distill", {})),
            "methods": section.get("methods", profile["methods"]), "compress": section.get("compress", []),
            "compression": profile["compression"], "shape_key": SHAPE_KEYS[detector], "shape": section["shape"]}


def _role_name(role: dict) -> str:
    return role.get("backbone") or role["model"]


def run_train(train: dict) -> dict:
    """A run's training settings as kept in its hparams: ``bf16_on_cpu`` only where true (the key is newer than
    most committed runs, all fp32, whose run ids stay as they were)."""
    return {k: v for k, v in train.items() if k != "bf16_on_cpu" or v}


def teacher_of(profile: dict, seed: int) -> int:
    """The teacher seed a student seed is paired with: teacher seeds alternate over the student seeds in order, so
    every distilled row's (teacher, seed) cells span the teachers and its paired differences carry their variance."""
    return profile["teacher_seeds"][profile["seeds"].index(seed) % len(profile["teacher_seeds"])]


def plan_detector(profile: dict, detector: str, dataset_name: str, tuned: dict[str, dict] | None = None
                  ) -> list[RunSpec]:
    """One detector's teacher runs (one per teacher seed that a run reads; the first always), then each
    (method, seed) student run, then its compression runs (of the first teacher). A distilled student of seed s
    reads the teacher :func:`teacher_of` gives; ``baseline-long`` is the student alone for
    ``long_factor`` times the epochs, rounded (the compute control).
    ``tuned`` maps a method to ``{"distill": {...}, "source": {...}}`` from a search; those runs use the tuned
    values."""
    cfg = detector_config(profile, detector)
    common = {"dataset": dataset_name, "image_size": profile["image_size"], "train": run_train(cfg["train"]),
              cfg["shape_key"]: cfg["shape"], "max_train_images": profile["max_train_images"]}
    t = cfg["teacher"]
    teacher_hp = common | {"role": t}
    teachers = {seed: RunSpec(make_run_id(detector, _role_name(t), "teacher", seed, teacher_hp), "teacher",
                              _role_name(t), "teacher", seed, teacher_hp, detector)
                for seed in profile["teacher_seeds"]}
    runs = list(teachers.values())
    s = cfg["student"]
    shared = (tuned or {}).get("baseline")  # searched shared settings: every student row trains with them
    if shared:
        common = common | {"train": run_train(cfg["train"] | shared["train"]), "tuned_shared": shared["source"]}
        s = s | {"epochs": shared["epochs"]}
    for method in cfg["methods"]:
        for seed in profile["seeds"]:
            hp = common | {"role": s}
            if method == "baseline-long":
                hp["role"] = s | {"epochs": round(s["epochs"] * profile["long_factor"])}
            elif method != "baseline":
                hp["distill"] = {m: cfg["distill"][m] for m in parse_method(method)}
                hp["teacher_run"] = teachers[teacher_of(profile, seed)].run_id
                if tuned and method in tuned:
                    hp["distill"], hp["tuned"] = tuned[method]["distill"], tuned[method]["source"]
                elif method.endswith(TUNED_SUFFIX):
                    raise ValueError(f"method '{method}' has no finished search to take its settings from")
            runs.append(RunSpec(make_run_id(detector, _role_name(s), method, seed, hp), "student", _role_name(s), method,
                                seed, hp, detector))
    first_teacher = teachers[profile["teacher_seeds"][0]]
    for method in cfg["compress"]:
        if method not in cfg["compression"]:
            raise ValueError(f"unknown compression method '{method}' (known: {', '.join(cfg['compression'])})")
        comp = cfg["compression"][method]
        hp = common | {"role": t, "compress": {k: v for k, v in comp.items() if k != "kd"},
                       "source_run": first_teacher.run_id}
        if "kd" in comp:
            hp["distill"], hp["teacher_run"] = comp["kd"], first_teacher.run_id
        seeds = profile["seeds"] if method.startswith("prune") else [first_teacher.seed]
        for seed in seeds:
            runs.append(RunSpec(make_run_id(detector, _role_name(t), method, seed, hp), "compressed", _role_name(t),
                                method, seed, hp, detector))
    read = {r for spec in runs for r in spec.reads()}  # a teacher no run reads is not trained (the first always is)
    return [spec for spec in runs if spec.role != "teacher" or spec.run_id in read or spec is first_teacher]


def plan_runs(profile: dict, dataset_name: str, tuned: dict[str, dict] | None = None) -> list[RunSpec]:
    """Every detector's plan (:func:`plan_detector`), in the profile's order of ``detectors``."""
    return [spec for detector in profile["detectors"] for spec in plan_detector(profile, detector, dataset_name,
                                                                                  (tuned or {}).get(detector))]
