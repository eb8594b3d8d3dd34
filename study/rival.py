"""The tool a YOLO user would pick instead of this project: ultralytics' own trainer, plainly and with its built-in
distillation (``distill_model=``, ultralytics 8.4), as rows of a study.

Same data and splits (a YOLO-format view of the study's), image size, epochs, seeds and recipe as the parity check
(:data:`study.ultralytics_trainer.MATCHED_SETTINGS`); the teacher is the study's own YOLO teacher of the seed's pairing
(:func:`study.plan.teacher_of`), handed to ultralytics as a checkpoint; ``dis`` is ultralytics' default weight
(6.0) unless the profile's ``yolo.rival.dis`` says otherwise. Each trained student is scored by the study's
evaluator and written to the study's ``runs.csv`` under backbone ``<model>@ultralytics`` with method ``baseline``
(its plain trainer) or ``distill_model`` (its distillation), so the report pairs each with its own trainer's
baseline: both trainers' gains over their own baselines side by side. Its weights and spec are kept like any run's,
so the latency pass times it with the rest.
"""
from __future__ import annotations

from pathlib import Path

import torch

from study.cost import measure
from study.errors import StudyError
from study.evaluate import evaluate
from study.groups import RIVAL_SUFFIX
from study.plan import RunSpec, detector_config, make_run_id, plan_detector, teacher_of
from study.store import read_runs, upsert_run
from study.ultralytics_trainer import MATCHED_SETTINGS, ultralytics_train, write_ultralytics_checkpoint

ULTRALYTICS_DIS = 6.0  # ultralytics' default distillation weight (cfg/default.yaml: dis)


def rival_specs(profile: dict, dataset_name: str) -> list[RunSpec]:
    """The rival's runs: per seed, ultralytics' plain trainer and its ``distill_model=`` trainer."""
    cfg = detector_config(profile, "yolo")
    teachers = {s.seed: s for s in plan_detector(profile, "yolo", dataset_name) if s.role == "teacher"}
    student = cfg["student"]
    backbone = student["model"] + RIVAL_SUFFIX
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


def execute_rival(study, spec: RunSpec) -> dict:
    """Train one rival run with ultralytics' trainer (given the study's teacher as a checkpoint for
    ``distill_model``), score it with the study's evaluator; the results of its ``runs.csv`` row
    (the run kind ``rival`` of :mod:`study.run_kinds`: a spec whose ``trainer`` is ``ultralytics``)."""
    data, run_dir = study.data(), study.out_dir / "runs" / spec.run_id
    extra = {}
    if spec.method == "distill_model":
        teacher = study.load_finished(spec.hparams["teacher_run"])
        checkpoint = write_ultralytics_checkpoint(teacher, run_dir / "teacher_ultralytics.pt")
        extra = {"distill_model": str(checkpoint), "dis": spec.hparams["dis"]}
    theirs = ultralytics_train(data, spec.hparams["role"]["model"], study.profile["image_size"],
                               spec.hparams["role"]["epochs"], spec.seed, spec.hparams["settings"]["batch"],
                               run_dir / "ultralytics", device=str(study.device), extra=extra)
    model = theirs["detector"].to(study.device)
    torch.save(model.state_dict(), run_dir / "best.pt")
    test_set = study.image_set("test")
    metrics = evaluate(model, test_set, data.class_names, study.device)
    costs = measure(model, test_set.images[0].float().div(255), run_dir / "best.pt")
    study.keep_spec(spec)
    return costs | metrics | {"train_s": round(theirs["wall_s"], 1)}


def run_rival(study) -> Path:
    """Train (or skip, when finished) the study's YOLO teachers and every rival run; returns runs.csv. The rival's
    runs go one at a time in this process (ultralytics' trainer starts its own data-loader processes, which a
    study's worker process, a daemon, cannot)."""
    profile, data = study.profile, study.data()
    if profile["max_train_images"]:
        raise StudyError("the rival trains on the whole train split (ultralytics reads the dataset itself); "
                         "max_train_images must be null")
    teachers = [s for s in plan_detector(profile, "yolo", data.name) if s.role == "teacher"]
    study.run(teachers)  # the study's own YOLO teachers (skipped when finished)
    done = {r["run_id"] for r in read_runs(study.runs_csv)}
    specs = rival_specs(profile, data.name)
    for n, spec in enumerate(specs, 1):
        if spec.run_id not in done:
            upsert_run(study.runs_csv, study.run_one(spec, f"rival [{n}/{len(specs)}]"))
    study.measure_deferred_latency()
    return study.runs_csv
