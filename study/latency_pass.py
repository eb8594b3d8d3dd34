"""The deferred latency pass: every finished model timed alone, all together, at the end of a study.

Runs are not timed where they run (a worker shares its cores with the others); each keeps its spec beside its files
(:meth:`study.workspace.Workspace.keep_spec`), and once any finished run lacks its latency,
:func:`measure_deferred_latency` rebuilds every model as it was evaluated (:func:`evaluated_model`) and times them
in interleaved rounds (:func:`study.cost.interleaved_latency`), in this process with nothing else running, so that
every latency of the table comes from one pass.

The runtime is the profile's ``cost.runtime``: ``pytorch`` (eager mode; ``cpu_ms``) or ``onnxruntime``: every model
is exported whole (:func:`study.onnx_runtime.export_detector`; an int8 model with its int8 graph) and timed in ONNX
Runtime (``cpu_ms``) in interleaved rounds, then its PyTorch eager form (``eager_ms``; an int8 graph lowered to
oneDNN kernels) in rounds of the eager forms, and the exported model is evaluated on the test split (``onnx_map``,
to compare with ``map``).
"""
from __future__ import annotations

import torch

from methods.quantize_pt2e import load_int8, lowered
from study.cost import interleaved_latency, latency_ms
from study.evaluate import evaluate_map
from study.plan import RunSpec
from study.store import read_runs, upsert_runs
from study.workspace import Workspace


def evaluated_model(workspace: Workspace, spec: RunSpec) -> tuple[torch.nn.Module, bool]:
    """A finished run's model as it was evaluated (trained, pruned, int8 or fp16-rounded), from its files, and
    whether it runs on a GPU (int8 kernels are CPU-only)."""
    run_dir = workspace.run_dir(spec.run_id)
    if spec.method.startswith("prune"):
        return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False), True
    if spec.method.startswith("int8"):  # post-training or QAT: the saved int8 graph and float rest
        return load_int8(workspace.load_finished(spec.hparams["source_run"]), run_dir), False
    model = workspace.build(spec)
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location="cpu"))  # fp16: upcast on loading
    return model, True


def eager_form(model: torch.nn.Module, cuda_ok: bool, image: torch.Tensor) -> torch.nn.Module:
    """``model`` as it is deployed in PyTorch eager mode: as it is, or, for an int8 model (one that runs on the CPU
    only), its int8 graph lowered to oneDNN int8 kernels for one image of ``image``'s shape."""
    return model if cuda_ok else lowered(model, image)


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
    runtime = cfg.get("runtime", "pytorch")
    if runtime == "onnxruntime":
        timed = _onnxruntime_pass(workspace, models, cuda_ok, images, cfg)
    elif runtime == "pytorch":  # an int8 model as it is deployed in PyTorch: lowered to oneDNN int8 kernels
        eager = {key: eager_form(model, cuda_ok[key], images[0]) for key, model in models.items()}
        timed = {key: value | {"runtime": "pytorch"} for key, value in
                 interleaved_latency(eager, images, cfg, seed=cfg.get("seed", 0)).items()}
    else:
        raise ValueError(f"cost.runtime: unknown runtime {runtime!r} (pytorch, onnxruntime)")
    for row in rows:
        if row["run_id"] in timed:
            row |= timed[row["run_id"]]
            if cuda_ok[row["run_id"]] and torch.cuda.is_available():
                row["gpu_ms"] = latency_ms(models[row["run_id"]], images[0], torch.device("cuda"),
                                           cfg["warmup"], cfg["rounds"] * len(images))
                models[row["run_id"]].to("cpu")
    upsert_runs(workspace.runs_csv, [row for row in rows if row["run_id"] in timed])  # one rewrite for the pass
    log(f"timed {len(timed)} models in {cfg['rounds']} interleaved rounds of {len(images)} images ({runtime})")
    return len(timed)


def _onnxruntime_pass(workspace: Workspace, models: dict, cuda_ok: dict, images: list, cfg: dict) -> dict:
    """Every model exported and loaded in ONNX Runtime and timed in interleaved rounds, then every eager form (an
    int8 model lowered to oneDNN kernels) in rounds of its own, and each export evaluated on the test split; run
    id -> the row's ``cpu_ms``, ``cpu_ms_iqr``, ``eager_ms``, ``onnx_mb``, ``onnx_map``, ``runtime``."""
    from study.onnx_runtime import ort_detector

    test_set, classes = workspace.image_set("test"), workspace.data().class_names
    exported, contenders = {}, {}
    for run_id, model in models.items():
        path = workspace.run_dir(run_id) / "model.onnx"
        exported[run_id] = ort_detector(model, images[0], path, threads=cfg["threads"])
        contenders[(run_id, "ort")] = exported[run_id]
        contenders[(run_id, "eager")] = eager_form(model, cuda_ok[run_id], images[0])
    # each runtime in its own interleaved rounds: PyTorch's thread pool is not left running beside a session's
    timed = {}
    for runtime in ("ort", "eager"):
        timed |= interleaved_latency({k: m for k, m in contenders.items() if k[1] == runtime}, images, cfg,
                                     seed=cfg.get("seed", 0))
    out = {}
    for run_id, detector in exported.items():
        out[run_id] = {"cpu_ms": timed[(run_id, "ort")]["cpu_ms"], "cpu_ms_iqr": timed[(run_id, "ort")]["cpu_ms_iqr"],
                       "eager_ms": timed[(run_id, "eager")]["cpu_ms"], "runtime": "onnxruntime",
                       "onnx_mb": detector.path.stat().st_size / 1e6,
                       "onnx_map": evaluate_map(detector, test_set, classes, torch.device("cpu"))}
    return out
