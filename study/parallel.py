"""Runs of a study on several worker processes at once, each with few threads.

Small detectors use two CPU cores poorly from one process: on the 2-core development machine one run with 2 threads
trains the shallow Faster R-CNN student at 30 img/s, two runs with 1 thread each at 26 img/s each (1.7x the work
done), YOLO's student 108 vs 2 x 75 img/s (1.4x). So a study's runs are handed to ``workers`` processes
(``execution`` in the profile; ``auto`` = one per core on a CPU, bounded by memory, one per GPU).

- Which run a worker gets, and what happens when a worker dies, are :mod:`study.schedule`'s rules (the same for
  the Ray executor, :mod:`study.cluster`); each worker returns a finished run's row and this process alone writes
  ``runs.csv``.
- Latency is not timed in a worker (the other workers would share its cores): the model as evaluated is kept and
  timed afterwards, alone (:func:`study.latency_pass.measure_deferred_latency`).
- A worker that dies (killed, out of memory) is replaced; its run is retried once, then recorded as failed; a
  killed study resumes from ``runs.csv`` as a serial one does. Workers die with this process (Linux: parent-death
  signal).
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import platform
import signal
from multiprocessing.connection import wait

import torch

from study.errors import StudyError
from study.schedule import run_jobs

MEMORY_PER_WORKER_GB = 6  # a worker's dataset copy, models and teacher cache (teacher_cache_mb 4096 at most)


def worker_count(execution: dict, device: torch.device) -> int:
    """How many runs at once: ``execution["workers"]``, or for ``auto`` one per ``threads_per_worker`` cores of a
    CPU (at most one per MEMORY_PER_WORKER_GB of memory), and one per GPU."""
    workers = execution["workers"]
    if workers != "auto":
        if not isinstance(workers, int) or workers < 1:
            raise StudyError(f"execution.workers must be 'auto' or a positive integer, not {workers!r}")
        return workers
    if device.type == "cuda":
        return max(1, torch.cuda.device_count()) if device.index is None else 1  # one worker per GPU
    if device.type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gb = MEMORY_PER_WORKER_GB
    return max(1, min(cores // max(1, execution["threads_per_worker"]), int(memory_gb // MEMORY_PER_WORKER_GB)))


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker(conn, study_class, profile: dict, out_dir, data_spec: str, device: str, verbose: bool,
            threads: int, val_only: bool = False) -> None:
    _die_with_parent()
    torch.set_num_threads(threads)
    # the study's class arrives pickled by reference (its module is imported here): this module imports no runner
    study = study_class(profile, out_dir, data_spec, device, progress=False, log=lambda *_: None,  # no bars
                        val_only=val_only)
    study.data()  # its warnings were printed by the parent
    study.log = print if verbose else (lambda *_: None)
    while True:
        job = conn.recv()
        if job is None:
            return
        label, spec = job
        conn.send(study.run_one(spec, label))


class _Worker:
    node = platform.node()  # every local worker is on this machine

    def __init__(self, ctx, study, threads: int, device: str):
        self.conn, child = ctx.Pipe()
        self.device = device
        self.process = ctx.Process(target=_worker, daemon=True, args=(
            child, type(study), study.profile, study.out_dir, study.data_spec, device, study.log is print, threads,
            getattr(study, "val_only", False)))
        self.process.start()
        child.close()
        self.job = None  # the schedule.Job being run
        self.last_teacher = None


class LocalPool:
    """``workers`` processes of ``threads`` threads on this machine, worker i on ``devices[i]``; the pool that
    :func:`study.schedule.run_jobs` drives."""

    def __init__(self, study, devices: list[str], threads: int):
        self.ctx, self.study, self.threads = mp.get_context("spawn"), study, threads
        self.workers = [_Worker(self.ctx, study, threads, d) for d in devices]

    def idle(self) -> list:
        return [w for w in self.workers if w.job is None]

    def busy(self) -> bool:
        return any(w.job is not None for w in self.workers)

    def nodes(self) -> set:
        return {_Worker.node}

    def can_place(self) -> bool:
        return True

    def submit(self, worker: _Worker, job) -> None:
        worker.job = job
        worker.conn.send((job.label, job.spec))

    def wait(self) -> list:
        busy = [w for w in self.workers if w.job is not None]
        wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
        ended = []
        for i, w in enumerate(self.workers):
            if w.job is None:
                continue
            row = death = None
            if w.conn.poll():
                try:
                    row = w.conn.recv()
                except (EOFError, OSError):  # it died while answering
                    pass
            elif w.process.is_alive():
                continue
            if row is None:
                w.process.join(timeout=10)
                death = f"WorkerDied: worker process ended with exit code {w.process.exitcode} during this run"
                self.workers[i] = _Worker(self.ctx, self.study, self.threads, w.device)
            ended.append((w, w.job, row, death))
            w.job = None
        return ended

    def close(self) -> None:
        for w in self.workers:
            if w.process.is_alive():
                try:
                    w.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for w in self.workers:
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()


def worker_devices(workers: int, device: torch.device) -> list[str]:
    """Worker i's device: the study's CPU, or GPU i (modulo the GPUs) when the study's device is an unnumbered
    ``cuda`` (one worker per GPU)."""
    if device.type == "cuda" and device.index is None:
        return [f"cuda:{i % max(1, torch.cuda.device_count())}" for i in range(workers)]
    return [str(device)] * workers


def run_parallel(study, todo: list, workers: int, threads: int, record) -> dict:
    """Run ``todo`` ((label, spec) pairs, in plan order) on ``workers`` local processes of ``threads`` threads
    each under :mod:`study.schedule`'s rules; ``record(row)`` is called here for every run as it ends."""
    pool = LocalPool(study, worker_devices(workers, study.device), threads)
    study.log(f"{len(pool.workers)} worker processes, {threads} thread(s) each; latency is measured at the end, "
              "alone")
    return run_jobs(todo, pool, record, study.row_of, study.log)
