"""A replication of a study: the same rows rerun with disjoint seeds (and teacher seeds), compared row by row.

For every row of the original: its mean test mAP with the 95% t-interval of that mean, the replicate's mean, and
whether the replicate lies inside the interval; for every compared row, the Holm-corrected verdict against
``baseline`` in both studies, and whether it flipped between a significant gain and a significant loss (which
would mean the design cannot be trusted yet).
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from study.errors import StudyError
from study.report import group_runs, table_rows
from study.stats import holm, paired_summary, t_quantile
from study.store import read_study_rows

OPPOSITE = {"significant gain": "significant loss", "significant loss": "significant gain"}


def mean_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """Mean and 95% t-interval of the mean (None without two values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = t_quantile(0.95, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def compare(original: list[dict], replicate: list[dict]) -> list[dict]:
    """One dict per row of the original that the replicate also has (teachers and students alike)."""
    seen_seeds = {(r["detector"], r["method"], r["seed"]) for r in original}
    overlap = [r["run_id"] for r in replicate if (r["detector"], r["method"], r["seed"]) in seen_seeds]
    if overlap:
        raise StudyError(f"the replicate reuses seeds of the original (first: {overlap[0]}); use disjoint seeds")
    groups_o, groups_r = group_runs(original), group_runs(replicate)
    rows_o = {(r["detector"], r["backbone"], r["method"]): r for r in table_rows(groups_o, original)}
    rows_r = {(r["detector"], r["backbone"], r["method"]): r for r in table_rows(groups_r, replicate)}
    out = []
    for g in groups_o:
        key = (g.detector, g.backbone, g.method)
        rep = next((h for h in groups_r if (h.detector, h.backbone, h.method) == key), None)
        if rep is None or not g.ok or not rep.ok:
            continue
        mean, low, high = mean_interval(g.values("map"))
        rep_mean = rep.mean("map")
        verdict_o = (rows_o[key].get("paired") or {}).get("verdict")
        verdict_r = (rows_r[key].get("paired") or {}).get("verdict")
        out.append({"detector": g.detector, "backbone": g.backbone, "method": g.method, "n": len(g.ok),
                    "n_rep": len(rep.ok), "mean": mean, "low": low, "high": high, "rep_mean": rep_mean,
                    "inside": None if low is None else low <= rep_mean <= high,
                    "delta": rows_o[key]["delta"], "rep_delta": rows_r[key]["delta"],
                    "verdict": verdict_o, "rep_verdict": verdict_r,
                    "flipped": verdict_o is not None and OPPOSITE.get(verdict_o) == verdict_r})
    return out


def pooled(studies: list[list[dict]], reference: str = "baseline") -> list[dict]:
    """Both studies together, with the teacher as the unit: for each distilled row, every run's paired difference
    from ``reference`` (``baseline``, or ``baseline-long``: the compute control) of the same seed in its own study,
    averaged per teacher run; the mean over teachers with its 95% t-interval (k − 1 df for k teachers) and Holm over
    the rows of a detector. A row without a teacher (``baseline-long`` against ``baseline``) has the seed as its
    unit; against ``baseline-long`` only the distilled rows are compared. Teachers, not cells, are the unit because
    a method's effect varies with the teacher it reads, and one study's two teachers cannot show how much."""
    skip = {"teacher", "baseline", reference}
    units: dict[tuple, dict] = {}
    for i, rows in enumerate(studies):
        ok = [r for r in rows if r["status"] == "ok"]
        base = {(r["detector"], r["seed"]): float(r["map"]) for r in ok if r["method"] == reference}
        for r in ok:
            if r["method"] in skip or (r["detector"], r["seed"]) not in base:
                continue
            teacher = json.loads(r["hparams"]).get("teacher_run")
            unit = (i, "teacher", teacher) if teacher else (i, "seed", r["seed"])
            units.setdefault((r["detector"], r["method"]), {}).setdefault(unit, []).append(
                float(r["map"]) - base[(r["detector"], r["seed"])])
    out = []
    for (detector, method), per_unit in units.items():
        if {unit[0] for unit in per_unit} != set(range(len(studies))):
            continue  # a row that only one study has
        summary = paired_summary([statistics.fmean(v) for v in per_unit.values()])
        out.append({"detector": detector, "method": method, "unit": next(iter(per_unit))[1],
                    "runs": sum(len(v) for v in per_unit.values())} | summary)
    for detector in {r["detector"] for r in out}:
        adjusted = holm({r["method"]: r["p"] for r in out if r["detector"] == detector})
        for r in out:
            if r["detector"] == detector and r["method"] in adjusted:
                r |= {"p_adj": adjusted[r["method"]]["p_adj"], "verdict": "not significant" if not adjusted[
                    r["method"]]["reject"] else "significant gain" if r["mean"] > 0 else "significant loss"}
    return out


def write_replication(original_dir: Path, replicate_dir: Path, out: Path, command: str) -> Path:
    """Write the comparison as markdown to ``out`` and return its path."""
    original = read_study_rows(Path(original_dir) / "runs.csv")
    replicate = read_study_rows(Path(replicate_dir) / "runs.csv")
    rows = compare(original, replicate)
    seeds = lambda rs, teacher: sorted({int(r["seed"]) for r in rs if (r["method"] == "teacher") == teacher})
    inside = [r for r in rows if r["inside"] is not None]
    flips = [r for r in rows if r["flipped"]]
    fmt = lambda v: "–" if v is None else f"{v:+.1f}"
    lines = [f"# Replication of {Path(original_dir).name}", "",
             f"Command: `{command}`", "",
             f"- original: {Path(original_dir)} (student seeds {seeds(original, False)}, teacher seeds "
             f"{seeds(original, True)}); replicate: {Path(replicate_dir)} (student seeds {seeds(replicate, False)}, "
             f"teacher seeds {seeds(replicate, True)}): no seed shared",
             f"- replicate mean inside the original's 95% interval of the mean: {sum(r['inside'] for r in inside)} of "
             f"{len(inside)} rows",
             f"- verdicts (Holm-corrected, against `baseline`) flipped between significant gain and significant loss: "
             f"{len(flips)}" + ("" if not flips else " (" + ", ".join(f"{r['detector']} {r['method']}"
                                                                    for r in flips) + ")"), "",
             "| Detector | Backbone | Method | Original mAP (n) | 95% CI of the mean | Replicate mAP (n) | Inside | "
             "Original Δ (pts), verdict | Replicate Δ (pts), verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "–" if r["low"] is None else f"[{r['low']:.3f}, {r['high']:.3f}]"
        inside_text = "–" if r["inside"] is None else "yes" if r["inside"] else "**no**"
        lines.append(f"| {r['detector']} | {r['backbone']} | {r['method']} | {r['mean']:.3f} ({r['n']}) | {ci} | "
                     f"{r['rep_mean']:.3f} ({r['n_rep']}) | {inside_text} | {fmt(r['delta'])}, "
                     f"{r['verdict'] or '–'} | {fmt(r['rep_delta'])}, {r['rep_verdict'] or '–'} |")
    for reference in ("baseline", "baseline-long"):
        both = pooled([original, replicate], reference)
        if not both:
            continue
        lines += ["", "## Both studies pooled, the teacher as the unit" + (
                      "" if reference == "baseline" else ": against `baseline-long` (the compute control)"), "",
                  f"Each run's difference from `{reference}` of the same seed in its own study, averaged per teacher; "
                  "the mean over the teachers of both studies with its 95% t-interval (k − 1 df); Holm over the rows "
                  "of a detector." + (" `baseline-long` reads no teacher: its unit is the seed."
                                      if reference == "baseline" else ""), "",
                  "| Detector | Method | Units (runs) | Δ (pts) | 95% CI | p | Holm p | Verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sorted(both, key=lambda r: (r["detector"], r["method"])):
            ci = "–" if r["low"] is None else f"[{r['low'] * 100:+.2f}, {r['high'] * 100:+.2f}]"
            p = lambda v: "–" if v is None else f"{v:.3g}"
            lines.append(f"| {r['detector']} | {r['method']} | {r['n']} {r['unit']}s ({r['runs']}) | "
                         f"{r['mean'] * 100:+.2f} | {ci} | {p(r['p'])} | {p(r.get('p_adj'))} | "
                         f"{r.get('verdict', '–')} |")
    out = Path(out)
    out.write_text("\n".join(lines) + "\n")
    return out
