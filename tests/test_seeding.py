"""A run's numbers come from its seed alone: not from what the process drew before it, nor from a warm teacher
cache left by an earlier run (which would also change which worker ran it)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from study.defaults import _merge, load_profile
from study.evaluate import evaluate
from study.plan import plan_runs
from study.runner import Study


@pytest.fixture(scope="module")
def one_step(tmp_path_factory):
    """The smoke profile cut to one optimisation step per epoch (batch 8 of 8 images)."""
    out = tmp_path_factory.mktemp("seeding")
    profile = _merge(load_profile("smoke"), {"max_train_images": 8, "detectors": ["faster_rcnn", "yolo"],
                                             "methods": ["baseline", "fitnets"], "seeds": [3],
                                             "yolo": {"train": {"batch_size": 8}}})
    return profile, out


def run_after(profile, out, spec, noise: int, study: Study | None = None):
    """Draw ``noise`` numbers from every global generator, then train ``spec`` for one epoch of one step."""
    study = study or Study(profile, out, progress=False, log=lambda *_: None)
    random.random() if noise else None
    for _ in range(noise):
        random.random()
    np.random.rand(noise)
    torch.rand(noise)
    model, _, result = study.train_run(spec, out / "runs" / f"{spec.run_id}-{noise}", epochs=1)
    metrics = evaluate(model, study.image_set("test"), study.data().class_names, study.device)
    return {k: v.clone() for k, v in model.state_dict().items()}, result["best_val_map"], metrics["map"], study


@pytest.mark.parametrize("detector, method", [("faster_rcnn", "fitnets"), ("yolo", "baseline")])
def test_same_spec_same_weights_and_metrics_whatever_ran_before(one_step, detector, method):
    profile, out = one_step
    plan = [s for s in plan_runs(profile, "bccd") if s.detector == detector]
    spec = next(s for s in plan if s.method == method)
    if "teacher_run" in spec.hparams:
        Study(profile, out, progress=False, log=lambda *_: None).run([plan[0]])  # the teacher it reads
    weights_a, val_a, test_a, study = run_after(profile, out, spec, noise=0)
    # the same process again, after other draws and with the teacher (and its cache) already loaded
    weights_b, val_b, test_b, _ = run_after(profile, out, spec, noise=1234, study=study)
    # a fresh study object, after a different amount of drawing
    weights_c, val_c, test_c, _ = run_after(profile, out, spec, noise=7)
    assert weights_a.keys() == weights_b.keys() == weights_c.keys()
    different = [k for k in weights_a if not (torch.equal(weights_a[k], weights_b[k]) and
                                              torch.equal(weights_a[k], weights_c[k]))]
    assert different == []
    assert val_a == val_b == val_c and test_a == test_b == test_c


def test_another_seed_gives_other_weights(one_step):
    profile, out = one_step
    spec = next(s for s in plan_runs(profile, "bccd") if s.detector == "yolo" and s.method == "baseline")
    other = type(spec)(**{**spec.__dict__, "seed": spec.seed + 1, "run_id": spec.run_id + "-other"})
    weights_a = run_after(profile, out, spec, noise=0)[0]
    weights_b = run_after(profile, out, other, noise=0)[0]
    assert any(not torch.equal(weights_a[k], weights_b[k]) for k in weights_a if weights_a[k].is_floating_point())
