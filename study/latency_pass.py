"""The deferred latency pass: every finished model timed alone, all together, at the end of a study.

Runs are not timed where they run (a worker shares its cores with the others); each keeps its spec beside its files
(:meth:`study.workspace.Workspace.keep_spec`), and once any finished run lacks its latency,
:func:`measure_deferred_latency` rebuilds every model as it was evaluated (:func:`evaluated_model`) and times them
in interleaved rounds (:func:`study.cost.interleaved_latency`), in this process with nothing else running, so that
every latency of the table comes from one pass.
"""
from __future__ import annotations

import torch

from methods.quantize import load_int8
from study.cost import interleaved_latency, latency_ms
from study.plan import RunSpec
from study.store import read_runs, upsert_runs
from study.workspace import Workspace


def evaluated_model(workspace: Workspace, spec: RunSpec) -> tuple[torch.nn.Module, bool]:
    """A finished run's model as it was evaluated (trained, pruned, int8 or fp16-rounded), from its files, and
    whether it runs on a GPU (int8 kernels are CPU-only)."""
    run_dir = workspace.run_dir(spec.run_id)
    if spec.method.startswith("prune"):
        return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False), True
    state = torch.load(run_dir / "best.pt", map_location="cpu")
    if spec.method == "int8":
        cfg = spec.hparams["compress"]
        calibration = workspace.image_set("train").images[:cfg["calibration_images"]].float().div(255)
        return load_int8(workspace.load_finished(spec.hparams["source_run"]).eval(), state, calibration,
                         cfg["per_channel"], cfg.get("reduce_range", False)), False
    model = workspace.build(spec)
    model.load_state_dict(state)  # fp16: the half weights, upcast on loading
    return model, True


def measure_deferred_latency(workspace: Workspace, log=print) -> int:
    """Once any finished run lacks its latency: time every finished run whose model can be rebuilt from its files,
    all together in interleaved rounds, and write the latencies into ``runs.csv`` in one rewrite; returns how many
    were timed."""
    rows = read_runs(workspace.runs_csv)
    if not any(r["status"] == "ok" and not r["cpu_ms"] and workspace.spec_file(r["run_id"]).is_file() for r in rows):
        return 0  # (a row whose model cannot be rebuilt here would otherwise re-trigger the pass forever)
    models, cuda_ok = {}, {}
    for row in rows:
        spec = workspace.kept_spec(row["run_id"]) if row["status"] == "ok" else None
        if spec:
            models[row["run_id"]], cuda_ok[row["run_id"]] = evaluated_model(workspace, spec)
    cfg, test_images = workspace.profile["cost"], workspace.image_set("test").images
    images = [test_images[i].float().div(255) for i in range(min(cfg["images"], len(test_images)))]
    timed = interleaved_latency(models, images, cfg, seed=cfg.get("seed", 0))
    for row in rows:
        if row["run_id"] in timed:
            row |= timed[row["run_id"]]
            if cuda_ok[row["run_id"]] and torch.cuda.is_available():
                row["gpu_ms"] = latency_ms(models[row["run_id"]], images[0], torch.device("cuda"),
                                           cfg["warmup"], cfg["rounds"] * len(images))
                models[row["run_id"]].to("cpu")
    upsert_runs(workspace.runs_csv, [row for row in rows if row["run_id"] in timed])  # one rewrite for the pass
    log(f"timed {len(timed)} models in {cfg['rounds']} interleaved rounds of {len(images)} images")
    return len(timed)
