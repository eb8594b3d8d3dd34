"""Paper tables and figures from a ``runs.csv`` alone (so merged files from several machines work too).

Writes into ``out``: ``table.md``, ``table.tex`` (booktabs), ``table.csv``, ``stats.md`` (paired differences against
``baseline`` with 95% t-intervals), the figures (PNG and PDF) and ``REPORT.md`` embedding them.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import statistics
from pathlib import Path

from study.groups import RIVAL_SUFFIX, Group, group_runs
from study.figures import write_figures
from study.stats import holm, paired_summary, t_quantile
from study.deploy_report import deployment_lines
from study.store import read_curve, read_runs, read_study_rows

COST_COLUMNS = (("params", "Params (M)", 1e-6), ("gflops", "GFLOPs", 1.0), ("size_mb", "Size (MB)", 1.0),
                ("cpu_ms", "CPU ms", 1.0))


def teacher_seeds_of(rows: list[dict]) -> dict[str, int]:
    """run id -> the seed of the teacher it was distilled from (rows without a teacher are left out)."""
    seed_of = {r["run_id"]: int(r["seed"]) for r in rows}
    out = {}
    for r in rows:
        teacher = json.loads(r["hparams"] or "{}").get("teacher_run")
        if teacher:
            out[r["run_id"]] = seed_of[teacher] if teacher in seed_of else teacher_seed_from_id(teacher)
    return out


def teacher_seed_from_id(run_id: str) -> int | None:
    """A run id's seed (``...-s<seed>-<digest>``), for a teacher whose row is in another file."""
    parts = run_id.rsplit("-", 2)
    part = parts[-2] if len(parts) == 3 else ""
    return int(part[1:]) if part.startswith("s") and part[1:].isdigit() else None


def paired_difference(method: Group, baseline: Group, column: str = "map", teachers: dict | None = None) -> dict:
    """Mean of (method − reference) over the (teacher, seed) cells: each of the method's runs is paired with the
    reference's run of the same student seed, so a difference carries its teacher's and its seed's variance. The
    95% t-interval and p use n − 1 df; ``by_teacher`` gives the mean difference per teacher seed."""
    m, b = method.by_seed(column), baseline.by_seed(column)
    seeds = sorted(set(m) & set(b))
    out = paired_summary([m[s] - b[s] for s in seeds])
    out["significant"] = out["low"] is not None and (out["low"] > 0 or out["high"] < 0)
    run_of = {int(r["seed"]): r["run_id"] for r in method.ok}
    by_teacher: dict = {}
    for s in seeds:
        by_teacher.setdefault((teachers or {}).get(run_of[s]), []).append(m[s] - b[s])
    out["by_teacher"] = {t: statistics.fmean(v) for t, v in sorted(by_teacher.items(), key=lambda kv: str(kv[0]))
                         if t is not None}
    out["seeds"] = seeds
    return out


def adjust_holm(rows: list[dict], keys: tuple[str, ...] = ("paired", "paired_long", "paired_rival"),
                alpha: float = 0.05) -> None:
    """Holm over every student comparison of each detector, whatever it is against (``baseline``,
    ``baseline-long``, ultralytics' trainer: ``row[key]`` for ``key`` in ``keys``), as one family: adds ``p_adj``,
    the verdict at ``alpha`` after correction and the interval at Holm's step level (``adj_low``/``adj_high``)."""
    for detector in {r["detector"] for r in rows}:
        family = {(i, key): r[key]["p"] for i, r in enumerate(rows) for key in keys
                  if r["detector"] == detector and r.get(key) and r["role"] == "student"}
        for (i, key), h in holm(family, alpha).items():
            p = rows[i][key]
            half = (p["high"] - p["low"]) / 2 * t_quantile(h["level"], p["n"] - 1) / t_quantile(0.95, p["n"] - 1)
            p |= {"p_adj": h["p_adj"], "holm_level": h["level"], "adj_low": p["mean"] - half,
                  "adj_high": p["mean"] + half, "family": len(family)}
            p["verdict"] = ("not significant" if not h["reject"] else
                            "significant gain" if p["mean"] > 0 else "significant loss")


def late_peaks(g: Group, share: float = 0.2) -> int:
    """How many of the group's runs had their best validation epoch in the last ``share`` of their epochs (a
    run still improving when it stopped)."""
    count = 0
    for r in g.ok:
        epochs = json.loads(r["hparams"] or "{}").get("role", {}).get("epochs")
        if epochs and r.get("best_epoch") not in (None, "") and int(r["best_epoch"]) > (1 - share) * epochs:
            count += 1
    return count


def late_gains(g: Group, share: float = 0.2) -> list[float]:
    """Per run of the group with a validation curve: how much its last ``share`` of epochs added, the best
    validation mAP after epoch ``(1 - share) * epochs`` minus the best up to it (mAP points; <= 0: no gain). Under a
    schedule that decays to the end the best epoch falls late even on a flat curve; this says by how much."""
    gains = []
    for r in g.ok:
        curve = read_curve(r)
        epochs = json.loads(r["hparams"] or "{}").get("role", {}).get("epochs") or (curve[-1][0] if curve else 0)
        before = [v for e, v in curve if e <= (1 - share) * epochs]
        after = [v for e, v in curve if e > (1 - share) * epochs]
        if before and after:
            gains.append((max(after) - max(before)) * 100)
    return gains


def latency_spread(g: Group) -> float | None:
    """The group's latency noise: the larger of its runs' mean interquartile range and the range of their medians
    (runs of one architecture should time the same)."""
    medians, iqrs = g.values("cpu_ms"), g.values("cpu_ms_iqr")
    if not medians:
        return None
    return max(statistics.fmean(iqrs) if iqrs else 0.0, max(medians) - min(medians))


def table_rows(groups: list[Group], all_rows: list[dict] | None = None) -> list[dict]:
    """One dict per group with the numbers every table format shows; students' rows carry their paired comparison
    with ``baseline`` (and with ``baseline-long`` where the study has it), Holm-adjusted per detector."""
    teachers = teacher_seeds_of(all_rows or [r for g in groups for r in g.ok + g.failed])
    # the reference of a row: its backbone's student trained alone, or (for compressed teachers) the teacher
    baselines = {(g.detector, g.backbone): g for g in groups if g.method == "teacher"}
    baselines |= {(g.detector, g.backbone): g for g in groups if g.method == "baseline"}
    longs = {(g.detector, g.backbone): g for g in groups if g.method == "baseline-long"}
    # ultralytics' own trainer on the same student model (study.rival): its plain and its distill_model= rows
    rival = {(g.detector, g.backbone.removesuffix(RIVAL_SUFFIX), g.method): g for g in groups
             if g.backbone.endswith(RIVAL_SUFFIX)}
    teacher_models = {(g.detector, g.backbone) for g in groups if g.method == "teacher"}
    maps = {r["run_id"]: r.get("map") for r in (all_rows or [r for g in groups for r in g.ok])
            if r.get("status") == "ok"}
    rows = []
    for g in groups:
        sources = _sources(g)  # a compressed model's reference is the run it was made from
        role = ("teacher" if g.method == "teacher" else "compressed" if sources or (g.detector, g.backbone)
                in teacher_models else "student")
        row = {"detector": g.detector, "backbone": g.backbone, "method": g.method, "role": role, "seeds": len(g.ok),
               "failed": len(g.failed), "late_peaks": late_peaks(g), "late_gains": late_gains(g),
               "cpu_ms_spread": latency_spread(g), "val_map": g.mean("val_map"), "val_map_std": g.std("val_map"),
               "teacher_seeds": sorted({teachers[r["run_id"]] for r in g.ok if teachers.get(r["run_id"]) is not None})}
        for col, _, scale in COST_COLUMNS:
            mean = g.mean(col)
            row[col] = None if mean is None else mean * scale
        for col in ("map", "map50"):
            row[col], row[col + "_std"] = g.mean(col), g.std(col)
        base = baselines.get((g.detector, g.backbone))
        row["delta"] = row["delta_pct"] = row["exceeds_spread"] = None
        source_maps = [float(maps[r]) for r in sources if maps.get(r) not in (None, "")]
        if sources and g.ok and source_maps:  # against the mean of its source runs, not paired by seed
            ref = statistics.fmean(source_maps)
            row["delta"] = (row["map"] - ref) * 100
            row["delta_pct"] = (row["map"] / ref - 1) * 100 if ref else None
        elif base is not None and g.method not in ("baseline", "teacher") and g.ok and base.ok and not sources:
            row["delta"] = (row["map"] - base.mean("map")) * 100  # mAP points
            row["delta_pct"] = (row["map"] / base.mean("map") - 1) * 100 if base.mean("map") else None
            if len(g.ok) > 1 and len(base.ok) > 1:  # a spread needs at least two seeds on both sides
                row["exceeds_spread"] = abs(row["map"] - base.mean("map")) > max(g.std("map"), base.std("map"))
            row["paired"] = paired_difference(g, base, teachers=teachers)
        long = longs.get((g.detector, g.backbone))
        if long is not None and role == "student" and g.method not in ("baseline", "baseline-long") and g.ok:
            row["paired_long"] = paired_difference(g, long, teachers=teachers)
        if role == "student" and g.method != "baseline-long" and g.ok:  # distilled vs distill_model, plain vs plain
            other = rival.get((g.detector, g.backbone, "baseline" if g.method == "baseline" else "distill_model"))
            if other is not None and other.ok:
                row["paired_rival"] = paired_difference(g, other, teachers=teachers)
        rows.append(row)
    adjust_holm(rows)
    return rows


def _sources(g: Group) -> set[str]:
    """The run ids a group's compressed models were made from (their hparams' ``source_run``; empty for a trained
    row)."""
    return {json.loads(r.get("hparams") or "{}").get("source_run") for r in g.ok + g.failed} - {None}


def _best(rows: list[dict], col: str, higher: bool):
    """The best value of a column over the non-teacher rows; for latency, only when it beats the next-best row by
    more than both rows' measured spread (else None: no row is marked)."""
    ranked = sorted((r for r in rows if r["method"] != "teacher" and r[col] is not None), key=lambda r: r[col],
                    reverse=higher)
    if not ranked:
        return None
    if col == "cpu_ms":
        if len(ranked) > 1:
            first, second = ranked[0], ranked[1]
            noise = max(first["cpu_ms_spread"] or 0.0, second["cpu_ms_spread"] or 0.0)
            if second[col] - first[col] <= noise:
                return None
    return ranked[0][col]


def _fmt(row: dict, col: str, bold: bool, tex: bool) -> str:
    v = row.get(col)
    if v is None:
        return "–"
    if col in ("map", "map50"):
        s = f"{v:.3f} ± {row[col + '_std']:.3f}" if not tex else f"{v:.3f} $\\pm$ {row[col + '_std']:.3f}"
    elif col == "cpu_ms" and row.get("cpu_ms_spread") is not None:
        s = f"{v:.1f} ± {row['cpu_ms_spread']:.1f}" if not tex else f"{v:.1f} $\\pm$ {row['cpu_ms_spread']:.1f}"
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


HEADERS = ["Detector", "Backbone", "Method", "Params (M)", "GFLOPs", "Size (MB)", "CPU ms ± spread", "mAP", "AP50",
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


def _ci(low, high) -> str:
    return "–" if low is None else f"[{low * 100:+.2f}, {high * 100:+.2f}]"


def _p(p) -> str:
    return "–" if p is None else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def stats_markdown(rows: list[dict], key: str = "paired") -> str:
    """The paired comparisons ``row[key]`` (against ``baseline``, or ``baseline-long`` for "paired_long"): n cells,
    mean, 95% CI, raw and Holm-adjusted p, the interval at Holm's step level, and the corrected verdict."""
    lines = ["| Detector | Backbone | Method | Teacher seeds | Paired cells (n) | Mean Δ mAP (pts) | 95% CI (pts) | p | "
             "Holm p | Holm-level CI (pts) | Verdict (Holm, α = 0.05) | Mean Δ per teacher (pts) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get(key)
        if not p or p["mean"] is None:
            continue
        verdict = p.get("verdict") or ("too few paired seeds" if p["low"] is None else
                                       "significant gain" if p["low"] > 0 else "significant loss" if p["high"] < 0
                                       else "not significant")
        level = f"{p['holm_level'] * 100:.1f}%: " if "holm_level" in p else ""
        adj_ci = level + _ci(p.get("adj_low"), p.get("adj_high")) if "adj_low" in p else "–"
        per_teacher = ", ".join(f"t{t}: {d * 100:+.2f}" for t, d in p.get("by_teacher", {}).items()) or "–"
        teachers = ", ".join(map(str, r["teacher_seeds"])) or "–"
        lines.append(f"| {r['detector']} | {r['backbone']} | {r['method']} | {teachers} | {p['n']} | "
                     f"{p['mean'] * 100:+.2f} | {_ci(p['low'], p['high'])} | {_p(p['p'])} | {_p(p.get('p_adj'))} | "
                     f"{adj_ci} | {verdict} | {per_teacher} |")
    return "\n".join(lines) + "\n"


def convergence_markdown(rows: list[dict]) -> str:
    """Per trained row: validation mAP with its seed SD, how many runs peaked in the last 20% of their epochs and
    how much those epochs added (mean and range over the runs, :func:`late_gains`)."""
    lines = ["| Detector | Backbone | Method | Runs | Peaked in the last 20% of epochs | Gain in the last 20% (pts): "
             "mean [min, max] | Validation mAP ± SD over runs |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["role"] == "compressed" or not r["seeds"]:
            continue
        val = "–" if r["val_map"] is None else f"{r['val_map']:.3f} ± {(r['val_map_std'] or 0) * 100:.1f} pts"
        gains = r.get("late_gains") or []
        gain = (f"{statistics.fmean(gains):+.1f} [{min(gains):+.1f}, {max(gains):+.1f}]" if gains else "–")
        peaks = "–" if r["val_map"] is None else f"{r['late_peaks']} of {r['seeds']}"  # no curve: not known
        lines.append(f"| {r['detector']} | {r['backbone']} | {r['method']} | {r['seeds']} | {peaks} | {gain} | {val} |")
    return "\n".join(lines) + "\n"


def gap_lines(rows: list[dict]) -> list[str]:
    """Per detector: the teacher's validation mAP against the student trained alone (what there is to distil)."""
    out = []
    for detector in dict.fromkeys(r["detector"] for r in rows):
        teacher = next((r for r in rows if r["detector"] == detector and r["method"] == "teacher"), None)
        student = next((r for r in rows if r["detector"] == detector and r["method"] == "baseline"), None)
        if teacher and student and teacher["val_map"] is not None and student["val_map"] is not None:
            gap = (teacher["val_map"] - student["val_map"]) * 100
            out.append(f"- {detector}: teacher {teacher['backbone']} {teacher['val_map']:.3f} (mean of "
                       f"{teacher['seeds']} teacher seeds) vs student {student['backbone']} alone "
                       f"{student['val_map']:.3f} ({student['seeds']} seeds): gap {gap:+.1f} points on validation")
    return out


def latency_agreement(groups: list[Group]) -> list[str]:
    """Per architecture (detector, backbone, parameter count) timed more than once: the spread of the medians."""
    by_arch: dict[tuple, list[float]] = {}
    for g in groups:
        for r in g.ok:
            if r.get("cpu_ms") not in (None, "") and not g.method.startswith(("int8", "fp16")):
                by_arch.setdefault((g.detector, g.backbone, r["params"]), []).append(float(r["cpu_ms"]))
    out = []
    for (detector, backbone, params), values in by_arch.items():
        if len(values) > 1:
            out.append(f"- {detector} {backbone} ({int(float(params)) / 1e6:.2f} M params, {len(values)} runs): "
                       f"{min(values):.2f}-{max(values):.2f} ms, max/min = {max(values) / min(values):.3f}")
    return out


def compute_report(runs_csv: Path) -> dict:
    """Everything the report shows, computed from ``runs_csv`` (and ``executions.csv`` beside it), as a plain dict:
    the rows read (``all_rows``), their groups, the table's rows with their paired statistics (``rows``,
    :func:`table_rows`), the failed and compressed runs, the study's profiles, datasets, devices, seeds and image
    sizes, the executions, and the software versions where the report is written."""
    runs_csv = Path(runs_csv)
    all_rows = read_study_rows(runs_csv)
    groups = group_runs(all_rows)
    import torch, torchvision  # noqa: E401 - versions for the record
    return {
        "runs_csv": runs_csv, "all_rows": all_rows, "groups": groups, "rows": table_rows(groups, all_rows),
        "failed": [r for r in all_rows if r["status"] != "ok"],
        "compressed": [r for r in all_rows if r["status"] == "ok" and r.get("details")],
        "profiles": sorted({r["profile"] for r in all_rows}),
        "datasets": sorted({r["dataset"] for r in all_rows}),
        "devices": sorted({r["device"] for r in all_rows}),
        "seeds": sorted({int(r["seed"]) for r in all_rows if r["method"] not in ("teacher",)}),
        "teacher_seeds": sorted({int(r["seed"]) for r in all_rows if r["method"] == "teacher"}),
        "total_s": sum(float(r["train_s"] or 0) for r in all_rows),
        "image_sizes": sorted({json.loads(r["hparams"]).get("image_size") for r in all_rows if r["hparams"]}
                              - {None}),
        "executions": read_runs(runs_csv.parent / "executions.csv"),
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
    }


TABLE_CSV_KEYS = ["detector", "backbone", "method", "seeds", "failed", "params", "gflops", "size_mb", "cpu_ms", "map",
                  "map_std", "map50", "map50_std", "delta", "delta_pct", "exceeds_spread", "cpu_ms_spread",
                  "late_peaks", "val_map"]


def comparisons_markdown(rows: list[dict]) -> dict[str, str]:
    """The paired-comparison tables of :func:`stats_markdown` against ``baseline``, ``baseline-long`` and
    ultralytics' own trainer (key ``paired``, ``paired_long``, ``paired_rival``); "" where no row has one."""
    return {key: stats_markdown(rows, key) if any(r.get(key) for r in rows) else ""  # none: only baselines
            for key in ("paired", "paired_long", "paired_rival")}


def render_tables(report: dict) -> dict[str, str]:
    """The text of ``table.md``, ``table.tex``, ``stats.md`` and ``table.csv`` for :func:`compute_report`'s dict."""
    rows = report["rows"]
    compared = comparisons_markdown(rows)
    against_base, against_long, against_rival = compared["paired"], compared["paired_long"], compared["paired_rival"]
    stats = against_base + (
        "\nAgainst `baseline-long`:\n\n" + against_long if against_long else "") + (
        "\nAgainst ultralytics' own trainer (`distill_model=`; plain for `baseline`):\n\n" + against_rival
        if against_rival else "")
    table_csv = io.StringIO(newline="")
    writer = csv.DictWriter(table_csv, fieldnames=TABLE_CSV_KEYS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return {"table.md": markdown_table(rows), "table.tex": latex_table(rows), "stats.md": stats,
            "table.csv": table_csv.getvalue()}


def runtime_names(rows: list[dict]) -> str:
    """Where the rows' latencies were measured: ONNX Runtime, PyTorch eager, or both."""
    names = {"onnxruntime": "ONNX Runtime", "pytorch": "PyTorch eager", "": "PyTorch eager"}
    return " and ".join(sorted({names.get(r.get("runtime") or "", r.get("runtime")) for r in rows
                                if r.get("cpu_ms") not in (None, "")})) or "not measured"


def render_report_md(report: dict, figures: list[str]) -> str:
    """The text of ``REPORT.md`` for :func:`compute_report`'s dict, embedding the figures ``figures``."""
    rows, groups, failed, software = report["rows"], report["groups"], report["failed"], report["software"]
    compared = comparisons_markdown(rows)
    against_base, against_long, against_rival = compared["paired"], compared["paired_long"], compared["paired_rival"]
    lines = [f"# Report: {', '.join(report['profiles'])} on {', '.join(report['datasets'])}", "",
             f"- runs: {len(report['all_rows'])} ({len(failed)} failed); seeds for student rows: {report['seeds']}; "
             f"teacher seeds: {report['teacher_seeds']}; image size (longer side): {report['image_sizes']}",
             f"- hardware (threads per run): {'; '.join(report['devices'])}; "
             f"software where this report was written: Python {software['python']}, torch {software['torch']}, "
             f"torchvision {software['torchvision']}",
             f"- total training time of the runs: {report['total_s'] / 60:.1f} min (summed; runs may have run at once)",
             *[f"- execution {e['started']} ({e['profile']}): {e['runs_executed']} of {e['runs_planned']} runs, "
               f"{e['workers']} at a time x {e['threads_per_run']} thread(s), {e['device']}"
               f"{' (' + e['cpu_id'] + ')' if e.get('cpu_id') else ''}: "
               f"{float(e['wall_s']) / 60:.1f} min wall" for e in report["executions"]],
             "- mAP is COCO mAP@[.5:.95] on the test split; GFLOPs = 2 × GMACs of one forward pass; CPU ms "
             f"({runtime_names(report['all_rows'])}) is the median per image at batch 1 over interleaved rounds (every model timed in each round, in a random "
             "order, over several test images), ± its spread (the larger of the runs' mean interquartile range and "
             "the range of their medians); a latency is bold only when it beats the next row by more than both "
             "spreads; Δ is against the same detector and backbone's `baseline` (for a compressed "
             "model: against the mean of the runs it was made from).", "",
             "## Main table", "", markdown_table(rows)]
    if against_base:
        lines += ["## Against baseline (paired over teacher × seed cells)", "",
                  "Each distilled run of student seed s (with the teacher seed it was paired with) minus `baseline` "
                  "of seed s: the differences span the teacher seeds, so their spread carries the teacher's variance "
                  "as well as the seed's; the interval is Student's t with n − 1 df. Holm's step-down correction runs "
                  "over every comparison of one detector's student rows, against `baseline`, `baseline-long` and "
                  "ultralytics' trainer alike (the family size is the number of comparisons); the "
                  "verdict is the corrected one, and the Holm-level interval is the t-interval at the confidence of "
                  "that row's step.",
                  "", against_base]
    if against_long:
        lines += ["## Against baseline-long (the student alone, trained longer: the compute control)", "",
                  "Does distillation beat simply training the student for longer? Same pairing and correction.", "",
                  against_long]
    if against_rival:
        lines += ["## Against ultralytics' own trainer (`python -m study rival`)", "",
                  "Each distilled row of this project minus ultralytics' `distill_model=` student of the same seed "
                  "(the same teacher, handed to ultralytics as a checkpoint), and this project's `baseline` minus "
                  "ultralytics' plain trainer of the same seed: same data, splits, image size, epochs and recipe, "
                  "both scored by this project's evaluator. Same pairing, and the same Holm family.", "",
                  against_rival]
    lines += ["## Convergence", "", "A run whose best validation epoch lies in the last 20% of its epochs may have been "
              "still improving when it stopped; under the cosine schedule, which decays to zero at the last epoch, a "
              "flat curve also peaks late, so the gain column says how much those epochs added (the best validation "
              "mAP after 80% of the epochs minus the best before): a gain well inside the SD over runs is a plateau, "
              "one of several SDs is not.", "", convergence_markdown(rows)]
    if gap_lines(rows):
        lines += ["## Teacher-student gap (validation mAP)", "", *gap_lines(rows), ""]
    if latency_agreement(groups):
        lines += ["## Latency of identical architectures", "", *latency_agreement(groups), ""]
    lines += deployment_lines(report["all_rows"])
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{r['run_id']}`: {r['error']}" for r in failed] + [""]
    if report["compressed"]:
        lines += ["## Compression details", "", "| Run | Method | Details |", "|---|---|---|"]
        lines += [f"| `{r['run_id']}` | {r['method']} | {r['details']} |" for r in report["compressed"]] + [""]
    lines += ["## Figures", ""] + [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


def write_report(runs_csv: Path, out: Path) -> Path:
    """Write every table, figure and REPORT.md for ``runs_csv`` into ``out`` (:func:`compute_report`, then
    :func:`render_tables`, the figures and :func:`render_report_md`); return REPORT.md's path."""
    runs_csv, out = Path(runs_csv), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = compute_report(runs_csv)
    for name, text in render_tables(report).items():
        (out / name).write_text(text, newline="" if name.endswith(".csv") else None)
    figures = write_figures(report["groups"], report["rows"], runs_csv.parent / "runs", out)
    path = out / "REPORT.md"
    path.write_text(render_report_md(report, figures))
    return path
