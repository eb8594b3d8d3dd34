"""The rules that hand a study's runs to workers: one copy, used by every executor (local processes in
:mod:`study.parallel`, Ray actors in :mod:`study.cluster`).

- A run is ready once every run it reads (``RunSpec.reads``: its teacher, the model it compresses) has ended.
- An idle worker takes a ready run that reads the teacher it used last, if there is one (its teacher cache stays
  warm), else the first ready run in plan order.
- A worker that dies during a run (killed, out of memory, its node lost) has that run retried once, on another
  worker where one is idle (another node where there is one); a second death records the run as failed with both
  reasons. A run that finishes after a retry says so in its row's ``error`` column.
- Only the caller records rows (``record``): workers return them; nobody else writes ``runs.csv``.

An executor supplies a pool with ``idle()`` (workers free now), ``busy()`` (whether any run is out),
``nodes()`` (the nodes its live workers are on), ``can_place()`` (whether a worker can still be started),
``submit(worker, job)``, ``wait()`` (blocks until at least one run ended: a list of ``(worker, job, row, death)``,
``row`` None and ``death`` the reason when the worker died; the pool replaces a dead worker itself) and ``close()``.
A worker has ``last_teacher`` and ``node`` attributes.
"""
from __future__ import annotations

import dataclasses

from study.plan import RunSpec

RETRIES = 1  # a run whose worker died is tried this many more times


@dataclasses.dataclass
class Job:
    label: str
    spec: RunSpec
    deaths: list = dataclasses.field(default_factory=list)  # (node, reason) of each attempt whose worker died


def ready(pending: list[Job], unfinished: set[str]) -> list[Job]:
    """The pending jobs whose every read run has ended, in plan order."""
    return [j for j in pending if not any(r in unfinished for r in j.spec.reads())]


def choose(candidates: list[Job], worker, live_nodes: set) -> Job | None:
    """The job ``worker`` should take from ``candidates`` (ready jobs, plan order), or None to leave it idle: a
    retried job does not go back to the node it died on while a worker lives on another node (``live_nodes``)."""
    usable = [j for j in candidates if not j.deaths or j.deaths[-1][0] != worker.node or live_nodes <= {worker.node}]
    if not usable:
        return None
    warm = [j for j in usable if worker.last_teacher and worker.last_teacher in j.spec.reads()]
    return (warm or usable)[0]


def run_jobs(todo: list[tuple[str, RunSpec]], pool, record, row_of, log=print) -> dict:
    """Run ``todo`` ((label, spec) pairs in plan order) on ``pool``; ``record(row)`` is called here for every run
    as it ends; ``row_of(spec)`` gives a run's identifying columns, to which a run that could not finish adds
    ``status: failed`` and the reason. Returns ``{"retried": [run ids]}``."""

    def failed_row(spec: RunSpec, message: str) -> dict:
        return row_of(spec) | {"status": "failed", "error": message}

    pending = [Job(label, spec) for label, spec in todo]
    unfinished = {j.spec.run_id for j in pending}
    retried = []
    try:
        while pending or pool.busy():
            for worker in pool.idle():
                job = choose(ready(pending, unfinished), worker, pool.nodes())
                if job is not None:
                    pending.remove(job)
                    pool.submit(worker, job)
            if not pool.busy():
                if not pool.can_place():  # every worker gone and none can be placed again
                    for job in pending:
                        record(failed_row(job.spec, "NoWorker: no worker left to run it (every worker died and "
                                                    "none could be placed again)"))
                    return {"retried": retried}
                if not pool.idle():  # replacements being placed
                    pool.wait()
                    continue
                for job in pending:  # cannot happen: a run only waits on runs of this list, which have no cycles
                    record(failed_row(job.spec, "Unschedulable: waits on a run that never ends"))
                return {"retried": retried}
            for worker, job, row, death in pool.wait():
                if row is None:
                    job.deaths.append((worker.node, death))
                    if len(job.deaths) <= RETRIES:
                        log(f"{job.label} {job.spec.run_id}: worker died ({death}); retried once")
                        retried.append(job.spec.run_id)
                        pending.insert(0, job)
                        continue
                    row = failed_row(job.spec, "; ".join(d for _, d in job.deaths))
                elif job.deaths and row.get("status") == "ok":
                    row = dict(row, error="ok on retry after: " + "; ".join(d for _, d in job.deaths))
                record(row)
                unfinished.discard(job.spec.run_id)
                worker.last_teacher = job.spec.hparams.get("teacher_run") or worker.last_teacher
    finally:
        pool.close()
    return {"retried": retried}
