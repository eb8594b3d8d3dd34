"""Paper tables and figures from a ``runs.csv`` alone (so merged files from several machines work too).

Writes into ``out``: ``table.md``, ``table.tex`` (booktabs), ``table.csv``, ``stats.md`` (paired differences against
``baseline`` with 95% t-intervals), the figures (PNG and PDF) and ``REPORT.md`` embedding them.
"""
from __future__ import annotations

import csv
import json
import math
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from study.store import read_runs

# t quantiles t_{0.975, df} for the 95% interval of a mean (df = n - 1); beyond 30, the normal value.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042}
COST_COLUMNS = (("params", "Params (M)", 1e-6), ("gflops", "GFLOPs", 1.0), ("size_mb", "Size (MB)", 1.0),
                ("cpu_ms", "CPU ms", 1.0))


def t975(df: int) -> float:
    if df in T975:
        return T975[df]
    smaller = [k for k in T975 if k < df]
    return T975[max(smaller)] if df <= 30 else 1.960


@dataclass
class Group:
    detector: str
    backbone: str
    method: str
    ok: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    def values(self, column: str) -> list[float]:
        return [float(r[column]) for r in self.ok if r.get(column) not in (None, "")]

    def mean(self, column: str) -> float | None:
        v = self.values(column)
        return statistics.fmean(v) if v else None

    def std(self, column: str) -> float | None:
        v = self.values(column)
        return statistics.stdev(v) if len(v) > 1 else (0.0 if v else None)

    def by_seed(self, column: str) -> dict[int, float]:
        return {int(r["seed"]): float(r[column]) for r in self.ok}


def group_runs(rows: list[dict]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in rows:
        key = (r["detector"], r["backbone"], r["method"])
        g = groups.setdefault(key, Group(*key))
        (g.ok if r["status"] == "ok" else g.failed).append(r)
    first_seen = {key: i for i, key in enumerate(groups)}
    teachers = {(d, b) for d, b, m in groups if m == "teacher"}

    def order(g: Group) -> tuple:  # teacher, baseline, distilled students, then compressed teachers
        role = {"teacher": 0, "baseline": 1}.get(g.method, 3 if (g.detector, g.backbone) in teachers else 2)
        return g.detector, role, g.backbone, first_seen[(g.detector, g.backbone, g.method)]

    return sorted(groups.values(), key=order)


def paired_difference(method: Group, baseline: Group, column: str = "map") -> dict:
    """Mean of (method - baseline) over the seeds both finished, with its 95% t-interval."""
    m, b = method.by_seed(column), baseline.by_seed(column)
    diffs = [m[s] - b[s] for s in sorted(set(m) & set(b))]
    out = {"n": len(diffs), "mean": statistics.fmean(diffs) if diffs else None, "low": None, "high": None}
    if len(diffs) > 1:
        half = t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    out["significant"] = out["low"] is not None and (out["low"] > 0 or out["high"] < 0)
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points (cost, accuracy) that no other point beats: cost <= and accuracy >=, one strictly."""
    front = []
    for i, (c, a) in enumerate(points):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def table_rows(groups: list[Group]) -> list[dict]:
    """One dict per group with the numbers every table format shows."""
    # the reference of a row: its backbone's student trained alone, or (for compressed teachers) the teacher
    baselines = {(g.detector, g.backbone): g for g in groups if g.method == "teacher"}
    baselines |= {(g.detector, g.backbone): g for g in groups if g.method == "baseline"}
    rows = []
    for g in groups:
        row = {"detector": g.detector, "backbone": g.backbone, "method": g.method, "seeds": len(g.ok),
               "failed": len(g.failed)}
        for col, _, scale in COST_COLUMNS:
            mean = g.mean(col)
            row[col] = None if mean is None else mean * scale
        for col in ("map", "map50"):
            row[col], row[col + "_std"] = g.mean(col), g.std(col)
        base = baselines.get((g.detector, g.backbone))
        row["delta"] = row["delta_pct"] = row["exceeds_spread"] = None
        if base is not None and g.method not in ("baseline", "teacher") and g.ok and base.ok:
            row["delta"] = (row["map"] - base.mean("map")) * 100  # mAP points
            row["delta_pct"] = (row["map"] / base.mean("map") - 1) * 100 if base.mean("map") else None
            if len(g.ok) > 1 and len(base.ok) > 1:  # a spread needs at least two seeds on both sides
                row["exceeds_spread"] = abs(row["map"] - base.mean("map")) > max(g.std("map"), base.std("map"))
            row["paired"] = paired_difference(g, base)
        rows.append(row)
    return rows


def _best(rows: list[dict], col: str, higher: bool):
    values = [r[col] for r in rows if r["method"] != "teacher" and r[col] is not None]
    return (max if higher else min)(values) if values else None


def _fmt(row: dict, col: str, bold: bool, tex: bool) -> str:
    v = row.get(col)
    if v is None:
        return "–"
    if col in ("map", "map50"):
        s = f"{v:.3f} ± {row[col + '_std']:.3f}" if not tex else f"{v:.3f} $\\pm$ {row[col + '_std']:.3f}"
    elif col == "params":
        s = f"{v:.2f}"
    else:
        s = f"{v:.2f}" if v < 100 else f"{v:.0f}"
    if bold:
        s = f"\\textbf{{{s}}}" if tex else f"**{s}**"
    return s


def _delta(row: dict) -> tuple[str, str, str]:
    if row["delta"] is None:
        return "–", "–", "–"
    pct = "–" if row["delta_pct"] is None else f"{row['delta_pct']:+.1f}%"
    spread = "–" if row["exceeds_spread"] is None else "yes" if row["exceeds_spread"] else "no"
    return f"{row['delta']:+.1f}", pct, spread


HEADERS = ["Detector", "Backbone", "Method", "Params (M)", "GFLOPs", "Size (MB)", "CPU ms", "mAP", "AP50",
           "Δ mAP (pts)", "Δ mAP (%)", "|Δ| > seed spread", "Seeds", "Failed"]
NUMERIC = [("params", False), ("gflops", False), ("size_mb", False), ("cpu_ms", False), ("map", True), ("map50", True)]


def _cells(rows: list[dict], tex: bool) -> list[list[str]]:
    best = {col: _best(rows, col, higher) for col, higher in NUMERIC}
    out = []
    for r in rows:
        cells = [r["detector"], r["backbone"], r["method"]]
        cells += [_fmt(r, col, r["method"] != "teacher" and r[col] is not None and r[col] == best[col], tex)
                  for col, _ in NUMERIC]
        cells += list(_delta(r)) + [str(r["seeds"]), str(r["failed"])]
        out.append(cells)
    return out


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c) + " |" for c in _cells(rows, tex=False)]
    return "\n".join(lines) + "\n"


def latex_table(rows: list[dict]) -> str:
    esc = lambda s: (s.replace("%", "\\%").replace("_", "\\_").replace("|Δ|", "$|\\Delta|$")
                     .replace("Δ", "$\\Delta$").replace(">", "$>$"))
    lines = ["\\begin{tabular}{lll" + "r" * (len(HEADERS) - 3) + "}", "\\toprule",
             " & ".join(esc(h) for h in HEADERS) + " \\\\", "\\midrule"]
    lines += [" & ".join(esc(c) if "\\" not in c else c for c in cells) + " \\\\" for cells in _cells(rows, tex=True)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def stats_markdown(rows: list[dict]) -> str:
    lines = ["| Detector | Backbone | Method | Paired seeds | Mean Δ mAP (pts) vs reference | 95% CI (pts) | Verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("paired")
        if not p or p["mean"] is None:
            continue
        ci = "–" if p["low"] is None else f"[{p['low'] * 100:+.2f}, {p['high'] * 100:+.2f}]"
        verdict = ("too few paired seeds" if p["low"] is None else "significant gain" if p["low"] > 0 else
                   "significant loss" if p["high"] < 0 else "not significant")
        lines.append(f"| {r['detector']} | {r['backbone']} | {r['method']} | {p['n']} | {p['mean'] * 100:+.2f} | "
                     f"{ci} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_report(runs_csv: Path, out: Path) -> Path:
    """Write every table, figure and REPORT.md for ``runs_csv`` into ``out``; return REPORT.md's path."""
    from study.figures import write_figures

    runs_csv, out = Path(runs_csv), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_rows = read_runs(runs_csv)
    groups = group_runs(all_rows)
    rows = table_rows(groups)
    (out / "table.md").write_text(markdown_table(rows))
    (out / "table.tex").write_text(latex_table(rows))
    (out / "stats.md").write_text(stats_markdown(rows))
    with (out / "table.csv").open("w", newline="") as f:
        keys = ["detector", "backbone", "method", "seeds", "failed", "params", "gflops", "size_mb", "cpu_ms", "map",
                "map_std", "map50", "map50_std", "delta", "delta_pct", "exceeds_spread"]
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    figures = write_figures(groups, rows, runs_csv.parent / "runs", out)
    failed = [r for r in all_rows if r["status"] != "ok"]
    profiles = sorted({r["profile"] for r in all_rows})
    datasets = sorted({r["dataset"] for r in all_rows})
    devices = sorted({r["device"] for r in all_rows})
    seeds = sorted({int(r["seed"]) for r in all_rows if r["method"] not in ("teacher",)})
    total_s = sum(float(r["train_s"] or 0) for r in all_rows)
    hparams = {json.loads(r["hparams"]).get("image_size") for r in all_rows if r["hparams"]}
    import torch, torchvision  # noqa: E401 - versions for the record
    lines = [f"# Report: {', '.join(profiles)} on {', '.join(datasets)}", "",
             f"- runs: {len(all_rows)} ({len(failed)} failed); seeds for student rows: {seeds}; "
             f"image size (longer side): {sorted(hparams)}",
             f"- hardware (threads per run): {'; '.join(devices)}; "
             f"software where this report was written: Python {platform.python_version()}, torch {torch.__version__}, "
             f"torchvision {torchvision.__version__}",
             f"- total training time of the runs: {total_s / 60:.1f} min (summed; runs may have run at once)",
             *[f"- execution {e['started']} ({e['profile']}): {e['runs_executed']} of {e['runs_planned']} runs, "
               f"{e['workers']} at a time x {e['threads_per_run']} thread(s), {e['device']}: "
               f"{float(e['wall_s']) / 60:.1f} min wall" for e in read_runs(runs_csv.parent / "executions.csv")],
             "- mAP is COCO mAP@[.5:.95] on the test split; GFLOPs = 2 × GMACs of one forward pass; CPU ms is the "
             "median per image at batch 1; Δ is against the same detector and backbone's `baseline` (for a compressed "
             "teacher: against the teacher).", "",
             "## Main table", "", markdown_table(rows), "## Against baseline (paired over seeds)", "",
             stats_markdown(rows)]
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{r['run_id']}`: {r['error']}" for r in failed] + [""]
    compressed = [r for r in all_rows if r["status"] == "ok" and r.get("details")]
    if compressed:
        lines += ["## Compression details", "", "| Run | Method | Details |", "|---|---|---|"]
        lines += [f"| `{r['run_id']}` | {r['method']} | {r['details']} |" for r in compressed] + [""]
    lines += ["## Figures", ""] + [f"![{name}]({name})" for name in figures]
    report = out / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    return report
