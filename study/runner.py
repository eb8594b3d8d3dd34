"""A study: the runs a profile plans (:mod:`study.plan`), each executed once and recorded as a row of ``runs.csv``.

Running a profile again skips what already finished (ok or failed) and recomputes nothing. A failed run is recorded
with its reason and the study goes on. :class:`Study` orchestrates only: what runs, in which order, on which
executor (this process, worker processes of :mod:`study.parallel`, Ray actors of :mod:`study.cluster`), what is
reused and recorded. What it delegates:

- :mod:`study.workspace`: the data and image sets, run folders and spec files, checkpoints and finished-run
  loading, the teacher cache, detections files, the test ground truth;
- :mod:`study.run_kinds`: executing one run by its kind (train, compress, rival);
- :mod:`study.latency_pass`: latency, timed for all models together at the end.
"""
from __future__ import annotations

import datetime
import json
import re
import platform
import time
import traceback
from pathlib import Path

import torch

from methods.distill.distiller import TeacherCache
from study import latency_pass, run_kinds
from study.compress import execute_compression
from study.data import DetectionData
from study.errors import StudyError
from study.images import ImageSet
from study.parallel import run_parallel, worker_count
from study.plan import ID_SCHEME, RunSpec, plan_detector, plan_runs
from study.progress import Progress
from study.store import append_execution, cell, read_runs, retire_superseded, reuse_runs, upsert_run
from study.workspace import Workspace, build_model  # noqa: F401 - build_model: imported from here by the bench


THREADS = re.compile(r"\((\d+) threads?\)$")  # the thread count at the end of a CPU row's ``device``


def describe_device(device: torch.device) -> str:
    """'cuda: NVIDIA H100 ...' or 'cpu: <model name> (N threads)', for the results' hardware column."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = cpu_fields().get("model name") or platform.processor() or platform.machine()
    return f"cpu: {model} ({torch.get_num_threads()} threads)"


def cpu_fields(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields in ``cpuinfo`` (none where it cannot be read)."""
    fields = {}
    try:
        with open(cpuinfo) as lines:
            for line in lines:
                if not line.strip():
                    break  # the first processor's block ends
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return {}
    return fields


def cpu_identity(cpuinfo: str = "/proc/cpuinfo") -> str:
    """'family F model M stepping S' of the first processor in ``cpuinfo`` ('' where it is not said): under KVM the
    model name can be the same ('AMD EPYC') on hosts of different CPU generations, which train at different speeds
    and to different digits (docs/decisions.md, "The machine")."""
    fields = cpu_fields(cpuinfo)
    if "cpu family" not in fields:
        return ""
    return " ".join(f"{name} {fields[key]}" for name, key in
                    (("family", "cpu family"), ("model", "model"), ("stepping", "stepping")) if key in fields)


class Study:
    def __init__(self, profile: dict, out_dir: Path, data_spec: str | None = None, device: str | None = None,
                 progress: bool = True, log=print, workers: int | None = None, val_only: bool = False):
        self.val_only = val_only  # design pilots: train and validate, never touch the test split
        self.progress = progress
        self.log = log
        self.workers = workers  # None: the profile's ``execution`` settings decide
        try:
            resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError:
            raise StudyError(f"--device {device}: not a device (cpu, cuda, cuda:N)") from None
        if resolved.type == "cuda" and not torch.cuda.is_available():  # before the workspace touches the folder
            raise StudyError(f"--device {device}: this machine has no CUDA GPU that torch can use (use cpu)")
        self.workspace = Workspace(profile, out_dir, data_spec or profile["data"], resolved,
                                   log=lambda line: self.log(line))  # (a worker sets its log after starting)

    # -------------------------------------------------------------- the workspace's, read through
    @property
    def profile(self) -> dict:
        return self.workspace.profile

    @property
    def out_dir(self) -> Path:
        return self.workspace.out_dir

    @property
    def runs_csv(self) -> Path:
        return self.workspace.runs_csv

    @property
    def data_spec(self) -> str:
        return self.workspace.data_spec

    @property
    def device(self) -> torch.device:
        return self.workspace.device

    def data(self) -> DetectionData:
        return self.workspace.data()

    def image_set(self, split: str) -> ImageSet:
        return self.workspace.image_set(split)

    def build(self, spec: RunSpec) -> torch.nn.Module:
        return self.workspace.build(spec)

    def load_finished(self, run_id: str) -> torch.nn.Module:
        return self.workspace.load_finished(run_id)

    def teacher_cache(self, teacher_run: str) -> TeacherCache:
        return self.workspace.teacher_cache(teacher_run)

    def test_ground_truth(self):
        return self.workspace.test_ground_truth()

    def detections_file(self, spec: RunSpec) -> Path:
        return self.workspace.detections_file(spec)

    def keep_spec(self, spec: RunSpec) -> None:
        self.workspace.keep_spec(spec)

    def kept_spec(self, run_id: str) -> RunSpec | None:
        return self.workspace.kept_spec(run_id)

    # -------------------------------------------------------------- one run, by its kind (study.run_kinds)
    def train_run(self, spec: RunSpec, run_dir: Path, on_epoch=None, model: torch.nn.Module | None = None,
                  epochs: int | None = None, train_cfg: dict | None = None):
        """:func:`study.run_kinds.train_run`: (model, adapter params, result)."""
        return run_kinds.train_run(self, spec, run_dir, on_epoch, model, epochs, train_cfg)

    def execute(self, spec: RunSpec) -> dict:
        """The results of ``spec``'s ``runs.csv`` row (:func:`study.run_kinds.execute`)."""
        return run_kinds.execute(self, spec)

    def execute_compression(self, spec: RunSpec) -> dict:
        return execute_compression(self, spec)

    # -------------------------------------------------------------- latency, measured alone (study.latency_pass)
    def evaluated_model(self, spec: RunSpec) -> tuple[torch.nn.Module, bool]:
        return latency_pass.evaluated_model(self.workspace, spec)

    def measure_deferred_latency(self) -> int:
        return latency_pass.measure_deferred_latency(self.workspace, self.log)

    # -------------------------------------------------------------- orchestration
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
                "device": describe_device(self.device), "id_scheme": ID_SCHEME}

    def run_one(self, spec: RunSpec, label: str = "") -> dict:
        """Execute one run and return its ``runs.csv`` row: ok with its results, or failed with the reason (the
        traceback in the run's error.txt)."""
        started = time.perf_counter()
        row = self.row_of(spec)
        error_file = self.out_dir / "runs" / spec.run_id / "error.txt"
        error_file.unlink(missing_ok=True)  # a failed attempt's, if the run is tried again
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
            error_file.parent.mkdir(parents=True, exist_ok=True)
            error_file.write_text(traceback.format_exc())
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

    def finished(self, specs: list[RunSpec]) -> set[str]:
        """The run ids of ``runs.csv`` that need not run again: failed, or ok and either its checkpoint is here or no
        run of ``specs`` reads it (a fresh clone has the committed runs.csv but no checkpoints: it retrains the
        teachers the remaining runs read, and keeps the committed leaf rows, so a study longer than a sitting
        resumes in the next one)."""
        read = {r for spec in specs for r in spec.reads()}
        return {r["run_id"] for r in read_runs(self.runs_csv) if r["status"] == "failed" or
                (r["status"] == "ok" and (r["run_id"] not in read or
                                          (self.out_dir / "runs" / r["run_id"] / "best.pt").is_file()))}

    def execution(self) -> dict:
        """The profile's ``execution`` settings, with this study's ``workers`` where it was given one."""
        return self.profile["execution"] | ({"workers": self.workers} if self.workers is not None else {})

    def runs_at_once(self, execution: dict, todo: list) -> int:
        """How many runs go at once: a Ray cluster's fixed worker count (1 for ``auto``, for the progress estimate),
        else :func:`study.parallel.worker_count`, at most one per run to do."""
        if execution.get("executor", "local") == "ray":
            return execution["workers"] if isinstance(execution["workers"], int) else 1
        return min(worker_count(execution, self.device), max(1, len(todo)))

    def dispatch(self, todo: list, execution: dict, at_once: int, record) -> tuple[int, int, dict]:
        """Execute ``todo`` ((label, spec) pairs) on the executor ``execution`` names: Ray actors, worker
        processes, or one after the other in this process; ``record(row)`` gets each row as its run ends. Returns
        (workers, threads per run, {"retried": run ids retried})."""
        if execution.get("executor", "local") == "ray" and todo:
            from study.cluster import run_on_ray  # Ray is imported only where it is asked for
            outcome = run_on_ray(self, todo, execution, record)
            return outcome["workers"], execution["threads_per_worker"], outcome
        workers, threads = at_once, self.threads_per_run(execution)
        if workers > 1:
            return workers, threads, run_parallel(self, todo, workers, threads, record)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)  # the last run of a parallel study: the thread count its rows had
        try:
            for label, spec in todo:
                record(self.run_one(spec, label))
        finally:
            torch.set_num_threads(before)
        return workers, threads, {"retried": []}

    def threads_per_run(self, execution: dict) -> int:
        """The torch threads each run trains with: ``threads_per_worker`` where runs go to Ray actors or to several
        worker processes (also for the last runs of such a study, trained here one at a time), else this process's
        thread count."""
        if execution.get("executor", "local") == "ray" or worker_count(execution, self.device) > 1:
            return execution["threads_per_worker"]
        return torch.get_num_threads()

    def check_threads(self, specs: list[RunSpec], threads: int) -> None:
        """Refuse to add runs trained on ``threads`` threads to a plan whose finished CPU runs trained on another
        count: the same run id gives other numbers on another thread count (CPU BatchNorm on channels-last maps and
        oneDNN's convolution backward reduce in per-thread pieces; docs/decisions.md, "thread count")."""
        planned = {s.run_id for s in specs}
        counts = {}
        for r in read_runs(self.runs_csv):
            found = THREADS.search(r.get("device") or "")
            if r["run_id"] in planned and r["status"] == "ok" and (r.get("device") or "").startswith("cpu") and found:
                counts.setdefault(int(found.group(1)), []).append(r["run_id"])
        other = {n: ids for n, ids in counts.items() if n != threads}
        if other:
            n, ids = next(iter(other.items()))
            raise StudyError(f"{self.runs_csv}: {len(ids)} finished run(s) of this plan trained on {n} thread(s) "
                             f"per run (e.g. {ids[0]}) and this execution would train on {threads}: a run's numbers "
                             "depend on its thread count; resume with the same workers and threads_per_worker, or "
                             "into another folder")

    def warn_other_cpu(self) -> None:
        """Say so when earlier executions into this folder ran on another CPU (``cpu_id``): its rows and this
        execution's will differ in speed and to the digit (docs/decisions.md, "The machine")."""
        here = cpu_identity()
        earlier = sorted({e["cpu_id"] for e in read_runs(self.out_dir / "executions.csv") if e.get("cpu_id")} - {here})
        if here and earlier:
            self.log(f"warning: {self.out_dir / 'executions.csv'}: earlier executions ran on {', '.join(earlier)} and "
                     f"this one runs on {here}: rows from the two CPUs differ in speed and to the digit "
                     "(docs/decisions.md, 'The machine')")

    def check_id_scheme(self) -> None:
        """Refuse a runs.csv with rows identified under another run-id scheme than this version's
        (:data:`study.plan.ID_SCHEME`): planned under new ids, they would be retired and their runs trained again."""
        other = [r for r in read_runs(self.runs_csv) if (r.get("id_scheme") or "1") != str(ID_SCHEME)]
        if other:
            raise StudyError(f"{self.runs_csv}: {len(other)} row(s) have run ids of scheme {other[0].get('id_scheme')} "
                             f"(e.g. {other[0]['run_id']}) and this version makes scheme {ID_SCHEME} ids: resume with "
                             "the version that made them, or into another folder")

    def run(self, specs: list[RunSpec] | None = None, tuned: dict[str, dict] | None = None,
            time_latency: bool = True) -> Path:
        """Run ``specs`` (default: the profile's plan, with ``tuned`` hyperparameters where given), then time every
        model that lacks a latency (unless ``time_latency`` is False: the caller is not alone on the machine)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        specs = specs if specs is not None else self.planned(tuned)
        self.check_id_scheme()
        retired = retire_superseded(self.runs_csv, {cell(vars(s) | {"dataset": self.data().name}): s.run_id
                                                    for s in specs})
        if retired:
            self.log(f"{len(retired)} row(s) of runs.csv trained with earlier settings moved to superseded.csv: "
                     + ", ".join(r["run_id"] for r in retired))
        done = self.finished(specs)
        self.log(f"study '{self.profile['name']}' on {self.data_spec}: {len(specs)} runs, "
                 f"{len(done & {s.run_id for s in specs})} already finished, device {self.device}")
        todo = [(f"[{n}/{len(specs)}]", spec) for n, spec in enumerate(specs, 1) if spec.run_id not in done]
        execution = self.execution()
        started, clock = datetime.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
        at_once = self.runs_at_once(execution, todo)
        if todo and self.device.type == "cpu":
            self.check_threads(specs, self.threads_per_run(execution))
            self.warn_other_cpu()
        progress = Progress([spec for _, spec in todo], len(specs), len(specs) - len(todo), at_once, self.log,
                            earlier=read_runs(self.runs_csv))

        def record(row: dict) -> None:  # the driver alone writes runs.csv
            upsert_run(self.runs_csv, row)
            progress.finished(row)

        workers, threads, outcome = self.dispatch(todo, execution, at_once, record)
        if time_latency and not self.val_only:
            self.measure_deferred_latency()
        if todo:
            append_execution(self.out_dir / "executions.csv", {
                "started": started, "profile": self.profile["name"], "runs_planned": len(specs),
                "runs_executed": len(todo), "executor": execution.get("executor", "local"), "workers": workers,
                "threads_per_run": threads, "device": describe_device(self.device).split(" (")[0],
                "cpu_id": cpu_identity(),
                "wall_s": round(time.perf_counter() - clock, 1), "retried": " ".join(outcome["retried"])})
        return self.runs_csv
