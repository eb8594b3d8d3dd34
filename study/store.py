"""The results store: one ``runs.csv`` row per finished or failed run, keyed by ``run_id``; one
``executions.csv`` row per ``study run`` that executed anything (when, how, how long).

Rows are upserted and the file rewritten atomically (temp file + rename), so a study killed at any moment leaves a
valid CSV with every run that had finished, and a rerun never duplicates a row.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

from study.errors import MissingInput, StudyError

COLUMNS = ["run_id", "profile", "dataset", "detector", "backbone", "method", "hparams", "seed", "params",
           "adapter_params", "gflops", "proposals_counted", "size_mb", "cpu_ms", "cpu_ms_iqr", "gpu_ms", "map", "map50",
           "map75", "map_small", "map_medium", "map_large", "per_class_ap", "val_map", "best_epoch", "val_curve",
           "train_s", "wall_s", "device", "status", "error", "details",
           # the latency pass's runtime (study.latency_pass): ``cpu_ms`` is that runtime's; with ONNX Runtime, PyTorch
           # eager's beside it, the exported model's size and its test mAP (the export check)
           "runtime", "eager_ms", "onnx_mb", "onnx_map",
           "id_scheme"]  # how the run id was made (study.plan.ID_SCHEME; empty in rows from before it: scheme 1)


def val_curve(history: list[dict]) -> str:
    """A run's validation curve for its row: JSON ``[[epoch, mAP], ...]`` of the epochs it validated (4 digits)."""
    return json.dumps([[h["epoch"], round(h["val_map"], 4)] for h in history if h.get("val_map") is not None],
                      separators=(",", ":"))


def read_curve(row: dict) -> list[tuple[int, float]]:
    """The ``(epoch, validation mAP)`` pairs of a row's ``val_curve`` (empty where the row has none)."""
    return [(int(e), float(v)) for e, v in json.loads(row.get("val_curve") or "[]")]


def read_runs(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


REQUIRED = ("run_id", "detector", "backbone", "method", "seed", "status")  # what a row cannot be read without


def read_study_rows(path: Path) -> list[dict]:
    """A runs.csv for reports: every row with every column of :data:`COLUMNS` (missing optional ones empty).
    Raises :class:`MissingInput` or :class:`StudyError` with a one-line message naming the file (and line) on a missing file, an
    empty one, a missing required column or a row without a run id, seed or status."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: no such runs file")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise StudyError(f"{path}: missing column(s) {', '.join(missing)} (a runs.csv needs {', '.join(REQUIRED)})")
        rows = []
        for line, row in enumerate(reader, 2):
            bad = [c for c in ("run_id", "seed", "status") if not (row.get(c) or "").strip()]
            if not bad and not row["seed"].strip().lstrip("-").isdigit():
                bad = ["seed (not an integer)"]
            if bad:
                raise StudyError(f"{path}: line {line}: empty or bad {', '.join(bad)}")
            rows.append({c: "" for c in COLUMNS} | {k: v for k, v in row.items() if k is not None})
    if not rows:
        raise StudyError(f"{path}: no runs in the file")
    return rows


def upsert_run(path: Path, row: dict) -> None:
    upsert_runs(path, [row])


def upsert_runs(path: Path, new_rows: list[dict]) -> None:
    """Write ``new_rows`` into ``path`` in one atomic rewrite: a new row goes last, an updated one keeps its
    place."""
    path = Path(path)
    rows = read_runs(path)
    for row in new_rows:
        at = next((i for i, r in enumerate(rows) if r["run_id"] == row["run_id"]), len(rows))
        rows[at:at + 1] = [row]
    _rewrite(path, rows, COLUMNS)


def _rewrite(path: Path, rows: list[dict], columns: list[str]) -> None:
    """``rows`` as ``path`` with ``columns`` (missing or None values empty), atomically: temp file, then rename."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    os.replace(tmp, path)


def cell(row: dict) -> tuple:
    """The table cell a run fills: (dataset, detector, backbone, method, seed), from a row (or a spec's fields)."""
    keys = ("dataset", "detector", "backbone", "method", "seed")
    return tuple("" if row.get(k) is None else str(row[k]) for k in keys)  # (seed 0 is a seed, not a blank)


def retire_superseded(path: Path, planned: dict[tuple, str]) -> list[dict]:
    """Move the rows of ``path`` (a runs.csv) that fill a cell the plan fills with another run, i.e. the same
    (dataset, detector, backbone, method, seed) trained with other settings, into ``superseded.csv`` beside it (kept,
    appended), so that a study whose settings changed reports only its current runs. ``planned``: cell -> the run
    id the plan puts there. Rows of cells the plan does not fill (another profile's rows in a shared folder) stay.
    Returns the rows moved."""
    path = Path(path)
    keep, old = [], []
    for r in read_runs(path):
        (keep if planned.get(cell(r), r["run_id"]) == r["run_id"] else old).append(r)
    if old:
        archive = path.with_name("superseded.csv")
        _rewrite(archive, read_runs(archive) + old, COLUMNS)
        _rewrite(path, keep, COLUMNS)
    return old


EXECUTION_COLUMNS = ["started", "profile", "runs_planned", "runs_executed", "executor", "workers", "threads_per_run",
                     "device", "wall_s", "retried", "cpu_id"]


def append_execution(path: Path, row: dict) -> None:
    """Add one row to ``executions.csv`` (rewritten with the current columns if it has older ones)."""
    path = Path(path)
    _rewrite(path, read_runs(path) + [row], EXECUTION_COLUMNS)


def reuse_runs(source: Path, out: Path, run_ids: set[str]) -> list[str]:
    """Copy the finished (``ok``) runs of the results folder ``source`` whose ids are in ``run_ids`` and that ``out``
    has not finished: their rows into ``out/runs.csv`` and their folders (without ``last.pt``, a resume point only)
    into ``out/runs/``. A run id names its whole spec (data, seeds, settings) and a run is deterministic given it,
    so the copy is the run that would be trained here. A row whose folder is missing in ``source`` (a fresh clone
    has rows but no checkpoints) is copied alone; the resume rule then retrains it if another run reads it. Each
    row keeps its ``profile`` (the study that trained it). Returns the ids copied."""
    source, out = Path(source), Path(out)
    if not (source / "runs.csv").is_file():
        raise MissingInput(f"{source / 'runs.csv'}: no runs to reuse")
    have = {r["run_id"] for r in read_runs(out / "runs.csv") if r["status"] == "ok"}
    rows = [r for r in read_runs(source / "runs.csv")
            if r["status"] == "ok" and r["run_id"] in run_ids and r["run_id"] not in have]
    for row in rows:
        folder = source / "runs" / row["run_id"]
        if folder.is_dir():
            shutil.copytree(folder, out / "runs" / row["run_id"], ignore=shutil.ignore_patterns("last.pt"),
                            dirs_exist_ok=True)
    if rows:
        out.mkdir(parents=True, exist_ok=True)
        upsert_runs(out / "runs.csv", rows)
    return [r["run_id"] for r in rows]
