"""Run planning: what a profile asks for, as run specs with public, stable run ids.

A run is identified by a hash of everything that determines it (its hparams), so running a profile again skips
what already finished and a changed hyperparameter makes a new run. Per detector: the teachers (one per teacher
seed), every (method, seed) student (a distilled seed reads the teacher :func:`teacher_of` pairs it with;
``baseline-long`` is the compute control), then the compression runs of the first teacher (and of students where
a profile says).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from methods.distill.distiller import needs_teacher, parse_method
from study.defaults import _merge
from study.errors import StudyError


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


ID_SCHEME = 1
"""How run ids are made (each row records it in ``id_scheme``): ``{detector}-{backbone}-{method}-s{seed}-{digest}``,
the digest the first 8 hex digits of the SHA-1 of the hparams' JSON (sorted keys), the hparams leaving out a setting
of :data:`LATER_SETTINGS` at its earlier behaviour. A version that makes ids another way bumps it, and a study
refuses a runs.csv whose rows were identified under another scheme (:meth:`study.runner.Study.check_id_scheme`):
planned again under new ids, its rows would be retired as superseded and their runs trained again."""

# settings added after results were committed, with the value that behaves as before they existed: a run's hparams
# leave them out at that value, so adding a setting does not change the ids of the runs made before it
LATER_SETTINGS = {"bf16_on_cpu": False, "sigmoid_outputs": False}


def make_run_id(detector: str, backbone: str, method: str, seed: int, hparams: dict) -> str:
    digest = hashlib.sha1(json.dumps(hparams, sort_keys=True).encode()).hexdigest()[:8]
    return f"{detector}-{backbone}-{method.replace('+', '_')}-s{seed}-{digest}"


def detector_config(profile: dict, detector: str) -> dict:
    """One detector's teacher, student, train, distill, methods, compress and shape settings: its section
    (``faster_rcnn``, ``yolo``, ``fcos``) gives its roles, shape and compression rows and overrides the top-level
    ``train``/``distill``/``methods`` and adds to the top-level ``compression`` settings (a family's own
    distillation terms for ``int8-qat+kd``)."""
    if detector not in DETECTORS:
        raise StudyError(f"unknown detector '{detector}' (known: {', '.join(DETECTORS)})")
    section = profile[detector]
    return {"teacher": section["teacher"], "student": section["student"],
            "train": _merge(profile["train"], section.get("train", {})),
            "distill": _merge(profile["distill"], section.get("distill", {})),
            "methods": section.get("methods", profile["methods"]), "compress": section.get("compress", []),
            "compression": _merge(profile["compression"], section.get("compression", {})), "shape_key": SHAPE_KEYS[detector], "shape": section["shape"]}


def _role_name(role: dict) -> str:
    return role.get("backbone") or role["model"]


def run_train(train: dict) -> dict:
    """A run's training (or compression) settings as kept in its hparams: those of :data:`LATER_SETTINGS` only
    where they differ from their earlier behaviour."""
    return {k: v for k, v in train.items() if k not in LATER_SETTINGS or v != LATER_SETTINGS[k]}


def teacher_of(profile: dict, seed: int, seeds: list[int] | None = None,
               teacher_seeds: list[int] | None = None) -> int:
    """The teacher seed a student seed is paired with: teacher seeds alternate over the student seeds in order, so
    every distilled row's (teacher, seed) cells span the teachers and its paired differences carry their variance.
    ``seeds`` (default: the profile's) are the row's seeds, ``teacher_seeds`` (default: the profile's) its teachers."""
    seeds, teacher_seeds = seeds or profile["seeds"], teacher_seeds or profile["teacher_seeds"]
    return teacher_seeds[seeds.index(seed) % len(teacher_seeds)]


SELF_SUFFIX = "@self"  # "hinton@self": self-distillation from a student of the same size (a disjoint seed)


def student_sizes(profile: dict, detector: str) -> list[dict]:
    """The student sizes of a detector as ``{"student", "methods", "seeds"}``: its ``student`` with the family's
    methods and the profile's seeds first, then each entry of its ``sizes`` list, whose ``student`` keys override
    the first's (a wider or narrower body, its heads) and whose ``methods`` and ``seeds`` default to the first's."""
    cfg = detector_config(profile, detector)
    first = {"student": cfg["student"], "methods": cfg["methods"], "seeds": profile["seeds"]}
    sizes = [first]
    for n, size in enumerate(profile[detector].get("sizes", []), 1):
        unknown = set(size) - {"student", "methods", "seeds"}
        if unknown:
            raise StudyError(f"{detector}.sizes[{n}]: unknown key {sorted(unknown)[0]!r} (student, methods, seeds)")
        sizes.append({"student": cfg["student"] | size.get("student", {}),
                      "methods": size.get("methods", cfg["methods"]), "seeds": size.get("seeds", profile["seeds"])})
    names = [_role_name(s["student"]) for s in sizes]
    if len(set(names)) != len(names):
        raise StudyError(f"{detector}.sizes: two student sizes share the name {names} (each needs its own "
                         "backbone or model)")
    return sizes


def plan_detector(profile: dict, detector: str, dataset_name: str, tuned: dict[str, dict] | None = None
                  ) -> list[RunSpec]:
    """One detector's teacher runs (one per teacher seed that a run reads; the first always), then for each student
    size (:func:`student_sizes`) each (method, seed) student run, then the compression runs (of the first teacher,
    and of the students where ``compress_students`` says). A distilled student of seed s reads the teacher
    :func:`teacher_of` gives; ``baseline-long`` is the student alone for ``long_factor`` times the epochs, rounded
    (the compute control); ``METHOD@self`` distils from a student of its own size trained alone with a seed of
    ``self_teacher_seeds`` (role ``teacher``, method ``self-teacher``); a method with no part that reads a teacher
    (``ls``) has no teacher run. ``tuned`` maps a method to ``{"distill": {...}, "source": {...}}`` from a search;
    those runs use the tuned values."""
    cfg = detector_config(profile, detector)
    common = {"dataset": dataset_name, "image_size": profile["image_size"], "train": run_train(cfg["train"]),
              cfg["shape_key"]: cfg["shape"], "max_train_images": profile["max_train_images"]}
    t = cfg["teacher"]
    teacher_hp = common | {"role": t}
    teachers = {seed: RunSpec(make_run_id(detector, _role_name(t), "teacher", seed, teacher_hp), "teacher",
                              _role_name(t), "teacher", seed, teacher_hp, detector)
                for seed in profile["teacher_seeds"]}
    runs = list(teachers.values())
    shared = (tuned or {}).get("baseline")  # searched shared settings: every student row trains with them
    if shared:
        common = common | {"train": run_train(cfg["train"] | shared["train"]), "tuned_shared": shared["source"]}
    students: dict[tuple[str, str, int], RunSpec] = {}  # (size, method, seed) -> run
    for size in student_sizes(profile, detector):
        s = size["student"] | ({"epochs": shared["epochs"]} if shared else {})
        name = _role_name(s)
        self_teachers = {}
        if any(m.endswith(SELF_SUFFIX) for m in size["methods"]):
            hp = common | {"role": s}
            self_teachers = {seed: RunSpec(make_run_id(detector, name, "self-teacher", seed, hp), "teacher", name,
                                           "self-teacher", seed, hp, detector)
                             for seed in profile["self_teacher_seeds"]}
            runs += self_teachers.values()
        for method in size["methods"]:
            for seed in size["seeds"]:
                hp = common | {"role": s}
                if method == "baseline-long":
                    hp["role"] = s | {"epochs": round(s["epochs"] * profile["long_factor"])}
                elif method != "baseline":
                    hp["distill"] = {m: cfg["distill"][m] for m in parse_method(method)}
                    if method.endswith(SELF_SUFFIX):
                        hp["teacher_run"] = self_teachers[teacher_of(profile, seed, size["seeds"],
                                                                     profile["self_teacher_seeds"])].run_id
                    elif needs_teacher(method):
                        hp["teacher_run"] = teachers[teacher_of(profile, seed, size["seeds"])].run_id
                    if tuned and method in tuned:
                        hp["distill"], hp["tuned"] = tuned[method]["distill"], tuned[method]["source"]
                    elif method.endswith(TUNED_SUFFIX):
                        raise StudyError(f"method '{method}' has no finished search to take its settings from")
                spec = RunSpec(make_run_id(detector, name, method, seed, hp), "student", name, method, seed, hp,
                               detector)
                students[(name, method, seed)] = spec
                runs.append(spec)
    first_teacher = teachers[profile["teacher_seeds"][0]] if teachers else None
    sources = [(first_teacher, t)] if first_teacher and cfg["compress"] else []
    cs = profile[detector].get("compress_students")
    for size in (student_sizes(profile, detector) if cs else []):  # the given row's first seed, at every size
        name, seed = _role_name(size["student"]), size["seeds"][0]
        if (name, cs["source"], seed) in students:
            sources.append((students[(name, cs["source"], seed)], size["student"]))
    for source, role in sources:
        for method in (cfg["compress"] if source is first_teacher else cs["methods"]):
            if method not in cfg["compression"]:
                raise StudyError(f"unknown compression method '{method}' (known: {', '.join(cfg['compression'])})")
            comp = cfg["compression"][method]
            hp = common | {"role": role, "source_run": source.run_id,
                           "compress": run_train({k: v for k, v in comp.items() if k not in ("kd", "kd_teacher")})}
            if "kd" in comp:  # from the first teacher, or (``kd_teacher: source``) the float model compressed
                hp["distill"] = comp["kd"]
                hp["teacher_run"] = source.run_id if comp.get("kd_teacher") == "source" else first_teacher.run_id
            elif method.endswith("+kd"):
                raise StudyError(f"compression '{method}' has no kd settings for {detector}")
            # a compression that trains (pruning, QAT) runs once per compress seed; one that does not, once
            seeds = (profile[detector].get("compress_seeds") or profile["seeds"]) if "finetune_epochs" in comp \
                else [source.seed]
            for seed in seeds:
                runs.append(RunSpec(make_run_id(detector, _role_name(role), method, seed, hp), "compressed",
                                    _role_name(role), method, seed, hp, detector))
    read = {r for spec in runs for r in spec.reads()}  # a teacher no run reads is not trained (the first always is)
    return [spec for spec in runs if spec.role != "teacher" or spec.run_id in read or spec is first_teacher]


def plan_runs(profile: dict, dataset_name: str, tuned: dict[str, dict] | None = None) -> list[RunSpec]:
    """Every detector's plan (:func:`plan_detector`), in the profile's order of ``detectors``."""
    return [spec for detector in profile["detectors"] for spec in plan_detector(profile, detector, dataset_name,
                                                                                  (tuned or {}).get(detector))]
