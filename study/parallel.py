"""Runs of a study on several worker processes at once, each with few threads.

Small detectors use two CPU cores poorly from one process: on the 2-core development machine one run with 2 threads
trains the shallow Faster R-CNN student at 30 img/s, two runs with 1 thread each at 26 img/s each (1.7x the work
done), YOLO's student 108 vs 2 x 75 img/s (1.4x). So a study's runs are handed to ``workers`` processes
(``execution`` in the profile; ``auto`` = one per core on a CPU, bounded by memory, one on a GPU).

- A run starts once the runs it reads from (``teacher_run``, ``source_run``) have ended; a worker is given a run
  that uses the teacher it used last where there is one, so its teacher cache stays warm.
- Each worker returns a finished run's row and this process alone writes ``runs.csv``.
- Latency is not timed in a worker (the other workers would share its cores): the model as evaluated is kept and
  timed afterwards, alone (:meth:`study.runner.Study.measure_deferred_latency`).
- A worker that dies (killed, out of memory) has its run recorded as failed and is replaced; a killed study resumes
  from ``runs.csv`` as a serial one does. Workers die with this process (Linux: parent-death signal).
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
from multiprocessing.connection import wait

import torch

MEMORY_PER_WORKER_GB = 6  # a worker's dataset copy, models and teacher cache (teacher_cache_mb 4096 at most)


def worker_count(execution: dict, device: torch.device) -> int:
    """How many runs at once: ``execution["workers"]``, or for ``auto`` one per ``threads_per_worker`` cores of a
    CPU (at most one per MEMORY_PER_WORKER_GB of memory), and one on a GPU."""
    workers = execution["workers"]
    if workers != "auto":
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"execution.workers must be 'auto' or a positive integer, not {workers!r}")
        return workers
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
            threads: int) -> None:
    _die_with_parent()
    torch.set_num_threads(threads)
    # the study's class arrives pickled by reference (its module is imported here): this module imports no runner
    study = study_class(profile, out_dir, data_spec, device, progress=False, log=lambda *_: None)  # no bars
    study.data()  # its warnings were printed by the parent
    study.log = print if verbose else (lambda *_: None)
    while True:
        job = conn.recv()
        if job is None:
            return
        label, spec = job
        conn.send(study.run_one(spec, label))


class _Worker:
    def __init__(self, ctx, study, threads: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, daemon=True, args=(
            child, type(study), study.profile, study.out_dir, study.data_spec, str(study.device), study.log is print,
            threads))
        self.process.start()
        child.close()
        self.job = None  # (label, spec) being run
        self.last_teacher = None


def run_parallel(study, todo: list, workers: int, threads: int, record) -> None:
    """Run ``todo`` ((label, spec) pairs, in plan order) on ``workers`` processes of ``threads`` threads each;
    ``record(row)`` is called here for every run as it ends."""
    ctx = mp.get_context("spawn")
    pending = list(todo)
    unfinished = {spec.run_id for _, spec in todo}
    pool = [_Worker(ctx, study, threads) for _ in range(min(workers, len(todo)))]
    study.log(f"{len(pool)} worker processes, {threads} thread(s) each; latency is measured at the end, alone")
    try:
        while pending or any(w.job for w in pool):
            for w in pool:
                if w.job is not None:
                    continue
                ready = [job for job in pending if not any(r in unfinished for r in job[1].reads())]
                if not ready:
                    break
                job = next((j for j in ready if w.last_teacher and w.last_teacher in j[1].reads()), ready[0])
                pending.remove(job)
                w.job = job
                w.conn.send(job)
            busy = [w for w in pool if w.job is not None]
            if not busy:  # cannot happen (a run only waits on runs of this list, which have no cycles); were it to,
                for label, spec in pending:  # run the rest here, one by one, rather than wait forever
                    record(study.run_one(spec, label))
                return
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for i, w in enumerate(pool):
                if w.job is None:
                    continue
                label, spec = w.job
                row = None
                if w.conn.poll():
                    try:
                        row = w.conn.recv()
                    except (EOFError, OSError):  # it died while answering
                        pass
                elif w.process.is_alive():
                    continue
                if row is None:
                    w.process.join(timeout=10)
                    message = f"WorkerDied: worker process ended with exit code {w.process.exitcode} during this run"
                    study.log(f"{label} {spec.run_id}: FAILED: {message}")
                    row = study.row_of(spec) | {"status": "failed", "error": message}
                    pool[i] = w = _Worker(ctx, study, threads)
                record(row)
                unfinished.discard(spec.run_id)
                w.job = None
                w.last_teacher = spec.hparams.get("teacher_run") or w.last_teacher
    finally:
        for w in pool:
            if w.process.is_alive():
                try:
                    w.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for w in pool:
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
