"""A study: the teacher, then every (student method, seed) of a profile, each a row of ``runs.csv``.

Runs are identified by a hash of everything that determines them, so running a profile again skips what already
finished (ok or failed) and recomputes nothing; a changed hyperparameter makes a new run. A failed run is recorded
with its reason and the study goes on.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import platform
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from detectors.faster_rcnn import build_faster_rcnn
from detectors.fcos import build_fcos
from detectors.yolo import build_yolo, configure_ultralytics
from methods.distill.distiller import Distiller, TeacherCache, parse_method
from methods.prune import prune_backbone
from methods.quantize import fp16_weights, load_int8, quantize_int8, upcast
from study.cost import count_params, interleaved_latency, latency_ms, measure
from study.data import DetectionData, load_dataset
from study.defaults import _merge
from study.evaluate import evaluate
from study.images import ImageSet, canvas_size, load_images
from study.parallel import run_parallel, worker_count
from study.store import append_execution, read_runs, upsert_run
from study.train import seed_everything, train


DETECTORS = ("faster_rcnn", "fcos", "yolo")
TUNED_SUFFIX = "@tuned"  # "hinton@tuned": Hinton with its searched settings, beside "hinton" at default weights
SHAPE_KEYS = {"faster_rcnn": "frcnn", "fcos": "fcos", "yolo": "yolo"}  # the hparams key of a detector's shape


@dataclass
class RunSpec:
    run_id: str
    role: str  # "teacher", "student" or "compressed"
    backbone: str  # the backbone (Faster R-CNN, FCOS) or the model (YOLO) of the role
    method: str  # teacher, baseline, or distillation methods joined by '+'
    seed: int
    hparams: dict
    detector: str = "faster_rcnn"


def make_run_id(detector: str, backbone: str, method: str, seed: int, hparams: dict) -> str:
    digest = hashlib.sha1(json.dumps(hparams, sort_keys=True).encode()).hexdigest()[:8]
    return f"{detector}-{backbone}-{method.replace('+', '_')}-s{seed}-{digest}"


def detector_config(profile: dict, detector: str) -> dict:
    """One detector's teacher, student, train, distill, methods, compress and shape settings.

    Faster R-CNN's are the profile's top-level keys (``frcnn`` holds its shape); another family's section
    (``yolo``, ``fcos``) gives its own roles and shape and overrides ``train``/``distill``/``methods``.
    """
    if detector == "faster_rcnn":
        return {"teacher": profile["teacher"], "student": profile["student"], "train": profile["train"],
                "distill": profile["distill"], "methods": profile["methods"], "compress": profile["compress"],
                "compression": profile["compression"], "shape_key": SHAPE_KEYS[detector], "shape": profile["frcnn"]}
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector '{detector}' (known: {', '.join(DETECTORS)})")
    section = profile[detector]
    return {"teacher": section["teacher"], "student": section["student"],
            "train": _merge(profile["train"], section.get("train", {})),
            "distill": _merge(profile["distill"], section.get("distill", {})),
            "methods": section.get("methods", profile["methods"]), "compress": section.get("compress", []),
            "compression": profile["compression"], "shape_key": SHAPE_KEYS[detector], "shape": section["shape"]}


def _role_name(role: dict) -> str:
    return role.get("backbone") or role["model"]


def teacher_of(profile: dict, seed: int) -> int:
    """The teacher seed a student seed is paired with: teacher seeds alternate over the student seeds in order, so
    every distilled row's (teacher, seed) cells span the teachers and its paired differences carry their variance."""
    return profile["teacher_seeds"][profile["seeds"].index(seed) % len(profile["teacher_seeds"])]


def plan_detector(profile: dict, detector: str, dataset_name: str, tuned: dict[str, dict] | None = None
                  ) -> list[RunSpec]:
    """One detector's teacher runs (one per teacher seed), then each (method, seed) student run, then its
    compression runs (of the first teacher). A distilled student of seed s reads the teacher :func:`teacher_of`
    gives; ``baseline-long`` is the student alone for ``long_factor`` times the epochs (the compute control).
    ``tuned`` maps a method to ``{"distill": {...}, "source": {...}}`` from a search; those runs use the tuned
    values."""
    cfg = detector_config(profile, detector)
    common = {"dataset": dataset_name, "image_size": profile["image_size"], "train": cfg["train"],
              cfg["shape_key"]: cfg["shape"], "max_train_images": profile["max_train_images"]}
    t = cfg["teacher"]
    teacher_hp = common | {"role": t}
    teachers = {seed: RunSpec(make_run_id(detector, _role_name(t), "teacher", seed, teacher_hp), "teacher",
                              _role_name(t), "teacher", seed, teacher_hp, detector)
                for seed in profile["teacher_seeds"]}
    runs = list(teachers.values())
    s = cfg["student"]
    shared = (tuned or {}).get("baseline")  # searched shared settings: every student row trains with them
    if shared:
        common = common | {"train": cfg["train"] | shared["train"], "tuned_shared": shared["source"]}
        s = s | {"epochs": shared["epochs"]}
    for method in cfg["methods"]:
        for seed in profile["seeds"]:
            hp = common | {"role": s}
            if method == "baseline-long":
                hp["role"] = s | {"epochs": s["epochs"] * profile["long_factor"]}
            elif method != "baseline":
                hp["distill"] = {m: cfg["distill"][m] for m in parse_method(method)}
                hp["teacher_run"] = teachers[teacher_of(profile, seed)].run_id
                if tuned and method in tuned:
                    hp["distill"], hp["tuned"] = tuned[method]["distill"], tuned[method]["source"]
                elif method.endswith(TUNED_SUFFIX):
                    raise ValueError(f"method '{method}' has no finished search to take its settings from")
            runs.append(RunSpec(make_run_id(detector, _role_name(s), method, seed, hp), "student", _role_name(s), method,
                                seed, hp, detector))
    first_teacher = teachers[profile["teacher_seeds"][0]]
    for method in cfg["compress"]:
        if method not in cfg["compression"]:
            raise ValueError(f"unknown compression method '{method}' (known: {', '.join(cfg['compression'])})")
        comp = cfg["compression"][method]
        hp = common | {"role": t, "compress": {k: v for k, v in comp.items() if k != "kd"},
                       "source_run": first_teacher.run_id}
        if "kd" in comp:
            hp["distill"], hp["teacher_run"] = comp["kd"], first_teacher.run_id
        seeds = profile["seeds"] if method.startswith("prune") else [first_teacher.seed]
        for seed in seeds:
            runs.append(RunSpec(make_run_id(detector, _role_name(t), method, seed, hp), "compressed", _role_name(t),
                                method, seed, hp, detector))
    return runs


def plan_runs(profile: dict, dataset_name: str, tuned: dict[str, dict] | None = None) -> list[RunSpec]:
    """Every detector's plan (:func:`plan_detector`), in the profile's order of ``detectors``."""
    return [spec for detector in profile["detectors"] for spec in plan_detector(profile, detector, dataset_name,
                                                                                  (tuned or {}).get(detector))]


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
                 progress: bool = True, log=print, workers: int | None = None):
        self.profile = profile
        self.out_dir = Path(out_dir)
        configure_ultralytics(self.out_dir / ".ultralytics")  # its settings file stays in the results folder
        self.runs_csv = self.out_dir / "runs.csv"
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
        spec = next(s for s in plan_runs(self.profile, self.data().name) if s.run_id == run_id)
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
        teacher = self.teacher_cache(spec.hparams["teacher_run"]) if "distill" in spec.hparams else None
        seed_everything(spec.seed)
        model = model if model is not None else self.build(spec)
        distiller = None
        if teacher is not None:
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
        model, adapter_params, result = self.train_run(spec, self.out_dir / "runs" / spec.run_id)
        test_set = self.image_set("test")
        metrics = evaluate(model, test_set, self.data().class_names, self.device)
        costs = measure(model, test_set.images[0].float().div(255), self.out_dir / "runs" / spec.run_id / "best.pt")
        self._keep_for_latency(spec)
        out = costs | metrics | {"adapter_params": adapter_params, "val_map": result["best_val_map"],
                                 "best_epoch": result["best_epoch"], "train_s": result["train_s"]}
        if "resolved_weights" in result:  # the weights it trained with (a balanced term's is measured)
            out["hparams"] = json.dumps(spec.hparams | {"resolved_weights": result["resolved_weights"]},
                                        sort_keys=True)
        return out

    def execute_compression(self, spec: RunSpec) -> dict:
        """Prune (and fine-tune, plainly or distilled from the unpruned model), quantize, or halve the weights of
        the finished source run's model."""
        cfg, run_dir = spec.hparams["compress"], self.out_dir / "runs" / spec.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        model = self.load_finished(spec.hparams["source_run"])
        seed_everything(spec.seed)  # calibration and pruning draw nothing before this; fine-tuning re-seeds
        test_set, classes = self.image_set("test"), self.data().class_names
        image = test_set.images[0].float().div(255)
        details, out = {}, {}
        eval_device, eval_model, flops_model = self.device, model, None
        if spec.method.startswith("prune"):
            train_set = self.image_set("train")
            batch = train_set.images[:spec.hparams["train"]["batch_size"]].float().div(255)
            targets = [{"boxes": train_set.boxes[i], "labels": train_set.labels[i]} for i in range(len(batch))]
            loss_fn = lambda: sum(model(list(batch), targets).values())  # noqa: E731 - Taylor's gradients
            finetune = dict(spec.hparams["train"], lr=cfg["finetune_lr"])
            steps = cfg.get("iterative_steps", 1)  # prune a share, fine-tune, repeat (one-shot: 1)
            if steps > 1 and cfg.get("flops_reduction") is None:
                raise ValueError("iterative pruning needs a flops_reduction target")
            per_step, train_s = [], 0.0
            for k in range(1, steps + 1):
                reduction = cfg.get("flops_reduction")
                if reduction is not None:  # this step's share of the target, relative to the FLOPs left now
                    reduction = 1 - (1 - reduction * k / steps) / (1 - reduction * (k - 1) / steps)
                torch.manual_seed(spec.seed + k - 1)  # the random criterion
                step = prune_backbone(model, image, cfg["criterion"], reduction, cfg.get("channel_ratio"),
                                      cfg["global"], loss_fn=loss_fn, round_to=cfg.get("round_to"))
                step["map_before_finetune"] = evaluate(model.to(self.device), test_set, classes, self.device)["map"]
                epochs = max(1, cfg["finetune_epochs"] // steps + (k <= cfg["finetune_epochs"] % steps))
                model, out["adapter_params"], result = self.train_run(spec, run_dir, model=model, epochs=epochs,
                                                                      train_cfg=finetune)
                per_step.append(step)
                train_s += result["train_s"]
            details = per_step[0] if steps == 1 else {
                "steps": per_step, "gflops_before": per_step[0]["gflops_before"],
                "gflops_after": per_step[-1]["gflops_after"], "params_before": per_step[0]["params_before"],
                "params_after": per_step[-1]["params_after"], "map_before_finetune": per_step[0]["map_before_finetune"]}
            out |= {"val_map": result["best_val_map"], "best_epoch": result["best_epoch"], "train_s": train_s}
            torch.save(model, run_dir / "model.pt")  # the pruned architecture with its weights
            eval_model = model
        elif spec.method == "int8":
            calibration = self.image_set("train").images[:cfg["calibration_images"]].float().div(255)
            eval_model, details = quantize_int8(model, calibration, cfg["per_channel"], cfg.get("reduce_range", False))
            eval_device, flops_model = torch.device("cpu"), model
        elif spec.method == "fp16":
            half = fp16_weights(model)
            details = {"stored": "float16 weights", "cpu_inference": "upcast to float32"}
            torch.save(half.state_dict(), run_dir / "best.pt")
            eval_model = upcast(half)
            details["size_mb_fp16"] = (run_dir / "best.pt").stat().st_size / 1e6
        metrics = evaluate(eval_model.to(eval_device), test_set, classes, eval_device)
        weights_path = None if spec.method == "fp16" else run_dir / "best.pt"  # fp16: keep the half file
        costs = measure(eval_model, image, weights_path, flops_model)
        self._keep_for_latency(spec)
        if spec.method == "fp16":
            costs["size_mb"] = details["size_mb_fp16"]
        if flops_model is not None:  # int8 weights are packed buffers, not parameters: count the float original's
            costs["params"] = count_params(flops_model)
        return costs | metrics | out | {"details": json.dumps(details)}

    # -------------------------------------------------------------- latency, measured alone, all models together
    def _spec_file(self, run_id: str) -> Path:
        return self.out_dir / "runs" / run_id / "spec.json"

    def _keep_for_latency(self, spec: RunSpec) -> None:
        """Keep the run's spec beside its files, so the latency pass can rebuild its model as evaluated."""
        self._spec_file(spec.run_id).write_text(json.dumps(dataclasses.asdict(spec)))

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
        if not any(r["status"] == "ok" and not r["cpu_ms"] for r in rows):
            return 0
        models, cuda_ok = {}, {}
        for row in rows:
            if row["status"] == "ok" and self._spec_file(row["run_id"]).is_file():
                spec = RunSpec(**json.loads(self._spec_file(row["run_id"]).read_text()))
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
                upsert_run(self.runs_csv, row)
        self.log(f"timed {len(timed)} models in {cfg['rounds']} interleaved rounds of {len(images)} images")
        return len(timed)

    def ensure_teacher(self, detector: str = "faster_rcnn") -> str:
        """Run the profile's teacher of ``detector`` if it has not finished; return its run id."""
        teacher = plan_detector(self.profile, detector, self.data().name)[0]
        self.run([teacher])
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
            result["per_class_ap"] = json.dumps(result["per_class_ap"])
            row |= result | {"status": "ok", "error": "", "wall_s": round(time.perf_counter() - started, 1)}
            self.log(f"{label} {spec.run_id}: mAP {result['map']:.3f} AP50 {result['map50']:.3f} "
                     f"({time.perf_counter() - started:.0f} s)")
        except Exception as exc:  # recorded, and the study goes on
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            (self.out_dir / "runs" / spec.run_id).mkdir(parents=True, exist_ok=True)
            (self.out_dir / "runs" / spec.run_id / "error.txt").write_text(traceback.format_exc())
            row |= {"status": "failed", "error": message, "train_s": round(time.perf_counter() - started, 1),
                    "wall_s": round(time.perf_counter() - started, 1)}
            self.log(f"{label} {spec.run_id}: FAILED: {message}")
        return row

    def run(self, specs: list[RunSpec] | None = None, tuned: dict[str, dict] | None = None) -> Path:
        """Run ``specs`` (default: the profile's plan, with ``tuned`` hyperparameters where given)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        specs = specs if specs is not None else plan_runs(self.profile, self.data().name, tuned)
        # finished: failed, or ok and either its checkpoint is here or no run of the plan reads it (a fresh clone
        # has the committed runs.csv but no checkpoints: it retrains the teachers the remaining runs read, and
        # keeps the committed leaf rows, so a study longer than a sitting resumes in the next one)
        read = {r for spec in specs for r in (spec.hparams.get("teacher_run"), spec.hparams.get("source_run")) if r}
        done = {r["run_id"] for r in read_runs(self.runs_csv) if r["status"] == "failed" or
                (r["status"] == "ok" and (r["run_id"] not in read or
                                          (self.out_dir / "runs" / r["run_id"] / "best.pt").is_file()))}
        self.log(f"study '{self.profile['name']}' on {self.data_spec}: {len(specs)} runs, "
                 f"{len(done & {s.run_id for s in specs})} already finished, device {self.device}")
        todo = [(f"[{n}/{len(specs)}]", spec) for n, spec in enumerate(specs, 1) if spec.run_id not in done]
        execution = self.profile["execution"] | ({"workers": self.workers} if self.workers is not None else {})
        workers = min(worker_count(execution, self.device), max(1, len(todo)))
        started, clock = datetime.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
        if workers > 1:
            run_parallel(self, todo, workers, execution["threads_per_worker"],
                         lambda row: upsert_run(self.runs_csv, row))
        else:
            for label, spec in todo:
                upsert_run(self.runs_csv, self.run_one(spec, label))
        self.measure_deferred_latency()
        if todo:
            append_execution(self.out_dir / "executions.csv", {
                "started": started, "profile": self.profile["name"], "runs_planned": len(specs),
                "runs_executed": len(todo), "workers": workers,
                "threads_per_run": execution["threads_per_worker"] if workers > 1 else torch.get_num_threads(),
                "device": describe_device(self.device).split(" (")[0], "wall_s": round(time.perf_counter() - clock, 1)})
        return self.runs_csv
