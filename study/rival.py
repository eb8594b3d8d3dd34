"""The tool a YOLO user would pick instead of this project: ultralytics' own trainer, plainly and with its built-in
distillation (``distill_model=``, ultralytics 8.4), as rows of a study.

Same data and splits (a YOLO-format view of the study's), image size, epochs, seeds and recipe as the parity check
(:data:`study.reference_tools.MATCHED_SETTINGS`); the teacher is the study's own YOLO teacher of the seed's pairing
(:func:`study.runner.teacher_of`), handed to ultralytics as a checkpoint; ``dis`` is ultralytics' default weight
(6.0) unless the profile's ``yolo.rival.dis`` says otherwise. Each trained student is scored by the study's
evaluator and written to the study's ``runs.csv`` under backbone ``<model>@ultralytics`` with method ``baseline``
(its plain trainer) or ``distill_model`` (its distillation), so the report pairs each with its own trainer's
baseline: both trainers' gains over their own baselines side by side. Its weights and spec are kept like any run's,
so the latency pass times it with the rest.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from study.cost import measure
from study.evaluate import evaluate
from study.reference_tools import MATCHED_SETTINGS, ultralytics_train, write_ultralytics_checkpoint
from study.plan import RunSpec, detector_config, make_run_id, plan_detector, teacher_of
from study.runner import Study
from study.store import read_runs, upsert_run

ULTRALYTICS_DIS = 6.0  # ultralytics' default distillation weight (cfg/default.yaml: dis)


def rival_specs(profile: dict, dataset_name: str) -> list[RunSpec]:
    """The rival's runs: per seed, ultralytics' plain trainer and its ``distill_model=`` trainer."""
    cfg = detector_config(profile, "yolo")
    teachers = {s.seed: s for s in plan_detector(profile, "yolo", dataset_name) if s.role == "teacher"}
    student = cfg["student"]
    backbone = f"{student['model']}@ultralytics"
    common = {"dataset": dataset_name, "image_size": profile["image_size"], "role": student,
              "trainer": "ultralytics", "settings": MATCHED_SETTINGS | {"batch": cfg["train"]["batch_size"]},
              "yolo": cfg["shape"], "max_train_images": profile["max_train_images"]}
    dis = profile["yolo"].get("rival", {}).get("dis", ULTRALYTICS_DIS)
    specs = []
    for seed in profile["seeds"]:
        for method in ("baseline", "distill_model"):
            hp = dict(common)
            if method == "distill_model":
                hp |= {"teacher_run": teachers[teacher_of(profile, seed)].run_id, "dis": dis}
            specs.append(RunSpec(make_run_id("yolo", backbone, method, seed, hp), "student", backbone, method, seed,
                                 hp, "yolo"))
    return specs


def run_rival(study: Study) -> Path:
    """Train (or skip, when finished) the study's YOLO teachers and every rival run; returns runs.csv."""
    profile, data = study.profile, study.data()
    if profile["max_train_images"]:
        raise ValueError("the rival trains on the whole train split (ultralytics reads the dataset itself); "
                         "max_train_images must be null")
    teachers = [s for s in plan_detector(profile, "yolo", data.name) if s.role == "teacher"]
    specs = rival_specs(profile, data.name)
    study.run(teachers)  # the study's own YOLO teachers (skipped when finished)
    done = {r["run_id"] for r in read_runs(study.runs_csv)}
    test_set = study.image_set("test")
    for spec in specs:
        if spec.run_id in done:
            continue
        run_dir = study.out_dir / "runs" / spec.run_id
        started = time.perf_counter()
        row = study.row_of(spec)
        try:
            extra = {}
            if spec.method == "distill_model":
                teacher = study.load_finished(spec.hparams["teacher_run"])
                checkpoint = write_ultralytics_checkpoint(teacher, run_dir / "teacher_ultralytics.pt")
                extra = {"distill_model": str(checkpoint), "dis": spec.hparams["dis"]}
            theirs = ultralytics_train(data, spec.hparams["role"]["model"], profile["image_size"],
                                       spec.hparams["role"]["epochs"], spec.seed,
                                       spec.hparams["settings"]["batch"], run_dir / "ultralytics",
                                       device=str(study.device), extra=extra)
            model = theirs["detector"].to(study.device)
            torch.save(model.state_dict(), run_dir / "best.pt")
            metrics = evaluate(model, test_set, data.class_names, study.device)
            costs = measure(model, test_set.images[0].float().div(255), run_dir / "best.pt")
            study.keep_spec(spec)
            row |= costs | metrics | {"per_class_ap": json.dumps(metrics["per_class_ap"]), "status": "ok",
                                      "error": "", "train_s": round(theirs["wall_s"], 1),
                                      "wall_s": round(time.perf_counter() - started, 1)}
            study.log(f"rival {spec.run_id}: mAP {metrics['map']:.3f}")
        except Exception as exc:  # recorded, and the rest goes on
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            row |= {"status": "failed", "error": message, "wall_s": round(time.perf_counter() - started, 1)}
            study.log(f"rival {spec.run_id}: FAILED: {message}")
        upsert_run(study.runs_csv, row)
    study.measure_deferred_latency()
    return study.runs_csv
