"""Profiles: every shipped one loads, and an unknown key at any depth is a one-line error naming its path."""
from __future__ import annotations

import pytest

from study.defaults import PROFILE_DIR, load_profile
from study.plan import detector_config


def written(tmp_path, text: str) -> str:
    """The path of a profile file ``p.yaml`` holding ``text``."""
    profile = tmp_path / "p.yaml"
    profile.write_text(text)
    return str(profile)


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
def test_shipped_profiles_load(name):
    assert load_profile(name)["name"] == name


@pytest.mark.parametrize("text, path", [("trian: {lr: 0.1}\n", "trian"),
                                        ("train: {val_evry: 2}\n", "train.val_evry"),
                                        ("yolo: {train: {lr: 0.02}, studnt: {epochs: 3}}\n", "yolo.studnt"),
                                        ("execution: {workers: 2, thread_per_worker: 1}\n",
                                         "execution.thread_per_worker")])
def test_unknown_key_at_any_depth_is_named(tmp_path, text, path):
    with pytest.raises(ValueError, match=f"p.yaml: unknown key '{path}'"):
        load_profile(written(tmp_path, text))


def test_open_sections_take_their_own_keys(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("distill: {pkd: {balance: 1.0, taps: [p4]}}\n"
                       "faster_rcnn: {teacher: {backbone: resnet18, epochs: 3}, methods: [baseline]}\n")
    loaded = load_profile(str(profile))
    assert loaded["distill"]["pkd"]["balance"] == 1.0 and loaded["faster_rcnn"]["teacher"]["backbone"] == "resnet18"
    assert detector_config(loaded, "faster_rcnn")["methods"] == ["baseline"]  # a family's override of the top level


@pytest.mark.parametrize("key, where", [("teacher", "faster_rcnn.teacher"), ("frcnn", "faster_rcnn.shape"),
                                        ("compress", "faster_rcnn.compress")])
def test_the_old_top_level_faster_rcnn_keys_say_where_they_went(tmp_path, key, where):
    profile = tmp_path / "old.yaml"
    profile.write_text(f"{key}: {{}}\n")
    with pytest.raises(ValueError, match=f"old.yaml: top-level key '{key}' has moved to {where}"):
        load_profile(str(profile))


def test_a_teacher_no_run_reads_is_not_planned():
    from study.plan import plan_runs
    teachers = lambda name: [s.seed for s in plan_runs(load_profile(name), "bccd") if s.role == "teacher"]  # noqa: E731
    assert teachers("default") == [0, 1]  # the distilled seeds alternate over both
    assert teachers("compress") == [0, 0]  # one per family: compression reads the first teacher seed only
    assert teachers("frontier") == [0, 1, 100, 101, 0, 1, 100, 101]  # per family: teachers, then self-teachers
    only_baseline = dict(load_profile("default"), methods=["baseline"])
    assert [s.seed for s in plan_runs(only_baseline, "bccd") if s.role == "teacher"] == [0]  # the first, for the gap


@pytest.mark.parametrize("name, folder", [("yolo", "yolo"), ("default", "default"),
                                          ("replication", "replication")])
def test_profiles_still_plan_their_committed_runs(name, folder):
    """A profile whose results are committed pins the settings they were made with: changing a default must not
    change the run ids it plans (a rerun or ``--reuse`` would otherwise train everything again)."""
    import csv

    from study.defaults import PROJECT_ROOT
    from study.plan import plan_runs
    with open(PROJECT_ROOT / "results" / folder / "runs.csv", newline="") as f:
        committed = {row["run_id"] for row in csv.DictReader(f)}
    planned = {s.run_id for s in plan_runs(load_profile(name), "bccd")}
    assert planned <= committed, sorted(planned - committed)[:3]


def test_a_later_setting_is_in_a_runs_hparams_only_away_from_its_earlier_behaviour():
    from study.plan import LATER_SETTINGS, plan_runs, run_train
    assert LATER_SETTINGS == {"bf16_on_cpu": False, "sigmoid_outputs": False}
    assert run_train({"lr": 0.1, "bf16_on_cpu": False}) == {"lr": 0.1}
    assert run_train({"lr": 0.1, "bf16_on_cpu": True}) == {"lr": 0.1, "bf16_on_cpu": True}
    on = plan_runs(load_profile("default"), "bccd")
    off = plan_runs(load_profile("yolo"), "bccd")  # trained fp32
    assert all(s.hparams["train"]["bf16_on_cpu"] is True for s in on)
    assert all("bf16_on_cpu" not in s.hparams["train"] for s in off)  # runs from before the key keep their ids


def test_sigmoid_outputs_reaches_the_int8_rows_and_leaves_their_ids_when_off(tmp_path):
    """``sigmoid_outputs`` (a setting added after int8 rows were committed) is kept out of the int8 rows' hparams
    while off, so their ids stay; on, it is in the hparams of every int8, QAT and QAT+KD row (new ids) and in what
    the compression step passes to the quantizer."""
    from study.compress import _scope
    from study.plan import plan_runs
    int8 = lambda runs: {s.run_id: s for s in runs if s.method.startswith("int8")}  # noqa: E731
    off = int8(plan_runs(load_profile("frontier"), "bccd"))
    on = int8(plan_runs(load_profile(written(tmp_path, (
        "compression: {int8: {sigmoid_outputs: true}, int8-qat: {sigmoid_outputs: true}, "
        "int8-qat+kd: {sigmoid_outputs: true}}\n"
        "detectors: [faster_rcnn, yolo]\n"
        "yolo: {compress: [int8, int8-qat, int8-qat+kd]}\nfaster_rcnn: {compress: [int8]}\n"))), "bccd"))
    assert off and all("sigmoid_outputs" not in s.hparams["compress"] for s in off.values())
    assert on and all(s.hparams["compress"]["sigmoid_outputs"] is True for s in on.values())
    assert not set(on) & set(off)
    spec = next(s for s in on.values() if s.method == "int8-qat+kd")
    assert _scope(spec.hparams["compress"]) == {"heads": True, "residual_inputs": True, "sigmoid_outputs": True}


@pytest.mark.parametrize("text, message", [
    ("image_size: 0\n", "image_size must be a whole number of pixels >= 32, not 0"),
    ("faster_rcnn: {student: {epochs: -3}}\n", "faster_rcnn.student.epochs must be a whole number >= 1, not -3"),
    ("cost: {rounds: 1}\n", "cost.rounds must be a whole number >= 2 (a latency's spread needs two rounds), not 1"),
    ("seeds: []\n", "seeds must be a list of whole numbers (at least one), not []"),
    ("faster_rcnn: {sizes: [{student: {backbone: shallow-s, epochs: 0}}]}\n",
     "faster_rcnn.sizes[1].student.epochs must be a whole number >= 1, not 0"),
    ("seeds: [0, 1, 0]\n", "seeds must be a list of distinct seeds (0 is there twice), not [0, 1, 0]"),
    ("teacher_seeds: []\n", "teacher_seeds must be a list of whole numbers (at least one), not []"),  # was % by 0
    ("max_train_images: -3\n", "max_train_images must be a whole number >= 1 or null (the whole split), not -3"),
    ("max_eval_images: 0\n", "max_eval_images must be a whole number >= 1 or null (the whole split), not 0"),
    ("compression: {int8: {sigmoid_outputs: 1}}\n", "compression.int8.sigmoid_outputs must be true or false, not 1"),
    ("methods: [baseline, hintn]\n", "methods: unknown distillation method 'hintn' (parts: hinton, fitnets, at, nst, "
     "pkd, cwd, fgfi, ld, ls, joined by '+')"),
    ("faster_rcnn: {sizes: [{student: {backbone: shallow-s}, methods: [hinton+atx]}]}\n",
     "faster_rcnn.sizes[1].methods: unknown distillation method 'hinton+atx' (parts: hinton, fitnets, at, nst, pkd, "
     "cwd, fgfi, ld, ls, joined by '+')"),
    ("faster_rcnn: {sizes: [{student: {backbone: nope}}]}\n", "faster_rcnn.sizes[1].student.backbone: unknown 'nope' "
     "(known: resnet50, resnet18, shallow, shallow-xs, shallow-s, shallow-l)"),
    ("detectors: [yolo]\nyolo: {student: {model: yolov9z}}\n", "yolo.student.model: unknown 'yolov9z' (known: "
     "yolov8n, yolov8s, yolov8m, yolo11n, yolo11s, yolov8t, yolov8p, yolov8f)"),
    ("compression: {prune-50: {flops_reduction: 1.5}}\n",
     "compression.prune-50.flops_reduction must be a fraction between 0 and 1, not 1.5"),
    ("execution: {workers: 0}\n", "execution.workers must be 'auto' or a whole number >= 1, not 0"),
    # each of these trained for hours before failing (or silently did something else) until checked here
    ("faster_rcnn: {student: {epoch: 3}}\n",
     "faster_rcnn.student: unknown setting 'epoch' (known: backbone, epochs, fpn_channels, roi_dim)"),
    ("distill: {hinton: {temprature: 2}}\n", "distill.hinton: unknown setting 'temprature' (known: weight, temperature)"),
    ("distill: {hinton: {temperature: 0}}\n", "distill.hinton.temperature must be a positive number, not 0"),
    ("distill: {hintn: {weight: 1}}\n", "distill: unknown method 'hintn' (known: hinton, fitnets, at, nst, pkd, cwd, "
     "fgfi, ld, ls)"),
    ("faster_rcnn: {distill: {pkd: {balance: 2}}}\n", "faster_rcnn.distill.pkd.balance must be a fraction between 0 "
     "and 1, not 2"),
    ("compression: {prune-30+kd: {kd: {hinton: {weight: -1}}}}\n",
     "compression.prune-30+kd.kd.hinton.weight must be a number >= 0, not -1"),
    ("compression: {int8: {calibration_images: 0}}\n",
     "compression.int8.calibration_images must be a whole number >= 1, not 0"),
    ("cost: {runtime: tensorrt}\n", "cost.runtime must be pytorch or onnxruntime, not 'tensorrt'"),
    # these failed only at the latency pass, after every run had trained (threads), failed every run (optimizer,
    # momentum, val_every) or silently did something else (a negative clip norm flips the gradient; 'no' is true)
    ("cost: {threads: 0}\n", "cost.threads must be a whole number >= 1, not 0"),
    ("train: {optimizer: adam}\n", "train.optimizer must be sgd or adamw, not 'adam'"),
    ("train: {momentum: 1.5}\n", "train.momentum must be a number in [0, 1), not 1.5"),
    ("train: {val_every: 0}\n", "train.val_every must be a whole number >= 1, not 0"),
    ("train: {clip_grad_norm: -1}\n", "train.clip_grad_norm must be a number >= 0 (0 or null: no clipping), not -1"),
    ("train: {bf16_on_cpu: 'no'}\n", "train.bf16_on_cpu must be true or false, not 'no'"),
    ("detectors: [yolo]\nyolo: {train: {ema_decay: 1.2}}\n", "yolo.train.ema_decay must be a number in [0, 1), not 1.2"),
    ("execution: {executor: slurm}\n", "execution.executor must be local or ray, not 'slurm'"),
    ("tuning: {pruner: asha}\n", "tuning.pruner must be median or hyperband, not 'asha'"),
    ("report: {bootstrap: 0}\n", "report.bootstrap must be a whole number of resamples >= 1, not 0")])
def test_values_no_run_could_use_are_one_line_errors_before_anything_trains(tmp_path, text, message):
    profile = written(tmp_path, text)
    with pytest.raises(ValueError) as err:
        load_profile(profile)
    assert str(err.value) == f"{profile}: {message}"


@pytest.mark.parametrize("text, message", [("seeds: [0, 1\n", "line 2: not valid YAML"),
                                           ("- 1\n- 2\n", "a profile is a mapping of keys to values, not list")])
def test_a_profile_that_is_not_a_mapping_is_one_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_profile(written(tmp_path, text))


def test_every_committed_frontier_row_is_one_the_profile_still_plans():
    """The frontier runs over several sessions: a change of the code or the profile that changed its run ids would
    orphan the committed rows and train them again."""
    import csv

    from study.defaults import PROJECT_ROOT
    from study.plan import plan_runs
    with open(PROJECT_ROOT / "results" / "frontier" / "runs.csv", newline="") as f:
        committed = {row["run_id"] for row in csv.DictReader(f)}
    planned = {s.run_id for s in plan_runs(load_profile("frontier"), "bccd")}
    assert committed and committed <= planned, sorted(committed - planned)[:3]
