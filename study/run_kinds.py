"""The kinds of run a study executes, each one function from (study, spec) to the results of its ``runs.csv`` row:

- ``train``: train the spec's model (distilled if its hparams say so), validate, evaluate on test, measure (here);
- ``compress``: prune, int8 or fp16 a finished model (:func:`study.compress.execute_compression`);
- ``rival``: ultralytics' own trainer (:func:`study.rival.execute_rival`).

:data:`KINDS` maps a kind to its function and :func:`kind_of` names a spec's kind; :func:`execute` is what
:meth:`study.runner.Study.execute` calls. ``study`` is a :class:`study.runner.Study` (its workspace's data, image
sets, run folders and teacher cache, its device, progress and ``val_only``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from methods.distill.distiller import Distiller
from study.compress import execute_compression
from study.cost import measure
from study.evaluate import evaluate
from study.plan import RunSpec
from study.rival import execute_rival
from study.store import val_curve
from study.train import seed_everything, train


def train_run(study, spec: RunSpec, run_dir: Path, on_epoch=None, model: torch.nn.Module | None = None,
              epochs: int | None = None, train_cfg: dict | None = None):
    """Train the run's model (or ``model``, e.g. a pruned one, to fine-tune), distilled if its hparams say so;
    returns (model, adapter params, result)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "hparams.json").write_text(json.dumps(spec.hparams, indent=1, sort_keys=True))
    train_set, val_set = study.image_set("train"), study.image_set("val")
    # everything that may draw random numbers or not depending on what this process did before (loading
    # the teacher builds a model) comes first; then the run's seed, then everything the run builds
    teacher = study.teacher_cache(spec.hparams["teacher_run"]) if "teacher_run" in spec.hparams else None
    seed_everything(spec.seed)
    model = model if model is not None else study.build(spec)
    distiller = None
    if "distill" in spec.hparams:  # distilled, or a teacher-free control (label smoothing)
        steps = math.ceil(len(train_set) / (train_cfg or spec.hparams["train"])["batch_size"])
        distiller = Distiller(model, teacher, spec.hparams["distill"], steps_per_epoch=steps)
        wrapped, loss_fn = distiller, distiller
    else:
        wrapped, loss_fn = model, (lambda images, targets, keys: model(images, targets))
    try:
        result = train(wrapped, loss_fn, model, train_set, val_set, study.data().class_names,
                       train_cfg or spec.hparams["train"], epochs or spec.hparams["role"]["epochs"], spec.seed,
                       run_dir, study.device, study.progress, on_epoch)
    finally:
        if distiller is not None:
            distiller.remove_hooks()
    if distiller is not None:
        result["resolved_weights"] = distiller.resolved_weights()
    return model, (distiller.adapter_params() if distiller else 0), result


def execute_training(study, spec: RunSpec) -> dict:
    """A trained run: train (:meth:`study.runner.Study.train_run`), then (unless ``val_only``) evaluate on test,
    keeping the detections, and measure its costs (latency is left to the deferred pass)."""
    model, adapter_params, result = study.train_run(spec, study.out_dir / "runs" / spec.run_id)
    study.keep_spec(spec)
    validated = {"adapter_params": adapter_params, "val_map": result["best_val_map"],
                 "best_epoch": result["best_epoch"], "val_curve": val_curve(result["history"]),
                 "train_s": result["train_s"]}
    if study.val_only:
        return validated
    test_set = study.image_set("test")
    metrics = evaluate(model, test_set, study.data().class_names, study.device, save_to=study.detections_file(spec))
    costs = measure(model, test_set.images[0].float().div(255), study.out_dir / "runs" / spec.run_id / "best.pt")
    out = costs | metrics | validated
    if "resolved_weights" in result:  # the weights it trained with (a balanced term's is measured)
        out["hparams"] = json.dumps(spec.hparams | {"resolved_weights": result["resolved_weights"]},
                                    sort_keys=True)
    return out


KINDS = {"train": execute_training, "compress": execute_compression, "rival": execute_rival}


def kind_of(spec: RunSpec) -> str:
    """``compress`` for a spec with compression settings, ``rival`` for one trained by ultralytics' trainer, else
    ``train``."""
    if "compress" in spec.hparams:
        return "compress"
    if spec.hparams.get("trainer") == "ultralytics":
        return "rival"
    return "train"


def execute(study, spec: RunSpec) -> dict:
    """Execute ``spec`` by its kind; the results of its ``runs.csv`` row."""
    return KINDS[kind_of(spec)](study, spec)
