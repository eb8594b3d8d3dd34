"""Runs of a study on a Ray cluster (``python -m study run ... --executor ray [--address HOST:PORT]``).

Each worker is a Ray actor holding one :class:`study.runner.Study` (its data decoded once, its teacher cache warm
between runs) and asking for its resources: one GPU (and ``threads_per_worker`` CPUs) on a cluster with GPUs,
else ``threads_per_worker`` CPUs. The driver (the process that called ``study run``) hands runs to actors under
:mod:`study.schedule`'s rules, the same code as the local executor's: a run starts when the runs it reads have
ended, an actor is given runs of the teacher it used last, a run whose actor or node died is retried once on
another node, then recorded failed. Only the driver writes ``runs.csv``; a killed driver resumes from it.

Artifacts travel through a shared folder, not Ray's object store: every node must see the results folder at the
same path (NFS, a cluster file system). A run's checkpoint is already a file the resume rule and the latency pass
read, and an object in the store is lost with the node that owns it, while a file on shared storage outlives any
node. An actor checks at start that it sees the driver's folder (a marker file the driver wrote) and fails with a
one-line message naming the folder and the node otherwise; it works in the driver's working directory, so
relative paths (the data spec, the results folder) mean the same on every node.
"""
from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import ray
import torch

from study.errors import ClusterUnreachable, StudyError
from study.schedule import run_jobs

PLACE_TIMEOUT_S = 300  # a study with no live worker gives up on placing one after this long
MAX_START_FAILURES = 5  # workers that fail to start (a broken node) are replaced this many times in all


@ray.remote(max_restarts=0, max_task_retries=0)
class StudyWorker:
    """One worker: a Study in its own process on some node, running one run at a time."""

    def __init__(self, study_class, profile: dict, out_dir: str, data_spec: str | None, device: str, verbose: bool,
                 threads: int, marker: str, cwd: str):
        node = ray.get_runtime_context().get_node_id()
        if os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths (the data spec, the results folder) mean what they mean to the driver
        if not (Path(out_dir) / marker).is_file():
            raise RuntimeError(f"{out_dir}: not the driver's results folder on node {node[:12]} (every node must "
                               "see the results folder at the same path: a shared folder)")
        torch.set_num_threads(threads)
        self.study = study_class(profile, out_dir, data_spec, device, progress=False, log=lambda *_: None)
        self.study.data()  # decoded once per worker; its warnings were printed by the driver
        self.study.log = print if verbose else (lambda *_: None)
        self.node_id = node

    def node(self) -> str:
        return self.node_id

    def run(self, label: str, spec) -> dict:
        return self.study.run_one(spec, label)


class _Slot:
    def __init__(self, actor, node: str):
        self.actor, self.node = actor, node
        self.job = self.ref = self.last_teacher = None


class RayPool:
    """``workers`` Ray actors with the given resources; the pool that :func:`study.schedule.run_jobs` drives."""

    def __init__(self, study, workers: int, threads: int, gpus: bool, marker: str):
        self.study, self.threads, self.marker = study, threads, marker
        self.options = {"num_cpus": threads} | ({"num_gpus": 1} if gpus else {})
        self.device = "cuda" if gpus else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
        self.slots: list[_Slot] = []
        self.placing: dict = {}  # ref of actor.node() -> actor
        self.last_progress = time.monotonic()
        self.start_failures = 0
        for _ in range(workers):
            self._place()

    def _place(self) -> None:
        s = self.study
        actor = StudyWorker.options(**self.options).remote(type(s), s.profile, str(s.out_dir), s.data_spec,
                                                           self.device, s.log is print, self.threads, self.marker,
                                                           os.getcwd())
        self.placing[actor.node.remote()] = actor

    def _collect(self, timeout: float) -> None:
        """Take in the actors placed within ``timeout`` seconds."""
        if not self.placing:
            return
        done, _ = ray.wait(list(self.placing), num_returns=len(self.placing), timeout=timeout)
        for ref in done:
            actor = self.placing.pop(ref)
            try:
                self.slots.append(_Slot(actor, ray.get(ref)))
                self.last_progress = time.monotonic()
            except ray.exceptions.RayError as exc:  # it could not start (a bad folder raises here)
                cause = str(exc).strip().splitlines()[-1][:300]
                if "not the driver's results folder" in str(exc):
                    raise RuntimeError(cause) from None
                self.start_failures += 1
                if self.start_failures <= MAX_START_FAILURES:
                    self.study.log(f"a worker failed to start ({cause}); placing another")
                    self._place()
                else:
                    self.study.log(f"a worker failed to start ({cause}); {MAX_START_FAILURES} have, no more placed")

    def idle(self) -> list:
        self._collect(0)
        return [s for s in self.slots if s.job is None]

    def busy(self) -> bool:
        return any(s.job is not None for s in self.slots)

    def nodes(self) -> set:
        return {s.node for s in self.slots}

    def can_place(self) -> bool:
        return bool(self.slots) or (bool(self.placing) and time.monotonic() - self.last_progress < PLACE_TIMEOUT_S)

    def submit(self, slot: _Slot, job) -> None:
        slot.job = job
        slot.ref = slot.actor.run.remote(job.label, job.spec)
        self.study.log(f"{job.label} {job.spec.run_id}: on node {slot.node[:12]}")

    def wait(self) -> list:
        busy = {s.ref: s for s in self.slots if s.job is not None}
        if not busy:  # only replacements being placed
            self._collect(timeout=min(10.0, PLACE_TIMEOUT_S))
            return []
        ray.wait(list(busy) + list(self.placing), num_returns=1, timeout=None)  # a run ended or a worker is placed
        self._collect(0)
        done, _ = ray.wait(list(busy), num_returns=len(busy), timeout=0)
        ended = []
        for ref in done:
            slot = busy[ref]
            row = death = None
            try:
                row = ray.get(ref)
            except ray.exceptions.RayError as exc:  # its actor or node died during the run
                death = f"WorkerDied: {type(exc).__name__} on node {slot.node[:12]}"
                self.slots.remove(slot)
                ray.kill(slot.actor, no_restart=True)
                self._place()
            ended.append((slot, slot.job, row, death))
            slot.job = slot.ref = None
        return ended

    def close(self) -> None:
        for actor in [s.actor for s in self.slots] + list(self.placing.values()):
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone with its node
                pass


def cluster_workers(workers, threads: int) -> tuple[int, bool]:
    """How many actors and whether they take GPUs: ``workers`` if a number, else one per GPU of the cluster, or
    one per ``threads`` CPUs of it."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if workers != "auto":
        return int(workers), gpus > 0
    return (gpus, True) if gpus else (max(1, int(resources.get("CPU", 1)) // max(1, threads)), False)


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once, in one line, where nothing listens at the Ray head's ``HOST:PORT`` (Ray itself retries its
    control store for minutes); a listening head is left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"--address {address}: expected HOST:PORT of the Ray head")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ClusterUnreachable(f"cannot join the Ray cluster at {address}: nothing answers there ({reason}); start "
                              f"it with `ray start --head --port {port}` (docs/cluster.md)") from exc


def run_on_ray(study, todo: list, execution: dict, record) -> dict:
    """Run ``todo`` on the Ray cluster at ``execution["address"]`` (None: start a local one); ``record(row)`` is
    called on the driver for every run as it ends. Returns the number of workers and the retried run ids."""
    address = execution.get("address")
    started_here = not ray.is_initialized()
    if started_here and address not in (None, "auto", "local"):
        check_reachable(address)
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=study.log is print,
                     logging_level="warning")
        except ConnectionError as exc:  # Ray's own message names neither cause below
            raise ClusterUnreachable(
                f"cannot join the Ray cluster at {address}: it is not up, or its nodes use token authentication "
                f"(`ray start` turns it on when ~/.ray/auth_token exists; a driver given an address does not): "
                f"set RAY_AUTH_MODE the same on the nodes and here (docs/cluster.md)") from exc
    study.out_dir.mkdir(parents=True, exist_ok=True)
    marker = f".driver-{secrets.token_hex(4)}"
    (study.out_dir / marker).write_text(f"{os.getpid()}\n")
    try:
        workers, gpus = cluster_workers(execution["workers"], execution["threads_per_worker"])
        workers = min(workers, max(1, len(todo)))
        pool = RayPool(study, workers, execution["threads_per_worker"], gpus, marker)
        study.log(f"Ray at {address or 'a local instance'}: {workers} worker actor(s), "
                  f"{'1 GPU' if gpus else str(execution['threads_per_worker']) + ' CPU thread(s)'} each")
        result = run_jobs(todo, pool, record, study.row_of, study.log)
        return result | {"workers": workers}
    finally:
        (study.out_dir / marker).unlink(missing_ok=True)
        if started_here:
            ray.shutdown()
