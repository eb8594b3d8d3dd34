"""A tiny frontier end to end (Faster R-CNN at 128 px): two student sizes, label smoothing, self-distillation, a
pruned teacher with KD, int8 (post-training, and QAT distilled from the float model) of a student; then FRONTIER.md with the test-image bootstrap from the kept
detections."""
from __future__ import annotations

import json

import pytest

from study.bootstrap import map_from_tables, match_tables
from study.defaults import load_profile
from study.evaluate import load_detections
from study.frontier_report import write_frontier
from study.plan import plan_runs
from study.runner import Study
from study.store import read_runs

GRID = """
detectors: [faster_rcnn]
image_size: 128
max_train_images: 12
max_eval_images: 8
seeds: [0, 1]
teacher_seeds: [0]
self_teacher_seeds: [100]
methods: [baseline, hinton, ls, hinton@self]
faster_rcnn:
  teacher: {backbone: shallow-l, fpn_channels: 16, roi_dim: 32, epochs: 2}
  student: {epochs: 2}
  sizes: [{student: {backbone: shallow-xs, fpn_channels: 16, roi_dim: 32}, seeds: [0], methods: [baseline, hinton]}]
  shape: {rpn_pre_nms_train: 100, rpn_post_nms_train: 50, rpn_pre_nms_test: 50, rpn_post_nms_test: 20,
          box_batch_per_image: 32}
  compress: [prune-30+kd]
  compress_students: {methods: [int8, int8-qat+kd], source: hinton}
  compress_seeds: [0]
compression:
  prune-30+kd: {criterion: l1, flops_reduction: 0.3, global: false, finetune_epochs: 1, finetune_lr: 0.005,
                kd: {hinton: {weight: 1.0, temperature: 4.0}}}
  int8-qat+kd: {finetune_epochs: 1, calibration_images: 8}
train: {warmup_iters: 2}
cost: {warmup: 1, rounds: 2, images: 2, runtime: onnxruntime}
execution: {workers: 1}
report: {frontier: true, bootstrap: 50}
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    (out / "grid.yaml").write_text(GRID)
    profile = load_profile(str(out / "grid.yaml"))
    study = Study(profile, out, progress=False, log=lambda *_: None)
    return profile, study, study.run()


def test_every_planned_run_of_the_grid_finishes(grid):
    profile, study, runs_csv = grid
    rows = read_runs(runs_csv)
    assert all(r["status"] == "ok" for r in rows), [(r["run_id"], r["error"]) for r in rows if r["error"]]
    assert {r["run_id"] for r in rows} == {s.run_id for s in plan_runs(profile, study.data().name)}
    kinds = {(r["backbone"], r["method"]) for r in rows}
    assert {("shallow", "ls"), ("shallow", "hinton@self"), ("shallow", "self-teacher"), ("shallow-xs", "hinton"),
            ("shallow-l", "prune-30+kd"), ("shallow", "int8"), ("shallow-xs", "int8"),
            ("shallow", "int8-qat+kd")} <= kinds
    ls = next(r for r in rows if r["method"] == "ls")
    assert "teacher_run" not in json.loads(ls["hparams"])
    for qat in (r for r in rows if r["method"] == "int8-qat+kd"):  # distilled from the float model it starts from
        hp = json.loads(qat["hparams"])
        assert hp["teacher_run"] == hp["source_run"] and set(hp["distill"]) == {"hinton", "pkd"}


def test_latency_in_onnx_runtime_beside_eager_and_the_export_keeps_the_map(grid):
    """``cost.runtime: onnxruntime``: every model (int8 ones with their int8 graph) exported whole, timed in ONNX
    Runtime beside PyTorch eager, and its test mAP equal to PyTorch's (the same model, another runtime)."""
    _, _, runs_csv = grid
    for r in read_runs(runs_csv):
        assert r["runtime"] == "onnxruntime" and float(r["cpu_ms"]) > 0 and float(r["eager_ms"]) > 0, r["run_id"]
        assert float(r["onnx_mb"]) > 0
        assert float(r["onnx_map"]) == pytest.approx(float(r["map"]), abs=0.002), r["run_id"]


def test_kept_detections_give_back_each_runs_map(grid):
    _, study, runs_csv = grid
    gt = study.test_ground_truth()
    for r in read_runs(runs_csv):
        detections = load_detections(study.detections_file(next(
            s for s in plan_runs(study.profile, study.data().name) if s.run_id == r["run_id"])))
        # detections are kept rounded (scores 1e-4, boxes 0.1 px): the recomputed mAP is the row's to rounding
        assert map_from_tables(match_tables(gt, detections)) == pytest.approx(float(r["map"]), abs=2e-3)


def test_frontier_report_has_its_sections_and_bootstrap_intervals(grid):
    _, study, runs_csv = grid
    report = write_frontier(runs_csv, runs_csv.parent, study.test_ground_truth(), n_boot=50, seed=0)
    text = report.read_text()
    for section in ("## Best model at each budget", "## Every budget point", "## Differences"):
        assert section in text
    assert "| shallow | ls | baseline | 2 |" in text  # label smoothing against the student alone, 2 cells
    assert "| shallow | hinton | hinton@self | 2 |" in text  # and Hinton against self-distillation
    for figure in ("frontier_params", "frontier_gflops", "frontier_size", "frontier_onnx_size", "frontier_latency",
                   "forest"):
        assert (runs_csv.parent / f"{figure}.png").is_file(), figure
    assert "By size on disk (the saved PyTorch model" in text and "By measured CPU latency:" in text
    assert "By the size of the ONNX file that ONNX Runtime loads" in text  # the grid's latency pass: ONNX Runtime
    assert f"{len(read_runs(runs_csv))} runs had their test detections kept" in text
    assert "## Deviations from PLAN.md\n\nNone recorded" in text
    (runs_csv.parent / "DEVIATIONS.md").write_text("- a row was dropped, for a reason.\n")
    assert "## Deviations from PLAN.md\n\n- a row was dropped, for a reason." in write_frontier(
        runs_csv, runs_csv.parent).read_text()
