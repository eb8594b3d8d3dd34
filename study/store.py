"""The results store: one ``runs.csv`` row per finished or failed run, keyed by ``run_id``; one
``executions.csv`` row per ``study run`` that executed anything (when, how, how long).

Rows are upserted and the file rewritten atomically (temp file + rename), so a study killed at any moment leaves a
valid CSV with every run that had finished, and a rerun never duplicates a row.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

COLUMNS = ["run_id", "profile", "dataset", "detector", "backbone", "method", "hparams", "seed", "params",
           "adapter_params", "gflops", "proposals_counted", "size_mb", "cpu_ms", "cpu_ms_iqr", "gpu_ms", "map", "map50", "map75",
           "map_small", "map_medium", "map_large", "per_class_ap", "val_map", "best_epoch", "train_s", "wall_s",
           "device",
           "status", "error", "details"]


def read_runs(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def upsert_run(path: Path, row: dict) -> None:
    path = Path(path)
    rows = read_runs(path)
    at = next((i for i, r in enumerate(rows) if r["run_id"] == row["run_id"]), len(rows))
    rows[at:at + 1] = [row]  # a new row goes last; an updated one keeps its place
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    os.replace(tmp, path)


EXECUTION_COLUMNS = ["started", "profile", "runs_planned", "runs_executed", "workers", "threads_per_run", "device",
                     "wall_s"]


def append_execution(path: Path, row: dict) -> None:
    path = Path(path)
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EXECUTION_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
