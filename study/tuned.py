"""The tuned comparison: every method searched with the same budget, then fresh seeds, in one resumable command.

Protocol (written into the report): on the validation split, with a search seed that no final row uses,
1. ``baseline`` searches the settings every row shares (learning rate, weight decay, epochs up to the profile's
   cap) with a budget of ``tuning.budget_epochs`` training epochs;
2. each distillation method searches its own settings on top of the baseline's best shared settings, with the same
   budget in epochs and the same pruner (a pruned trial counts the epochs it ran; none is judged before epoch
   ``tuning.min_epochs``, when validation mAP starts to order trials) and tries its default first;
3. the final rows train, with the profile's seeds (paired over teacher x seed cells as in every study), the baseline
   and every method twice with the shared settings: at its default weights (``hinton``) and at its searched ones
   (``hinton@tuned``), so both are compared with the same baseline rows. Each method's search tries its default
   first; where that trial stays the best, the tuned row is the default row (not trained twice).
Searches live in Optuna storage in the results folder (SQLite) and finished runs in its runs.csv, so a killed
command continues where it stopped. The methods' searches (step 2) are independent and go to the profile's worker
processes, one method per worker; each search is serial in itself, so its trials do not depend on the timing of
others (Optuna's sampler sees the same history in every rerun).
"""
from __future__ import annotations

import copy
import json
import multiprocessing as mp
from pathlib import Path

import torch

from study.errors import StudyError
from study.report import write_report
from study.parallel import worker_count
from study.plan import TUNED_SUFFIX, detector_config, plan_runs
from study.runner import Study
from study.search import best_distill, budget_summary, search
from study.store import read_study_rows


def tuned_profile(profile: dict, tuned: dict[str, dict]) -> dict:
    """``profile`` with a ``method@tuned`` row beside every distillation method of a detector that has one in
    ``tuned`` (the searches' results per detector; a method whose default stayed best has none)."""
    p = copy.deepcopy(profile)
    for detector in p["detectors"]:
        methods = detector_config(p, detector)["methods"]
        extended = methods + [m + TUNED_SUFFIX for m in methods if m not in ("baseline", "baseline-long")
                              and not m.endswith(TUNED_SUFFIX)
                              and m + TUNED_SUFFIX in tuned.get(detector, {})]
        if detector == "faster_rcnn":
            p["methods"] = extended
        else:
            p[detector]["methods"] = extended
    return p


def run_tuned(profile: dict, out: Path, data_spec: str | None = None, device: str | None = None,
              storage: str | None = None, log=print, reuse: list | None = None) -> Path:
    """Search every method (same budget), then train the final rows; returns REPORT.md. ``reuse``: results folders
    whose finished runs of the profile's plan (its teachers) are copied first (:func:`study.store.reuse_runs`)."""
    cfg, out = profile["tuning"], Path(out)
    if cfg["search_seed"] in profile["seeds"]:
        raise StudyError(f"tuning.search_seed {cfg['search_seed']} is also a final seed {profile['seeds']}: "
                         "a search seed must never report")
    runner = Study(profile, out, data_spec, device, progress=False, log=log)  # only the teachers: every student row
    runner.reuse(reuse or [], specs=[s for s in plan_runs(profile, runner.data().name) if s.role == "teacher"])
    tuned, budgets = {}, {}
    for detector in profile["detectors"]:
        methods = [m for m in detector_config(profile, detector)["methods"] if m not in ("baseline", "baseline-long")]
        common = dict(storage_url=storage, data_spec=data_spec, device=device, pruner=cfg["pruner"], log=log,
                      detector=detector, budget_epochs=cfg["budget_epochs"], seed=cfg["search_seed"])
        base = search(profile, "baseline", None, out, **common)
        shared = best_distill(base)
        found, spent = {"baseline": shared}, {"baseline": budget_summary(base)}
        jobs = [(profile, method, out, common, shared) for method in methods]
        workers = min(worker_count(profile["execution"], torch.device(device or "cpu")), len(jobs))
        if workers > 1:  # the methods' searches are independent: one per worker process, each serial in itself
            log(f"searching {len(jobs)} methods on {workers} worker processes")
            with mp.get_context("spawn").Pool(workers, _init_worker,
                                              (profile["execution"]["threads_per_worker"],)) as pool:
                results = pool.map(_search_method, [(*j[:3], dict(j[3], log=None), j[4]) for j in jobs], chunksize=1)
        else:
            results = [_search_method(job) for job in jobs]
        for method, best, budget in results:
            spent[method] = budget | {"best_trial": best["source"]["trial"], "default_best": bool(
                best["source"].get("default"))}
            if not best["source"].get("default"):  # else its tuned row would train the default row again
                found[method + TUNED_SUFFIX] = best
        tuned[detector], budgets[detector] = found, spent
    final = tuned_profile(profile, tuned)
    runner = Study(final, out, data_spec, device, progress=False, log=log)
    runner.run(plan_runs(final, runner.data().name, tuned))
    (out / "tuning.json").write_text(json.dumps({"protocol": __doc__, "settings": cfg, "final_seeds": profile["seeds"],
                                                 "teacher_seeds": profile["teacher_seeds"], "found": tuned,
                                                 "budgets": budgets}, indent=1, default=str))
    return write_tuned_report(runner.runs_csv, out)


def write_tuned_report(runs_csv: Path, out: Path) -> Path:
    """The study's report (:func:`study.report.write_report`) with the tuning section appended, read from the
    ``tuning.json`` the tuned command wrote beside ``runs_csv``; returns REPORT.md."""
    tuning = json.loads((Path(runs_csv).parent / "tuning.json").read_text())
    report = write_report(runs_csv, out)
    report.write_text(report.read_text() + tuning_markdown(read_study_rows(runs_csv), tuning["budgets"],
                                                           tuning["settings"]))
    return report


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _search_method(job: tuple) -> tuple[str, dict, dict]:
    """One method's search (in a worker process, ``log`` None: it prints nothing); its best settings and budget."""
    profile, method, out, common, shared = job
    common = dict(common, log=common["log"] or (lambda *_: None))
    st = search(profile, method, None, out, shared=shared, **common)
    return method, best_distill(st), budget_summary(st)


def tuning_markdown(rows: list[dict], budgets: dict, cfg: dict) -> str:
    """Per method: its default-weight and tuned Δ against the same baseline rows, and the budget it spent."""
    from study.groups import group_runs
    from study.report import table_rows

    table = {(r["detector"], r["method"]): r for r in table_rows(group_runs(rows), rows)}
    lines = ["", "## Tuning (equal budget per method, then fresh seeds)", "",
             f"Each method, the baseline included, searched on the validation split with a budget of "
             f"{cfg['budget_epochs']} training epochs (pruner: {cfg['pruner']}, judging no trial before epoch "
             f"{cfg['min_epochs']}; a pruned trial counts what it ran; a search stops starting trials once it has spent "
             "the budget, so it may overrun by part of one trial), "
             f"student seed {cfg['search_seed']} (no final row uses it); the baseline's search chose the settings every "
             "final row shares, the methods searched their own on top, each trying its default weights first. Δ against "
             "the same `baseline` rows, Holm "
             "over the rows of a detector.", "",
             "| Detector | Method | Default-weight Δ (pts) [95% CI] | Tuned Δ (pts) [95% CI] | Trials (pruned) | "
             "Epochs spent (of them pruned) |", "|---|---|---|---|---|---|"]

    def delta(row) -> str:
        p = (row or {}).get("paired")
        if not p or p["low"] is None:
            return "–"
        return f"{p['mean'] * 100:+.2f} [{p['low'] * 100:+.2f}, {p['high'] * 100:+.2f}], {p.get('verdict', '')}"

    for detector, spent in budgets.items():
        for method, b in spent.items():
            tuned = ("the default (trial 0) was the best trial: the default row" if b.get("default_best") else
                     delta(table.get((detector, method + TUNED_SUFFIX))))
            lines.append(f"| {detector} | {method} | {delta(table.get((detector, method)))} | {tuned} | "
                         f"{b['trials']} ({b['pruned']}) | {b['epochs']} ({b['pruned_epochs']}) |")
    return "\n".join(lines) + "\n"
