"""The one place for defaults. A profile (``study/profiles/*.yaml``) overrides any key; nothing else sets defaults."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from methods.distill import METHODS as DISTILL_METHODS
from methods.distill.distiller import parse_method
from study.errors import MissingInput, StudyError

PROFILE_DIR = Path(__file__).parent / "profiles"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# a family's size grid and compression rows beyond its first teacher (study.plan): ``sizes`` lists more student
# sizes ({student: keys it changes, methods, seeds}); ``compress_students`` ({methods, source}) compresses the
# ``source`` row's first-seed run at every size; ``compress_seeds`` are the seeds of pruning runs (None: ``seeds``)
GRID = {"sizes": [], "compress_students": None, "compress_seeds": None}

DEFAULTS: dict = {
    "data": "voc:data/bccd",
    "image_size": 256,  # longer side of every image, in pixels
    # detector families in a study; each has its own section below (``faster_rcnn``, ``yolo``, ``fcos``: teacher,
    # student, shape, compress), whose ``train``, ``distill`` and ``methods`` override the top-level ones
    "detectors": ["faster_rcnn"],  # YOLO has its own profile (study/profiles/yolo.yaml says why)
    "seeds": [0, 1, 2, 3, 4],  # student rows
    # teachers, one per seed; a distilled student of the i-th seed reads teacher_seeds[i % len(teacher_seeds)]
    "teacher_seeds": [0, 1],
    # self-distillation (``METHOD@self``): its teachers are students of the same size trained alone with these seeds
    # (disjoint from ``seeds``), paired with the student seeds as ``teacher_seeds`` are
    "self_teacher_seeds": [100, 101],
    "split_seed": 0,  # carves a missing val/test split from train (the dataset's split, not a run's)
    # ``baseline-long``: the student alone for this many times its epochs (rounded), the compute control; it should
    # take at least the wall time of the slowest distilled row (docs/decisions.md, "compute control")
    "long_factor": 2,
    "max_train_images": None,  # None: the whole train split
    "max_eval_images": None,  # None: the whole val / test split
    # Faster R-CNN (torchvision) over a ResNet-50 teacher and a shallow student; ``shape`` is its RPN and heads
    "faster_rcnn": {
        # teacher and student epochs: docs/decisions.md ("teacher epochs", "student epochs")
        "teacher": {"backbone": "resnet50", "fpn_channels": 128, "roi_dim": 512, "epochs": 40},
        "student": {"backbone": "shallow", "fpn_channels": 64, "roi_dim": 128, "epochs": 64},
        "shape": {"anchor_sizes": [16, 32, 64, 128], "rpn_pre_nms_train": 1000, "rpn_post_nms_train": 500,
                  "rpn_pre_nms_test": 500, "rpn_post_nms_test": 200, "rpn_batch_per_image": 256,
                  "box_batch_per_image": 128},
        "compression": {"int8-qat+kd": {"kd": {"hinton": {"weight": 1.0, "temperature": 4.0},
                                                "pkd": copy.deepcopy(DISTILL_METHODS["pkd"].DEFAULTS)}}},
        "compress": [], **GRID},
    # ultralytics YOLO from its own YAMLs (no weights): a YOLOv8s teacher and a YOLOv8n-depth student at 1/16 width
    # (yolov8p; sizes: docs/decisions.md, "YOLO sizes"); ultralytics' recipe (SGD 0.01 / 0.937, wd 5e-4 off norms
    # and biases, bias LR 0.1 and momentum 0.8 at the start of the warm-up, EMA, batch 16, validation every epoch)
    "yolo": {"teacher": {"model": "yolov8s", "epochs": 60}, "student": {"model": "yolov8p", "epochs": 30},
             "shape": {"box": 7.5, "cls": 0.5, "dfl": 1.5, "conf": 0.001, "iou": 0.7, "max_det": 300},
             "train": {"batch_size": 16, "lr": 0.01, "momentum": 0.937, "weight_decay": 5e-4, "nesterov": True,
                       "warmup_iters": 100, "warmup_bias_lr": 0.1, "warmup_momentum": 0.8, "no_decay_norm_bias": True,
                       "ema_decay": 0.9999, "ema_tau": 2000, "val_every": 1},
             "distill": {"fitnets": {"taps": ["p3", "p4", "p5"]}, "at": {"taps": ["p3", "p4", "p5"]},
                         "nst": {"taps": ["p3", "p4", "p5"]}},
             "compression": {"int8-qat+kd": {"kd": {"hinton": {"weight": 1.0, "temperature": 4.0},
                                                     "cwd": copy.deepcopy(DISTILL_METHODS["cwd"].DEFAULTS)}}},
             "compress": [], **GRID},
    # torchvision FCOS over the same backbones and FPN widths as Faster R-CNN (a single-stage head, backbone fixed)
    "fcos": {"teacher": {"backbone": "resnet50", "fpn_channels": 128, "epochs": 20},
             "student": {"backbone": "shallow", "fpn_channels": 64, "epochs": 12},
             "shape": {"head_convs": 4, "score_thresh": 0.05, "detections_per_image": 100},
             "train": {"lr": 0.01}, "distill": {},
             "compression": {"int8-qat+kd": {"kd": {"hinton": {"weight": 1.0, "temperature": 4.0},
                                                     "pkd": copy.deepcopy(DISTILL_METHODS["pkd"].DEFAULTS)}}},
             "compress": [], **GRID},
    # training (torchvision detection references' recipe, scaled to batch 8)
    "train": {"optimizer": "sgd", "batch_size": 8, "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
              "warmup_iters": 50, "clip_grad_norm": 10.0, "hflip": True, "vflip": True, "val_every": 1,
              "channels_last": True,  # memory layout while training (results as NCHW)
              # bf16 autocast on the CPU too (always on a GPU); distillation terms, evaluation and latency stay fp32
              # (docs/decisions.md, "bf16 on the CPU"); a profile with ``bf16_on_cpu: false`` trains fp32
              "bf16_on_cpu": True},
    # methods run for the student, and their hyperparameters (weights as in the literature's reference code);
    # ``baseline-long`` is the student alone for ``long_factor`` x its epochs (the ``default`` profile runs
    # ``baseline`` and ``hinton`` only, seeds 0-2: docs/decisions.md, "The default's rows")
    "methods": ["baseline", "baseline-long", "hinton"],
    # each distillation method's hyperparameters: its module's DEFAULTS (methods/distill/<method>.py, the
    # literature's weights). ``balance: r`` (pkd, cwd, fgfi, ld): the weight is measured over the first
    # ``balance_steps`` (20) steps so that the method's terms are r x the detector's own loss
    # (methods.distill.distiller.Distiller), and its gradient is clipped apart from the detector's
    # (study.train.backward_clipped_apart); ``rebalance: K`` (steps, or ``epoch``) measures it again every K steps
    "distill": {name: copy.deepcopy(method.DEFAULTS) for name, method in DISTILL_METHODS.items()},
    # compression baselines applied to a family's trained teacher (each family's ``compress`` lists them; rows next
    # to the distilled students); their settings:
    "compression": {
        "prune": {"criterion": "l1", "flops_reduction": 0.5, "global": False, "finetune_epochs": 4,
                  "finetune_lr": 0.005},
        "prune+kd": {"criterion": "l1", "flops_reduction": 0.5, "global": False, "finetune_epochs": 4,
                     "finetune_lr": 0.005, "kd": {"hinton": {"weight": 1.0, "temperature": 4.0}}},
        # iterative: prune a quarter of the FLOPs, fine-tune 2 epochs, prune the next quarter, fine-tune 2 epochs
        "prune-iterative": {"criterion": "l1", "flops_reduction": 0.5, "global": False, "finetune_epochs": 4,
                            "finetune_lr": 0.005, "iterative_steps": 2},
        # the frontier's pruning grid (results/frontier/PLAN.md): 30%, 50% and 70% fewer FLOPs of the whole
        # detector, fine-tuned 8 epochs, plainly and with Hinton KD from the unpruned teacher
        **{f"prune-{r}{kd}": {"criterion": "l1", "flops_reduction": r / 100, "global": False, "finetune_epochs": 8,
                              "finetune_lr": 0.005, **({"kd": {"hinton": {"weight": 1.0, "temperature": 4.0}}}
                                                       if kd else {})}
           for r in (30, 50, 70) for kd in ("", "+kd")},
        # int8 (torchao PT2E, X86InductorQuantizer: per-channel weights, histogram-observed activations): post-training
        # calibration on the first ``calibration_images`` training images; ``int8-qat``: quantization-aware
        # fine-tuning of the fake-quantized detector (BatchNorm statistics frozen: docs/decisions.md), the same
        # epochs and LR for both families; ``int8-qat+kd``:
        # the same, distilled from the float model it starts from (``kd_teacher: source``) by the family's ``kd``
        # (its section's ``compression``: Hinton plus the family's detection feature term).
        # ``heads``: the family's int8 heads too (Faster R-CNN's RoI box head); ``residual_inputs``: the
        # convolutions that feed residual adds end quantized (what ONNX Runtime's int8 kernels need;
        # docs/decisions.md, "int8 scope"); ``sigmoid_outputs``: SiLU decomposed and its sigmoid quantized
        # (YOLO in ONNX Runtime; recommended by a pilot, off so that the committed int8 rows keep their ids:
        # docs/quantization-notes.md)
        "int8": {"calibration_images": 32, "reduce_range": False, "heads": True, "residual_inputs": True,
                 "sigmoid_outputs": False},
        "int8-qat": {"calibration_images": 32, "reduce_range": False, "finetune_epochs": 4, "finetune_lr": 0.001,
                     "freeze_bn_stats": True, "heads": True, "residual_inputs": True, "sigmoid_outputs": False},
        "int8-qat+kd": {"calibration_images": 32, "reduce_range": False, "finetune_epochs": 4, "finetune_lr": 0.001,
                        "freeze_bn_stats": True, "kd_teacher": "source", "heads": True, "residual_inputs": True,
                        "sigmoid_outputs": False},
        "fp16": {},
    },
    # the report: ``frontier`` adds FRONTIER.md (study.frontier_report: best model at each budget, differences with
    # t and two-level bootstrap intervals over runs and test images, transfer or regularisation, dose-response)
    "report": {"frontier": False, "bootstrap": 1000, "bootstrap_seed": 0},
    "teacher_cache_mb": 4096,
    # the tuned comparison (study/tuned.py): every method's search gets ``budget_epochs`` training epochs on the
    # validation split with student seed ``search_seed`` (never a final seed) and the same pruner, which judges no
    # trial before epoch ``min_epochs`` (also the ``search`` command's)
    "tuning": {"budget_epochs": 72, "search_seed": 100, "pruner": "hyperband", "min_epochs": 6},
    # Optuna search: RDB heartbeat (a killed worker's trial is failed and retried after grace_s)
    "search": {"heartbeat_s": 10, "grace_s": 30},
    # how runs are executed: ``workers`` runs at once in their own processes (``auto``: one per
    # ``threads_per_worker`` CPU cores, bounded by memory; one per GPU), each with ``threads_per_worker`` torch
    # threads; small models train faster as two 1-thread runs than as one 2-thread run (study/parallel.py).
    # ``executor``: ``local`` (processes on this machine) or ``ray`` (actors on the Ray cluster at ``address``, None:
    # a local Ray instance; study/cluster.py)
    "execution": {"workers": "auto", "threads_per_worker": 1, "executor": "local", "address": None},
    # cost measurement (latency: batch 1, ``threads`` CPU threads, all models of a study timed together after
    # training in ``rounds`` interleaved rounds of ``images`` test images each, in a random order from ``seed``;
    # docs/decisions.md, "latency rounds")
    # ``runtime``: ``pytorch`` (eager) or ``onnxruntime`` (every model exported, timed in ONNX Runtime beside its eager
    # form, and the export's test mAP recorded: study.latency_pass)
    "cost": {"threads": 2, "warmup": 2, "rounds": 20, "images": 4, "seed": 0, "runtime": "pytorch"},
}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# sections whose keys are names or settings of their own (a method's, a role's, a family's head), not fixed here
OPEN_SECTIONS = {"distill", "compression", "teacher", "student", "shape", "rival"}
FAMILIES = ("faster_rcnn", "yolo", "fcos")
# where the keys of the old layout went (Faster R-CNN's settings were top-level keys)
MOVED = {"teacher": "faster_rcnn.teacher", "student": "faster_rcnn.student", "frcnn": "faster_rcnn.shape",
         "compress": "faster_rcnn.compress (or yolo.compress, fcos.compress)"}


def unknown_keys(override: dict, known: dict, prefix: str = "") -> list[str]:
    """Dotted paths of ``override``'s keys that ``known`` (the defaults' tree) does not have, at any depth; the
    insides of :data:`OPEN_SECTIONS` are not checked. A family section (``faster_rcnn``, ``yolo``, ``fcos``) may
    also hold the top-level ``train``, ``distill`` and ``methods`` keys it overrides."""
    out = []
    for key, value in override.items():
        path = f"{prefix}{key}"
        if key not in known:
            family_override = prefix in [f + "." for f in FAMILIES] and key in ("train", "distill", "methods", "rival")
            if not family_override:
                out.append(path)
                continue
            known_value = DEFAULTS.get(key, {})
        else:
            known_value = known[key]
            if prefix in [f + "." for f in FAMILIES] and key in ("train", "distill"):  # the top level's keys too
                known_value = _merge(DEFAULTS[key], known_value)
        if isinstance(value, dict) and isinstance(known_value, dict) and key not in OPEN_SECTIONS:
            out += unknown_keys(value, known_value, path + ".")
    return out


def load_profile(name_or_path: str) -> dict:
    """DEFAULTS overridden by the profile ``name`` (a file in study/profiles) or a YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise MissingInput(f"{path}: no such profile (known: {known})")
    try:
        override = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1}" if mark else ""
        raise StudyError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from exc
    if not isinstance(override, dict):
        raise StudyError(f"{path}: a profile is a mapping of keys to values, not {type(override).__name__}")
    moved = [k for k in override if k in MOVED]
    if moved:
        raise StudyError(f"{path}: top-level key {moved[0]!r} has moved to {MOVED[moved[0]]} (each detector family "
                         "has its own section)")
    unknown = unknown_keys(override, DEFAULTS | {"name": "", "description": ""})
    if unknown:
        raise StudyError(f"{path}: unknown key {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)"
                                                                   if len(unknown) > 1 else ""))
    profile = _merge(DEFAULTS, override)
    profile["name"] = override.get("name", path.stem)
    bad = bad_values(profile)
    if bad:
        raise StudyError(f"{path}: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return profile


RUNTIMES = ("pytorch", "onnxruntime")  # where the latency pass times the models (study.latency_pass)


def _positive_int(value) -> bool:
    return _whole(value) and value > 0


def _bad_methods(key: str, methods) -> list[str]:
    """A student method list's entries that no run could train: ``baseline``, ``baseline-long`` or distillation
    parts joined by ``+`` (with an optional ``@variant``)."""
    if not isinstance(methods, list):
        return [f"{key} must be a list of methods, not {methods!r}"]
    out = []
    for method in methods:
        if method in ("baseline", "baseline-long"):
            continue
        try:
            parse_method(str(method))
        except ValueError as exc:
            out.append(f"{key}: {exc}")
    return out


def _bad_model(family: str, role: str, settings: dict) -> list[str]:
    """A role's backbone (Faster R-CNN, FCOS) or model (YOLO) that the family cannot build."""
    from detectors.backbones import BODIES
    from detectors.yolo import YOLO_MODELS

    known = YOLO_MODELS if family == "yolo" else BODIES
    name = settings.get("model" if family == "yolo" else "backbone")
    if name is not None and name not in known:
        return [f"{family}.{role}.{'model' if family == 'yolo' else 'backbone'}: unknown {name!r} (known: "
                f"{', '.join(known)})"]
    return []


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# a distillation setting's allowed values, by its name in the methods' DEFAULTS (taps are checked by the family
# when a run builds its distiller: a tap name depends on the detector)
DISTILL_SETTING_CHECKS = {
    "weight": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "temperature": (lambda v: _number(v) and v > 0, "a positive number"),
    "tau": (lambda v: _number(v) and v > 0, "a positive number"),
    "p": (lambda v: _number(v) and v > 0, "a positive number"),
    "balance": (lambda v: _number(v) and 0 <= v <= 1, "a fraction between 0 and 1"),
    "psi": (lambda v: _number(v) and 0 < v < 1, "a fraction between 0 and 1"),
    "taps": (lambda v: isinstance(v, list) and v and all(isinstance(t, str) for t in v), "a list of tap names"),
}


def _bad_distill(key: str, section) -> list[str]:
    """A ``distill`` (or a compression's ``kd``) section's methods and settings that no run could use: an unknown
    method, a setting its method does not have, a value out of range (weight < 0, temperature <= 0, ...)."""
    if not isinstance(section, dict):
        return [f"{key} must be a mapping of methods to settings, not {section!r}"]
    out = []
    for name, settings in section.items():
        method = DISTILL_METHODS.get(str(name).split("@")[0])
        if method is None:
            out.append(f"{key}: unknown method {name!r} (known: {', '.join(DISTILL_METHODS)})")
            continue
        if not isinstance(settings, dict):
            out.append(f"{key}.{name} must be a mapping of settings, not {settings!r}")
            continue
        for setting, value in settings.items():
            if setting not in method.DEFAULTS:
                out.append(f"{key}.{name}: unknown setting {setting!r} (known: {', '.join(method.DEFAULTS)})")
            elif setting in DISTILL_SETTING_CHECKS and not DISTILL_SETTING_CHECKS[setting][0](value):
                out.append(f"{key}.{name}.{setting} must be {DISTILL_SETTING_CHECKS[setting][1]}, not {value!r}")
    return out


def _bad_compression(key: str, comp) -> list[str]:
    if not isinstance(comp, dict):
        return [f"{key} must be a mapping of settings, not {comp!r}"]
    out = []
    r = comp.get("flops_reduction")
    if r is not None and not (_number(r) and 0 < r < 1):
        out.append(f"{key}.flops_reduction must be a fraction between 0 and 1, not {r!r}")
    for setting in ("calibration_images", "finetune_epochs", "iterative_steps"):
        if setting in comp and not _positive_int(comp[setting]):
            out.append(f"{key}.{setting} must be a whole number >= 1, not {comp[setting]!r}")
    for flag in ("heads", "residual_inputs", "sigmoid_outputs", "freeze_bn_stats", "reduce_range"):
        if flag in comp and not isinstance(comp[flag], bool):
            out.append(f"{key}.{flag} must be true or false, not {comp[flag]!r}")
    if "finetune_lr" in comp and not (_number(comp["finetune_lr"]) and comp["finetune_lr"] > 0):
        out.append(f"{key}.finetune_lr must be a positive number, not {comp['finetune_lr']!r}")
    if "kd" in comp:
        out += _bad_distill(f"{key}.kd", comp["kd"])
    return out


def bad_values(profile: dict) -> list[str]:
    """What a profile sets that no run could use, each as ``key must be ..., not value`` (checked before anything
    trains): image size, image limits, epochs, seeds (whole, distinct, at least one), methods, role settings,
    backbones and models, distillation settings, compression settings, the latency runtime and rounds, workers."""
    out = []

    def need(ok: bool, key: str, what: str, value) -> None:
        if not ok:
            out.append(f"{key} must be {what}, not {value!r}")

    need(_positive_int(profile["image_size"]) and profile["image_size"] >= 32, "image_size",
         "a whole number of pixels >= 32", profile["image_size"])
    for key in ("seeds", "teacher_seeds", "self_teacher_seeds"):
        value = profile[key]
        need(isinstance(value, list) and all(_whole(v) for v in value)
             and value, key, "a list of whole numbers (at least one)", value)
        if isinstance(value, list):
            twice = sorted({v for v in value if value.count(v) > 1}, key=str)
            need(not twice, key, f"a list of distinct seeds ({twice[0] if twice else ''} is there twice)", value)
    for key in ("max_train_images", "max_eval_images"):
        need(profile[key] is None or _positive_int(profile[key]), key, "a whole number >= 1 or null (the whole split)",
             profile[key])
    need(isinstance(profile["long_factor"], (int, float)) and profile["long_factor"] > 0, "long_factor",
         "a positive number", profile["long_factor"])
    out += _bad_methods("methods", profile["methods"])
    for family in profile["detectors"]:
        if family not in FAMILIES:
            out.append(f"detectors: unknown detector {family!r} (known: {', '.join(FAMILIES)})")
            continue
        section = profile[family]
        if "methods" in section:
            out += _bad_methods(f"{family}.methods", section["methods"])
        roles = [("teacher", section["teacher"]), ("student", section["student"])]
        role_keys = set(DEFAULTS[family]["teacher"]) | set(DEFAULTS[family]["student"])
        for n, size in enumerate(section.get("sizes") or [], 1):
            roles.append((f"sizes[{n}].student", {"epochs": section["student"]["epochs"]} | size.get("student", {})))
            if "methods" in size:
                out += _bad_methods(f"{family}.sizes[{n}].methods", size["methods"])
        for role, settings in roles:
            out += [f"{family}.{role}: unknown setting {k!r} (known: {', '.join(sorted(role_keys))})"
                    for k in settings if k not in role_keys]
            need(_positive_int(settings.get("epochs")), f"{family}.{role}.epochs", "a whole number >= 1",
                 settings.get("epochs"))
            out += _bad_model(family, role, settings)
        if "distill" in section:
            out += _bad_distill(f"{family}.distill", section["distill"])
        for name, comp in (section.get("compression") or {}).items():
            out += _bad_compression(f"{family}.compression.{name}", comp)
    for name, comp in profile["compression"].items():
        out += _bad_compression(f"compression.{name}", comp)
    out += _bad_distill("distill", profile["distill"])
    workers = profile["execution"]["workers"]
    need(workers == "auto" or _positive_int(workers), "execution.workers", "'auto' or a whole number >= 1", workers)
    need(_positive_int(profile["execution"]["threads_per_worker"]), "execution.threads_per_worker",
         "a whole number >= 1", profile["execution"]["threads_per_worker"])
    runtime = profile["cost"].get("runtime")
    need(runtime in RUNTIMES, "cost.runtime", " or ".join(RUNTIMES), runtime)
    for key in ("rounds", "images"):
        value = profile["cost"][key]
        least = 2 if key == "rounds" else 1
        need(_positive_int(value) and value >= least, f"cost.{key}", f"a whole number >= {least}" + (
            " (a latency's spread needs two rounds)" if key == "rounds" else ""), value)
    out += _bad_train("train", profile["train"])
    for family in profile["detectors"]:
        if family in FAMILIES and "train" in profile[family]:
            out += _bad_train(f"{family}.train", profile["train"] | profile[family]["train"])
    for key, ok, what in SETTING_CHECKS:
        section, _, name = key.partition(".")
        value = profile[section][name] if name else profile[section]
        need(ok(value), key, what, value)
    return out


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_fraction = lambda v: _number(v) and 0 <= v < 1  # noqa: E731
# the training settings a value must pass, as (setting, check, what it must be); a setting a family's train lacks
# is not checked there (study.train reads ``cfg.get`` for the optional ones)
TRAIN_CHECKS = (
    ("optimizer", lambda v: v in ("sgd", "adamw"), "sgd or adamw"),
    ("batch_size", _positive_int, "a whole number >= 1"),
    ("lr", lambda v: _number(v) and v > 0, "a positive number"),
    ("momentum", _fraction, "a number in [0, 1)"),
    ("weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("warmup_iters", lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    ("warmup_bias_lr", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("warmup_momentum", _fraction, "a number in [0, 1)"),
    ("val_every", _positive_int, "a whole number >= 1"),
    ("clip_grad_norm", lambda v: v is None or (_number(v) and v >= 0), "a number >= 0 (0 or null: no clipping)"),
    ("ema_decay", _fraction, "a number in [0, 1)"),
    ("ema_tau", lambda v: _number(v) and v > 0, "a positive number"),
    *((flag, lambda v: isinstance(v, bool), "true or false")
      for flag in ("hflip", "vflip", "channels_last", "bf16_on_cpu", "nesterov", "no_decay_norm_bias")),
)
# the other sections' settings, checked the same way ("section.setting", or a top-level "key")
SETTING_CHECKS = (
    ("cost.threads", _positive_int, "a whole number >= 1"),
    ("cost.warmup", lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    ("cost.seed", _whole, "a whole number"),
    ("report.frontier", lambda v: isinstance(v, bool), "true or false"),
    ("report.bootstrap", _positive_int, "a whole number of resamples >= 1"),
    ("report.bootstrap_seed", _whole, "a whole number"),
    ("teacher_cache_mb", lambda v: _number(v) and v >= 0, "a number of MB >= 0"),
    ("tuning.budget_epochs", _positive_int, "a whole number >= 1"),
    ("tuning.min_epochs", lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    ("tuning.search_seed", _whole, "a whole number"),
    ("tuning.pruner", lambda v: v in ("median", "hyperband"), "median or hyperband"),
    ("search.heartbeat_s", lambda v: _number(v) and v > 0, "a positive number of seconds"),
    ("search.grace_s", lambda v: _number(v) and v >= 0, "a number of seconds >= 0"),
    ("execution.executor", lambda v: v in ("local", "ray"), "local or ray"),
)


def _bad_train(key: str, train: dict) -> list[str]:
    return [f"{key}.{name} must be {what}, not {train[name]!r}" for name, ok, what in TRAIN_CHECKS
            if name in train and not ok(train[name])]
