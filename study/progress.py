"""Study-level progress: runs done of total, time elapsed and an estimate of the time left, one line per finished
run (reads well in a log).

The estimate comes from the epoch times the study has measured so far, in this execution and in the earlier ones
that left rows in the same ``runs.csv`` (a resumed study knows its teachers' rates before any of this execution's
runs finish; rows from another machine would mislead it): each finished run gives seconds per epoch (its ``train_s`` over its epochs) for its kind, (detector, backbone, distilled or not); a run still to do
costs its epochs times its kind's rate, or the mean rate of its detector's measured kinds where its own kind has
not run yet (distillation adds the teacher's cost, so a distilled kind never borrows a plain one's rate alone: it
takes its backbone's plain rate times the distilled-over-plain ratio measured on another backbone, or
:data:`DISTILLED_OVER_PLAIN` before any), else the mean rate of its detector's measured kinds; runs that train
nothing (int8, fp16) count as one epoch. The sum is divided by the number of runs at once.
"""
from __future__ import annotations

import json
import statistics
import time

from study.plan import RunSpec


DISTILLED_OVER_PLAIN = 2.0  # a distilled epoch in plain epochs, until the study has measured one (docs/decisions.md)


def epochs_of(spec_or_hparams) -> int:
    """Training epochs of a run: its role's, a pruned model's fine-tuning, 1 for a run that trains nothing."""
    hp = spec_or_hparams.hparams if isinstance(spec_or_hparams, RunSpec) else spec_or_hparams
    if "compress" in hp:
        return max(1, int(hp["compress"].get("finetune_epochs", 1)))
    return max(1, int(hp.get("role", {}).get("epochs", 1)))


def kind_of(detector: str, backbone: str, hp: dict) -> tuple:
    return detector, backbone, "teacher_run" in hp


def rates(rows: list[dict]) -> dict[tuple, float]:
    """Seconds per epoch per kind, the mean over the finished (ok) rows that have a training time."""
    by_kind: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("status") != "ok" or not r.get("train_s"):
            continue
        hp = json.loads(r["hparams"] or "{}")
        by_kind.setdefault(kind_of(r["detector"], r["backbone"], hp), []).append(float(r["train_s"]) / epochs_of(hp))
    return {k: statistics.fmean(v) for k, v in by_kind.items()}


def seconds_left(todo: list[RunSpec], measured: dict[tuple, float], workers: int) -> float | None:
    """The estimated wall seconds of ``todo`` on ``workers`` runs at once; None while some run's detector has no
    measured rate at all."""
    total = 0.0
    for spec in todo:
        key = kind_of(spec.detector, spec.backbone, spec.hparams)
        rate = measured.get(key)
        plain = measured.get((key[0], key[1], False))
        if rate is None and key[2] and plain is not None:
            ratios = [v / measured[(k[0], k[1], False)] for k, v in measured.items()
                      if k[0] == key[0] and k[2] and (k[0], k[1], False) in measured]
            rate = plain * (statistics.fmean(ratios) if ratios else DISTILLED_OVER_PLAIN)
        if rate is None:
            same = [v for k, v in measured.items() if k[0] == spec.detector and k[2] == key[2]]
            same = same or [v for k, v in measured.items() if k[0] == spec.detector]
            if not same:
                return None
            rate = statistics.fmean(same)
        total += rate * epochs_of(spec)
    return total / max(1, workers)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class Progress:
    """Counts finished runs of an execution and logs one progress line after each."""

    def __init__(self, todo: list[RunSpec], total: int, done_before: int, workers: int, log=print,
                 earlier: list[dict] = ()):
        """``earlier``: rows finished before this execution (their training times count in the estimate)."""
        self.left = {s.run_id: s for s in todo}
        self.total, self.done, self.workers, self.log = total, done_before, workers, log
        self.rows: list[dict] = [r for r in earlier if r["run_id"] not in self.left]
        self.started = time.perf_counter()

    def finished(self, row: dict) -> None:
        self.left.pop(row["run_id"], None)
        self.done += 1
        self.rows.append(row)
        elapsed = time.perf_counter() - self.started
        left = seconds_left(list(self.left.values()), rates(self.rows), self.workers)
        eta = ("done" if not self.left else "time left not yet known (no run of every detector finished)"
               if left is None else f"about {_duration(left)} left (from the epoch times measured so far)")
        self.log(f"progress: {self.done} of {self.total} runs, {_duration(elapsed)} elapsed, {eta}")
