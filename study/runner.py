"""A study: the runs a profile plans (:mod:`study.plan`), each executed once and recorded as a row of ``runs.csv``.

Running a profile again skips what already finished (ok or failed) and recomputes nothing. A failed run is recorded
with its reason and the study goes on. Training and evaluation of a run are here; compression is
:mod:`study.compress`; the runs are spread over worker processes by :mod:`study.parallel` (or Ray actors by
:mod:`study.cluster`); latency is timed for all
models together at the end.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import platform
import time
import traceback
from pathlib import Path

import torch

from detectors.faster_rcnn import build_faster_rcnn
from detectors.fcos import build_fcos
from detectors.yolo import build_yolo, configure_ultralytics
from methods.distill.distiller import Distiller, TeacherCache
from methods.quantize import load_int8
from study.compress import execute_compression
from study.cost import interleaved_latency, latency_ms, measure
from study.data import DetectionData, load_dataset
from study.plan import SHAPE_KEYS, RunSpec, plan_detector, plan_runs
from study.progress import Progress
from study.rival import execute_rival
from study.evaluate import coco_ground_truth, evaluate
from study.images import ImageSet, canvas_size, load_images
from study.parallel import run_parallel, worker_count
from study.store import (append_execution, cell, read_runs, retire_superseded, reuse_runs, upsert_run,
                         upsert_runs, val_curve)
from study.train import seed_everything, train


def build_model(spec: RunSpec, num_classes: int) -> torch.nn.Module:
    """A randomly initialised model for ``spec``'s detector and role."""
    role, shape = spec.hparams["role"], spec.hparams[SHAPE_KEYS[spec.detector]]
    if spec.detector == "yolo":
        return build_yolo(role["model"], num_classes, **shape)
    if spec.detector == "fcos":
        return build_fcos(role["backbone"], num_classes, fpn_channels=role["fpn_channels"], **shape)
    return build_faster_rcnn(role["backbone"], num_classes, fpn_channels=role["fpn_channels"],
                             roi_dim=role["roi_dim"], **{k: (tuple(v) if isinstance(v, list) else v)
                                                         for k, v in shape.items()})


def describe_device(device: torch.device) -> str:
    """'cuda: NVIDIA H100 ...' or 'cpu: <model name> (N threads)', for the results' hardware column."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {model} ({torch.get_num_threads()} threads)"


class Study:
    def __init__(self, profile: dict, out_dir: Path, data_spec: str | None = None, device: str | None = None,
                 progress: bool = True, log=print, workers: int | None = None, val_only: bool = False):
        self.profile = profile
        self.val_only = val_only  # design pilots: train and validate, never touch the test split
        self.out_dir = Path(out_dir)
        configure_ultralytics(self.out_dir / ".ultralytics")  # its settings file stays in the results folder
        self.runs_csv = self.out_dir / "runs.csv"
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this machine has no CUDA GPU that torch can use (use cpu)")
        self.data_spec = data_spec or profile["data"]
        self.progress = progress
        self.log = log
        self.workers = workers  # None: the profile's ``execution`` settings decide
        self._data: DetectionData | None = None
        self._sets: dict[str, ImageSet] = {}
        self._teacher_caches: dict[str, TeacherCache] = {}

    # -------------------------------------------------------------- data, loaded once per study
    def data(self) -> DetectionData:
        if self._data is None:
            self._data = load_dataset(self.data_spec, seed=self.profile["split_seed"])
            for line in self._data.warning_lines():
                self.log(line)
        return self._data

    def image_set(self, split: str) -> ImageSet:
        if split not in self._sets:
            data = self.data()
            limit = self.profile["max_train_images" if split == "train" else "max_eval_images"]
            samples = data.splits[split][:limit] if limit else data.splits[split]
            canvas = canvas_size([s for v in data.splits.values() for s in v], self.profile["image_size"])
            self._sets[split] = load_images(samples, canvas, self.profile["image_size"])
        return self._sets[split]

    # -------------------------------------------------------------- runs
    def build(self, spec: RunSpec) -> torch.nn.Module:
        return build_model(spec, len(self.data().class_names))

    def load_finished(self, run_id: str) -> torch.nn.Module:
        """A fresh copy of a finished run's model, from its best checkpoint."""
        row = {r["run_id"]: r for r in read_runs(self.runs_csv)}.get(run_id)
        if row is None or row["status"] != "ok":
            raise RuntimeError(f"run {run_id} is not available ({row['error'] if row else 'it has not run'})")
        spec = self.kept_spec(run_id) or next(  # the spec it ran with (a tuned study's plan needs its searches)
            s for s in plan_runs(self.profile, self.data().name) if s.run_id == run_id)
        model = self.build(spec)
        model.load_state_dict(torch.load(self.out_dir / "runs" / run_id / "best.pt", map_location="cpu"))
        return model

    def teacher_cache(self, teacher_run: str) -> TeacherCache:
        if teacher_run not in self._teacher_caches:
            teacher = self.load_finished(teacher_run).to(self.device)
            self._teacher_caches = {teacher_run: TeacherCache(teacher, self.profile["teacher_cache_mb"])}
        return self._teacher_caches[teacher_run]

    def train_run(self, spec: RunSpec, run_dir: Path, on_epoch=None, model: torch.nn.Module | None = None,
                  epochs: int | None = None, train_cfg: dict | None = None):
        """Train the run's model (or ``model``, e.g. a pruned one, to fine-tune), distilled if its hparams say so;
        returns (model, adapter params, result)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "hparams.json").write_text(json.dumps(spec.hparams, indent=1, sort_keys=True))
        train_set, val_set = self.image_set("train"), self.image_set("val")
        # everything that may draw random numbers or not depending on what this process did before (loading
        # the teacher builds a model) comes first; then the run's seed, then everything the run builds
        teacher = self.teacher_cache(spec.hparams["teacher_run"]) if "teacher_run" in spec.hparams else None
        seed_everything(spec.seed)
        model = model if model is not None else self.build(spec)
        distiller = None
        if "distill" in spec.hparams:  # distilled, or a teacher-free control (label smoothing)
            steps = math.ceil(len(train_set) / (train_cfg or spec.hparams["train"])["batch_size"])
            distiller = Distiller(model, teacher, spec.hparams["distill"], steps_per_epoch=steps)
            wrapped, loss_fn = distiller, distiller
        else:
            wrapped, loss_fn = model, (lambda images, targets, keys: model(images, targets))
        try:
            result = train(wrapped, loss_fn, model, train_set, val_set, self.data().class_names,
                           train_cfg or spec.hparams["train"], epochs or spec.hparams["role"]["epochs"], spec.seed,
                           run_dir, self.device, self.progress, on_epoch)
        finally:
            if distiller is not None:
                distiller.remove_hooks()
        if distiller is not None:
            result["resolved_weights"] = distiller.resolved_weights()
        return model, (distiller.adapter_params() if distiller else 0), result

    def execute(self, spec: RunSpec) -> dict:
        if "compress" in spec.hparams:
            return self.execute_compression(spec)
        if spec.hparams.get("trainer") == "ultralytics":  # the rival: ultralytics' own trainer (study.rival)
            return execute_rival(self, spec)
        model, adapter_params, result = self.train_run(spec, self.out_dir / "runs" / spec.run_id)
        self.keep_spec(spec)
        validated = {"adapter_params": adapter_params, "val_map": result["best_val_map"],
                     "best_epoch": result["best_epoch"], "val_curve": val_curve(result["history"]),
                     "train_s": result["train_s"]}
        if self.val_only:
            return validated
        test_set = self.image_set("test")
        metrics = evaluate(model, test_set, self.data().class_names, self.device, save_to=self.detections_file(spec))
        costs = measure(model, test_set.images[0].float().div(255), self.out_dir / "runs" / spec.run_id / "best.pt")
        out = costs | metrics | validated
        if "resolved_weights" in result:  # the weights it trained with (a balanced term's is measured)
            out["hparams"] = json.dumps(spec.hparams | {"resolved_weights": result["resolved_weights"]},
                                        sort_keys=True)
        return out

    def execute_compression(self, spec: RunSpec) -> dict:
        return execute_compression(self, spec)

    def test_ground_truth(self):
        """The test split's COCO ground truth, as every run was scored against (the bootstrap's reference)."""
        return coco_ground_truth(self.image_set("test"), self.data().class_names)

    def detections_file(self, spec: RunSpec) -> Path:
        """Where a run's test detections are kept (committed with the results: the bootstrap over test images)."""
        return self.out_dir / "detections" / f"{spec.run_id}.json.gz"

    # -------------------------------------------------------------- latency, measured alone, all models together
    def _spec_file(self, run_id: str) -> Path:
        return self.out_dir / "runs" / run_id / "spec.json"

    def keep_spec(self, spec: RunSpec) -> None:
        """Keep the run's spec beside its files, so the latency pass can rebuild its model as evaluated."""
        self._spec_file(spec.run_id).write_text(json.dumps(dataclasses.asdict(spec)))

    def kept_spec(self, run_id: str) -> RunSpec | None:
        """The spec :meth:`keep_spec` kept for ``run_id``; None where it kept none."""
        path = self._spec_file(run_id)
        return RunSpec(**json.loads(path.read_text())) if path.is_file() else None

    def evaluated_model(self, spec: RunSpec) -> tuple[torch.nn.Module, bool]:
        """A finished run's model as it was evaluated (trained, pruned, int8 or fp16-rounded), from its files, and
        whether it runs on a GPU (int8 kernels are CPU-only)."""
        run_dir = self.out_dir / "runs" / spec.run_id
        if spec.method.startswith("prune"):
            return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False), True
        state = torch.load(run_dir / "best.pt", map_location="cpu")
        if spec.method == "int8":
            cfg = spec.hparams["compress"]
            calibration = self.image_set("train").images[:cfg["calibration_images"]].float().div(255)
            return load_int8(self.load_finished(spec.hparams["source_run"]).eval(), state, calibration,
                             cfg["per_channel"], cfg.get("reduce_range", False)), False
        model = self.build(spec)
        model.load_state_dict(state)  # fp16: the half weights, upcast on loading
        return model, True

    def measure_deferred_latency(self) -> int:
        """Once any finished run lacks its latency: time every finished run whose model can be rebuilt from its files,
        all together in interleaved rounds (:func:`study.cost.interleaved_latency`), in this process with nothing
        else running, so that every latency of the table comes from one pass; returns how many were timed."""
        rows = read_runs(self.runs_csv)
        if not any(r["status"] == "ok" and not r["cpu_ms"] and self._spec_file(r["run_id"]).is_file() for r in rows):
            return 0  # (a row whose model cannot be rebuilt here would otherwise re-trigger the pass forever)
        models, cuda_ok = {}, {}
        for row in rows:
            spec = self.kept_spec(row["run_id"]) if row["status"] == "ok" else None
            if spec:
                models[row["run_id"]], cuda_ok[row["run_id"]] = self.evaluated_model(spec)
        cfg, test_images = self.profile["cost"], self.image_set("test").images
        images = [test_images[i].float().div(255) for i in range(min(cfg["images"], len(test_images)))]
        timed = interleaved_latency(models, images, cfg, seed=cfg.get("seed", 0))
        for row in rows:
            if row["run_id"] in timed:
                row |= timed[row["run_id"]]
                if cuda_ok[row["run_id"]] and torch.cuda.is_available():
                    row["gpu_ms"] = latency_ms(models[row["run_id"]], images[0], torch.device("cuda"),
                                               cfg["warmup"], cfg["rounds"] * len(images))
                    models[row["run_id"]].to("cpu")
        upsert_runs(self.runs_csv, [row for row in rows if row["run_id"] in timed])  # one rewrite for the pass
        self.log(f"timed {len(timed)} models in {cfg['rounds']} interleaved rounds of {len(images)} images")
        return len(timed)

    def ensure_teacher(self, detector: str = "faster_rcnn") -> str:
        """Run the profile's teacher of ``detector`` if it has not finished; return its run id."""
        teacher = plan_detector(self.profile, detector, self.data().name)[0]
        self.run([teacher], time_latency=False)  # (a search's worker: the study times its models later, alone)
        return teacher.run_id

    def row_of(self, spec: RunSpec) -> dict:
        """The ``runs.csv`` columns that name a run (before its results)."""
        return {"run_id": spec.run_id, "profile": self.profile["name"], "dataset": self.data().name,
                "detector": spec.detector, "backbone": spec.backbone, "method": spec.method,
                "hparams": json.dumps(spec.hparams, sort_keys=True), "seed": spec.seed,
                "device": describe_device(self.device)}

    def run_one(self, spec: RunSpec, label: str = "") -> dict:
        """Execute one run and return its ``runs.csv`` row: ok with its results, or failed with the reason (the
        traceback in the run's error.txt)."""
        started = time.perf_counter()
        row = self.row_of(spec)
        try:
            result = self.execute(spec)
            if "per_class_ap" in result:
                result["per_class_ap"] = json.dumps(result["per_class_ap"])
            row |= result | {"status": "ok", "error": "", "wall_s": round(time.perf_counter() - started, 1)}
            score = (f"val mAP {result['val_map']:.3f}" if self.val_only else
                     f"mAP {result['map']:.3f} AP50 {result['map50']:.3f}")
            self.log(f"{label} {spec.run_id}: {score} ({time.perf_counter() - started:.0f} s)")
        except Exception as exc:  # recorded, and the study goes on
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            (self.out_dir / "runs" / spec.run_id).mkdir(parents=True, exist_ok=True)
            (self.out_dir / "runs" / spec.run_id / "error.txt").write_text(traceback.format_exc())
            row |= {"status": "failed", "error": message, "train_s": round(time.perf_counter() - started, 1),
                    "wall_s": round(time.perf_counter() - started, 1)}
            self.log(f"{label} {spec.run_id}: FAILED: {message}")
        return row

    def reuse(self, sources: list, tuned: dict[str, dict] | None = None, specs: list[RunSpec] | None = None
              ) -> list[str]:
        """Copy the finished runs of the results folders ``sources`` (in order) that this study plans
        (:func:`reuse_runs`), logging how many came from each; returns the ids copied."""
        specs = specs if specs is not None else plan_runs(self.profile, self.data().name, tuned)
        copied = []
        for source in sources:
            before = len(copied)
            copied += reuse_runs(Path(source), self.out_dir, {s.run_id for s in specs})
            self.log(f"reused {len(copied) - before} finished run(s) of {source}")
        return copied

    def planned(self, tuned: dict[str, dict] | None = None) -> list[RunSpec]:
        """The profile's plan on this study's data."""
        return plan_runs(self.profile, self.data().name, tuned)

    def run(self, specs: list[RunSpec] | None = None, tuned: dict[str, dict] | None = None,
            time_latency: bool = True) -> Path:
        """Run ``specs`` (default: the profile's plan, with ``tuned`` hyperparameters where given), then time every
        model that lacks a latency (unless ``time_latency`` is False: the caller is not alone on the machine)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        specs = specs if specs is not None else self.planned(tuned)
        retired = retire_superseded(self.runs_csv, {cell(vars(s) | {"dataset": self.data().name}): s.run_id
                                                    for s in specs})
        if retired:
            self.log(f"{len(retired)} row(s) of runs.csv trained with earlier settings moved to superseded.csv: "
                     + ", ".join(r["run_id"] for r in retired))
        # finished: failed, or ok and either its checkpoint is here or no run of the plan reads it (a fresh clone
        # has the committed runs.csv but no checkpoints: it retrains the teachers the remaining runs read, and
        # keeps the committed leaf rows, so a study longer than a sitting resumes in the next one)
        read = {r for spec in specs for r in spec.reads()}
        done = {r["run_id"] for r in read_runs(self.runs_csv) if r["status"] == "failed" or
                (r["status"] == "ok" and (r["run_id"] not in read or
                                          (self.out_dir / "runs" / r["run_id"] / "best.pt").is_file()))}
        self.log(f"study '{self.profile['name']}' on {self.data_spec}: {len(specs)} runs, "
                 f"{len(done & {s.run_id for s in specs})} already finished, device {self.device}")
        todo = [(f"[{n}/{len(specs)}]", spec) for n, spec in enumerate(specs, 1) if spec.run_id not in done]
        execution = self.profile["execution"] | ({"workers": self.workers} if self.workers is not None else {})
        started, clock = datetime.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
        on_ray = execution.get("executor", "local") == "ray"
        at_once = (execution["workers"] if isinstance(execution["workers"], int) else 1) if on_ray else \
            min(worker_count(execution, self.device), max(1, len(todo)))
        progress = Progress([spec for _, spec in todo], len(specs), len(specs) - len(todo), at_once, self.log)

        def record(row: dict) -> None:  # the driver alone writes runs.csv
            upsert_run(self.runs_csv, row)
            progress.finished(row)

        outcome = {"retried": []}
        if on_ray and todo:
            from study.cluster import run_on_ray  # Ray is imported only where it is asked for
            outcome = run_on_ray(self, todo, execution, record)
            workers, threads = outcome["workers"], execution["threads_per_worker"]
        else:
            workers = at_once
            threads = execution["threads_per_worker"] if workers > 1 else torch.get_num_threads()
            if workers > 1:
                outcome = run_parallel(self, todo, workers, threads, record)
            else:
                for label, spec in todo:
                    record(self.run_one(spec, label))
        if time_latency and not self.val_only:
            self.measure_deferred_latency()
        if todo:
            append_execution(self.out_dir / "executions.csv", {
                "started": started, "profile": self.profile["name"], "runs_planned": len(specs),
                "runs_executed": len(todo), "executor": execution.get("executor", "local"), "workers": workers,
                "threads_per_run": threads, "device": describe_device(self.device).split(" (")[0],
                "wall_s": round(time.perf_counter() - clock, 1), "retried": " ".join(outcome["retried"])})
        return self.runs_csv
