"""REPLICATION.md from two hand-written runs.csv files: interval membership and verdict flips worked out by hand."""
from __future__ import annotations

import json

import pytest

from study.__main__ import main
from study.replicate import compare, mean_interval, pooled
from study.store import read_runs, upsert_run


def write_study(folder, maps: dict, seeds: list[int], teacher_seeds: list[int]):
    folder.mkdir()
    for seed in teacher_seeds:
        upsert_run(folder / "runs.csv", {"run_id": f"t{seed}", "detector": "faster_rcnn", "backbone": "resnet50",
                                         "method": "teacher", "seed": seed, "hparams": "{}", "status": "ok",
                                         "map": 0.5, "profile": "hand", "dataset": "toy", "device": "cpu"})
    for method, values in maps.items():
        for i, (seed, m) in enumerate(zip(seeds, values)):
            hp = {} if method == "baseline" else {"teacher_run": f"t{teacher_seeds[i % len(teacher_seeds)]}"}
            upsert_run(folder / "runs.csv", {"run_id": f"{method}-{seed}", "detector": "faster_rcnn",
                                             "backbone": "shallow", "method": method, "seed": seed,
                                             "hparams": json.dumps(hp), "status": "ok", "map": m,
                                             "profile": "hand", "dataset": "toy", "device": "cpu"})
    return folder


@pytest.fixture
def studies(tmp_path):
    original = write_study(tmp_path / "orig", {"baseline": [0.40, 0.41, 0.42], "hinton": [0.45, 0.46, 0.47],
                                               "at": [0.38, 0.39, 0.40]}, [0, 1, 2], [0, 1])
    replicate = write_study(tmp_path / "rep", {"baseline": [0.41, 0.41, 0.41], "hinton": [0.37, 0.38, 0.39],
                                               "at": [0.385, 0.395, 0.39]}, [5, 6, 7], [2, 3])
    return original, replicate


def test_interval_membership_and_flips_by_hand(studies):
    original, replicate = studies
    rows = {r["method"]: r for r in compare(read_runs(original / "runs.csv"), read_runs(replicate / "runs.csv"))}
    # baseline 0.40, 0.41, 0.42: mean 0.41, sd 0.01, 95% CI 0.41 +- 4.3027 x 0.01 / sqrt 3 = [0.3852, 0.4348]
    mean, low, high = mean_interval([0.40, 0.41, 0.42])
    assert (mean, low, high) == (pytest.approx(0.41), pytest.approx(0.385159, abs=1e-5), pytest.approx(0.434841, abs=1e-5))
    assert rows["baseline"]["inside"] and rows["at"]["inside"]  # 0.41 and 0.39 in [0.3652, 0.4148]
    assert not rows["hinton"]["inside"]  # 0.38 outside [0.4352, 0.4848]
    # hinton vs baseline: +5 points every seed in the original (a gain), -3 points every seed in the replicate
    assert rows["hinton"]["verdict"] == "significant gain" and rows["hinton"]["rep_verdict"] == "significant loss"
    assert rows["hinton"]["flipped"] and not rows["at"]["flipped"]
    assert rows["teacher"]["inside"]  # two teacher seeds at 0.5 each side: a zero-width interval holding 0.5


def test_cli_writes_replication_md_and_refuses_shared_seeds(studies, tmp_path):
    original, replicate = studies
    assert main(["replicate", "--original", str(original), "--replicate", str(replicate)]) == 0
    text = (original / "REPLICATION.md").read_text()
    assert "python -m study run --profile replication" in text
    assert "| faster_rcnn | shallow | hinton | 0.460 (3) | [0.435, 0.485] | 0.380 (3) | **no** |" in text
    assert "flipped between significant gain and significant loss: 1 (faster_rcnn hinton)" in text
    assert main(["replicate", "--original", str(original), "--replicate", str(original)]) == 2  # same seeds


def test_pooled_over_both_studies_with_the_teacher_as_the_unit(studies):
    original, replicate = studies
    rows = {r["method"]: r for r in pooled([read_runs(original / "runs.csv"), read_runs(replicate / "runs.csv")])}
    # at - baseline per seed: original -0.02 x 3 (teachers t0: seeds 0, 2; t1: seed 1); replicate -0.025 (t2),
    # -0.015 (t3), -0.02 (t2). Teacher means: -0.02, -0.02, -0.0225, -0.015: mean -0.019375, sd 0.0031458,
    # 95% CI -0.019375 +- 3.18245 x 0.0031458 / 2 = [-0.024381, -0.014369]
    at = rows["at"]
    assert (at["n"], at["runs"], at["unit"]) == (4, 6, "teacher")
    assert at["mean"] == pytest.approx(-0.019375)
    assert (at["low"], at["high"]) == (pytest.approx(-0.024381, abs=1e-6), pytest.approx(-0.014369, abs=1e-6))
    # hinton: +0.05, +0.05 (original teachers), -0.03, -0.03 (replicate): mean +0.01, not significant
    assert rows["hinton"]["mean"] == pytest.approx(0.01) and rows["hinton"]["verdict"] == "not significant"
    assert at["verdict"] == "significant loss" and at["p_adj"] == pytest.approx(min(1.0, 2 * at["p"]))


def test_pooled_against_the_compute_control(tmp_path):
    # two studies with baseline, baseline-long and hinton; hinton - baseline-long per seed, worked out by hand:
    # original seeds 0, 1, 2 (teachers t0, t1, t0): +0.01, +0.03, +0.02 -> t0 mean +0.015, t1 +0.03
    # replicate seeds 5, 6, 7 (teachers t2, t3, t2): 0.00, +0.01, +0.02 -> t2 +0.01, t3 +0.01
    # teacher means +0.015, +0.03, +0.01, +0.01: mean +0.01625, sd 0.0094648, 95% CI +- 3.18245 x 0.0094648 / 2
    original = write_study(tmp_path / "o", {"baseline": [0.40, 0.40, 0.40], "baseline-long": [0.42, 0.41, 0.43],
                                            "hinton": [0.43, 0.44, 0.45]}, [0, 1, 2], [0, 1])
    replicate = write_study(tmp_path / "r", {"baseline": [0.40, 0.40, 0.40], "baseline-long": [0.41, 0.42, 0.40],
                                             "hinton": [0.41, 0.43, 0.42]}, [5, 6, 7], [2, 3])
    studies = [read_runs(original / "runs.csv"), read_runs(replicate / "runs.csv")]
    rows = pooled(studies, "baseline-long")
    assert [r["method"] for r in rows] == ["hinton"]  # only the distilled rows against the control
    assert (rows[0]["n"], rows[0]["runs"], rows[0]["unit"]) == (4, 6, "teacher")
    assert rows[0]["mean"] == pytest.approx(0.01625)
    half = 3.18245 * 0.0094648 / 2
    assert (rows[0]["low"], rows[0]["high"]) == (pytest.approx(0.01625 - half, abs=1e-5),
                                                 pytest.approx(0.01625 + half, abs=1e-5))
    assert {r["method"] for r in pooled(studies)} == {"baseline-long", "hinton"}  # against baseline: both rows
    assert main(["replicate", "--original", str(original), "--replicate", str(replicate)]) == 0
    assert "against `baseline-long` (the compute control)" in (original / "REPLICATION.md").read_text()
