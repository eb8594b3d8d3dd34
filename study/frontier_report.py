"""The frontier report: FRONTIER.md and its figures from a study's runs.csv (and its kept test detections).

:mod:`study.frontier` computes; this module adds the test-image bootstrap where detections were kept, then renders
the tables (best method at each budget, every row's difference with its intervals, transfer or regularisation, the
dose-response) and the figures (test mAP against parameters, GFLOPs and CPU latency, one line per method class;
a forest plot of the differences; the dose-response scatter).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from study import bootstrap  # noqa: E402
from study.evaluate import load_detections  # noqa: E402
from study.figures import MARKERS, OKABE_ITO, _save, log_axis  # noqa: E402
from study.frontier import (CONTROLS, Point, best_at_budgets, differences, dose_response, pareto,  # noqa: E402
                            points_of, transfer_verdicts)
from study.store import read_study_rows  # noqa: E402

CLASS_ORDER = ["teacher", "student alone", "student alone, 2x epochs", "Hinton KD", "feature KD (detection)",
               "classic KD (fitnets)", "classic KD (at)", "classic KD (nst)", "label smoothing (control)",
               "self-distillation (control)", "pruned teacher", "pruned teacher + KD", "int8", "int8 QAT", "int8 QAT + KD", "fp16"]
AXES = (("params", "Parameters (M)", "params"), ("gflops", "GFLOPs per image", "gflops"),
        ("size_mb", "Size on disk (MB)", "size"),
        ("onnx_mb", "ONNX file (MB), as ONNX Runtime loads it", "onnx_size"),
        ("cpu_ms", "CPU latency per image (ms, batch 1)", "latency"))


def add_bootstrap(points: list[Point], rows: list[dict], detections_dir: Path, gt, n_boot: int, seed: int) -> int:
    """Two-level bootstrap intervals (runs x test images) on each point's mean mAP and on each of its differences,
    from the kept detections; returns how many runs had detections. One set of image resamples serves every run,
    so that differences keep their pairing over images too."""
    if gt is None or not detections_dir.is_dir():
        return 0
    n_images = len(gt.getImgIds())
    resamples = bootstrap.image_resamples(n_images, n_boot, seed)
    replicates = {}
    for r in rows:
        path = detections_dir / f"{r['run_id']}.json.gz"
        if r["status"] == "ok" and path.is_file():
            replicates[r["run_id"]] = bootstrap.run_replicates(bootstrap.match_tables(gt, load_detections(path)),
                                                               resamples)
    map_of = {r["run_id"]: float(r["map"]) for r in rows if r["run_id"] in replicates}
    for p in points:
        runs = [r["run_id"] for r in p.group.ok if r["run_id"] in replicates]
        if runs and len(runs) == len(p.group.ok):
            p.boot = bootstrap.level_interval({k: replicates[k] for k in runs}, {k: map_of[k] for k in runs},
                                              n_boot, seed)
        for d in p.diffs.values():
            pairs = [(a, b) for a, b in d.get("pairs", []) if a in replicates and b in replicates]
            if pairs and len(pairs) == len(d.get("pairs", [])):
                d["boot"] = bootstrap.two_level_interval(
                    {i: replicates[a] for i, (a, _) in enumerate(pairs)},
                    {i: replicates[b] for i, (_, b) in enumerate(pairs)},
                    {i: map_of[a] for i, (a, _) in enumerate(pairs)},
                    {i: map_of[b] for i, (_, b) in enumerate(pairs)}, n_boot, seed)
    return len(replicates)


def _pts(v) -> str:
    return "–" if v is None else f"{v * 100:+.2f}"


def _iv(low, high) -> str:
    return "–" if low is None else f"[{low * 100:+.2f}, {high * 100:+.2f}]"


def _map_iv(p: Point) -> str:
    t = "–" if p.t_low is None else f"[{p.t_low:.3f}, {p.t_high:.3f}]"
    b = "–" if not p.boot else f"[{p.boot['low']:.3f}, {p.boot['high']:.3f}]"
    return f"{p.map:.3f} | {t} | {b}"


def _cost(v, fmt="{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def points_table(points: list[Point]) -> str:
    lines = ["| Detector | Class | Model | Method | n | Params (M) | GFLOPs | Size (MB) | ONNX (MB) | CPU ms | "
             "Test mAP | 95% t-interval | Two-level bootstrap 95% |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p.group.detector, CLASS_ORDER.index(p.cls) if p.cls in CLASS_ORDER
                                             else 99, p.params or 0)):
        g = p.group
        lines.append(f"| {g.detector} | {p.cls} | {g.backbone} | {g.method} | {len(g.ok)} | {_cost(p.params)} | "
                     f"{_cost(p.gflops)} | {_cost(p.size_mb)} | {_cost(p.onnx_mb)} | {_cost(p.cpu_ms, '{:.1f}')} | "
                     f"{_map_iv(p)} |")
    return "\n".join(lines) + "\n"


def differences_table(points: list[Point]) -> str:
    lines = ["| Detector | Model | Method | Against | n | Mean Δ (pts) | 95% t-interval | p | Holm p (family) | "
             "Two-level bootstrap 95% | Verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        for ref, d in p.diffs.items():
            if d.get("mean") is None:
                continue
            boot = d.get("boot")
            holm_p = "–" if "p_adj" not in d else f"{d['p_adj']:.3f} ({d['holm_family']})"
            lines.append(f"| {p.group.detector} | {p.group.backbone} | {p.group.method} | {ref} | {d['n']} | "
                         f"{_pts(d['mean'])} | {_iv(d['low'], d['high'])} | "
                         f"{'–' if d['p'] is None else format(d['p'], '.3f')} | {holm_p} | "
                         f"{_iv(boot['low'], boot['high']) if boot else '–'} | {d['verdict']} |")
    return "\n".join(lines) + "\n"


def best_table(points: list[Point], column: str) -> str:
    unit = {"params": "M params", "gflops": "GFLOPs", "size_mb": "MB on disk", "onnx_mb": "MB of ONNX file",
            "cpu_ms": "CPU ms"}[column]
    lines = [f"| Detector | Budget ({unit}) | Best model | Test mAP [95% t] | Runner-up | Test mAP [95% t] |",
             "|---|---|---|---|---|---|"]
    fmt = lambda p: ("–", "–") if p is None else (p.label, f"{p.map:.3f} " + (  # noqa: E731
        f"(n = {len(p.group.ok)})" if p.t_low is None else f"[{p.t_low:.3f}, {p.t_high:.3f}]"))
    # consecutive budgets with the same best and runner-up are one row, "≤ 0.89 to ≤ 28": the larger ones add nothing
    spans: list[list] = []
    for b in best_at_budgets(points, column):
        key = (b["detector"], id(b["best"]), id(b["runner_up"]))
        if spans and spans[-1][0] == key:
            spans[-1][2] = b["budget"]
        else:
            spans.append([key, b, b["budget"]])
    for _, b, last in spans:
        budget = f"≤ {b['budget']:.3g}" + ("" if last == b["budget"] else f" to ≤ {last:.3g}")
        lines.append(f"| {b['detector']} | {budget} | {fmt(b['best'])[0]} | {fmt(b['best'])[1]} | "
                     f"{fmt(b['runner_up'])[0]} | {fmt(b['runner_up'])[1]} |")
    return "\n".join(lines) + "\n"


def transfer_lines(points: list[Point]) -> list[str]:
    out = []
    for t in transfer_verdicts(points):
        p = t["point"]
        parts = [f"vs {ref} {_pts(d['mean'])} {_iv(d['low'], d['high'])} ({d['verdict']})"
                 for ref, d in p.diffs.items() if ref in ("baseline",) + CONTROLS]
        out.append(f"- {p.group.detector} {p.label}: **{t['call']}**; " + "; ".join(parts))
    return out


# each class keeps one colour and marker in every panel and figure: 16 distinct colours, one per class
CLASS_COLOURS = ["#000000", "#0072B2", "#56B4E9", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#8C564B", "#7F7F7F",
                 "#BCBD22", "#9467BD", "#D62728", "#17BECF", "#332288", "#44AA99", "#882255"]
CLASS_STYLE = {cls: {"color": CLASS_COLOURS[i % len(CLASS_COLOURS)], "marker": MARKERS[i % len(MARKERS)]}
               for i, cls in enumerate(CLASS_ORDER)}
# two panels per detector: the students' methods, and the compressed models beside the models they compress
PANELS = (("students: distillation and controls", lambda p: p.role != "compressed"),
          ("compressed: pruned and quantized", lambda p: p.role == "compressed" or p.cls in ("teacher", "student alone")))


def frontier_figure(points: list[Point], column: str, xlabel: str, out: Path, stem: str) -> str | None:
    """Test mAP against ``column``: per detector a row of two panels (the students' methods; the compressed models
    with the teacher and the student alone for reference), one line per method class through its budget points,
    95% t-intervals as bars (bootstrap where there is one run), the detector's Pareto front dotted in both."""
    detectors = list(dict.fromkeys(p.group.detector for p in points if getattr(p, column) is not None))
    if not detectors:
        return None
    fig, axes = plt.subplots(len(detectors), len(PANELS), figsize=(6.2 * len(PANELS), 5.6 * len(detectors)),
                             squeeze=False, sharey="row")
    for row, detector in zip(axes, detectors):
        mine = [p for p in points if p.group.detector == detector and getattr(p, column) is not None]
        front = pareto(mine, column)
        for ax, (title, shown) in zip(row, PANELS):
            for cls in [c for c in CLASS_ORDER if any(p.cls == c and shown(p) for p in mine)]:
                line = sorted((p for p in mine if p.cls == cls and shown(p)), key=lambda p: getattr(p, column))
                xs, ys = [getattr(p, column) for p in line], [p.map for p in line]
                lows = [p.t_low if p.t_low is not None else (p.boot or {}).get("low", p.map) for p in line]
                highs = [p.t_high if p.t_high is not None else (p.boot or {}).get("high", p.map) for p in line]
                ax.errorbar(xs, ys, yerr=[[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]],
                            capsize=3, markersize=7, linewidth=1.2, label=cls,
                            linestyle="-" if len(line) > 1 else "none", **CLASS_STYLE[cls])
            if len(front) > 1:
                ax.plot([getattr(p, column) for p in front], [p.map for p in front], linestyle=":", color="grey",
                        linewidth=1, zorder=0, label="Pareto front (all models)")
            log_axis(ax)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("COCO mAP@[.5:.95] (test)")
            ax.set_title(f"{detector}: {title}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    return _save(fig, out, stem)


def forest_figure(points: list[Point], out: Path) -> str | None:
    """Each comparison's mean difference with its 95% t-interval (black) and two-level bootstrap (grey)."""
    items = [(p, ref, d) for p in points for ref, d in p.diffs.items() if d.get("mean") is not None]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(items) + 1.2))
    for y, (p, ref, d) in enumerate(reversed(items)):
        if d.get("low") is not None:
            ax.plot([d["low"] * 100, d["high"] * 100], [y, y], color="black", linewidth=1.5)
        if d.get("boot"):
            ax.plot([d["boot"]["low"] * 100, d["boot"]["high"] * 100], [y - 0.2, y - 0.2], color="grey",
                    linewidth=1.5)
        ax.plot(d["mean"] * 100, y, "o", color="black", markersize=4)
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([f"{p.group.detector[:4]} {p.label} vs {ref}" for p, ref, _ in reversed(items)], fontsize=7)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("Δ test mAP (points): 95% t-interval (black), two-level bootstrap (grey)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, "forest")


def dose_figure(dose: dict, out: Path, stem: str, title: str) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    backbones = list(dict.fromkeys(c["backbone"] for c in dose["cells"]))
    for c in dose["cells"]:
        i = backbones.index(c["backbone"])
        ax.plot(c["gap"], c["gain"], MARKERS[i % len(MARKERS)], color=OKABE_ITO[(i + 1) % len(OKABE_ITO)],
                fillstyle="none" if c["method"].endswith("@self") else "full")
    xs = [c["gap"] for c in dose["cells"]]
    line = [min(xs), max(xs)]
    ax.plot(line, [dose["intercept"] + dose["slope"] * x for x in line], color="black", linewidth=1)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("teacher − student-alone gap (validation mAP points)")
    ax.set_ylabel("gain over the student alone (test mAP points)")
    ax.set_title(f"{title}: slope {dose['slope']:+.2f} [{dose['low']:+.2f}, {dose['high']:+.2f}]", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, out, stem)


def write_frontier(runs_csv: Path, out: Path, gt=None, n_boot: int = 1000, seed: int = 0,
                   planned: int | None = None) -> Path:
    """FRONTIER.md and the frontier figures for ``runs_csv`` into ``out``; ``gt`` (the test split's COCO ground
    truth) enables the test-image bootstrap from the kept detections; ``planned``, the study's number of runs, marks
    a study still running."""
    runs_csv, out = Path(runs_csv), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_study_rows(runs_csv)
    points = points_of(rows)
    differences(points, rows)
    booted = add_bootstrap(points, rows, runs_csv.parent / "detections", gt, n_boot, seed)
    figures = [f for column, xlabel, stem in AXES
               if (f := frontier_figure(points, column, xlabel, out, f"frontier_{stem}"))]
    if forest := forest_figure(points, out):
        figures.append(forest)
    finished = sum(r["status"] == "ok" for r in rows)
    partial = ([f"**Partial: {finished} of the {planned} planned runs have finished; the study is still running, and "
                "every number below is provisional.**", ""] if planned and finished < planned else [])
    lines = ["# The compute frontier", "", *partial,
             f"- {len(rows)} runs, {len(points)} budget points; test mAP is COCO mAP@[.5:.95] on the test split.",
             "- Intervals: 95% Student-t over the runs of a row (or over its paired cells for a difference), and a "
             f"two-level bootstrap over runs and test images ({n_boot} resamples, seed {seed}; {booted} runs had "
             "their test detections kept): it adds the uncertainty of sampling the test images, which the "
             "t-interval leaves out. Holm over each detector's student comparisons.", "",
             "## Best model at each budget", "", "By parameters:", "", best_table(points, "params")]
    lines += ["By size on disk (the saved PyTorch model: int8 as `torch.export` programs, each with its serialized "
              "graph; fp16 as half-precision weights):", "", best_table(points, "size_mb")]
    if any(p.onnx_mb is not None for p in points):
        lines += ["By the size of the ONNX file that ONNX Runtime loads (what is deployed: int8 as int8 weights with "
                  "a compact graph; fp16 exported as the float32 it runs in on the CPU):", "",
                  best_table(points, "onnx_mb")]
    if any(p.cpu_ms is not None for p in points):
        lines += ["By measured CPU latency:", "", best_table(points, "cpu_ms")]
    lines += ["## Every budget point", "", points_table(points),
              "## Differences", "", "Students against `baseline` of their size (paired by seed) and against the "
              "controls at that size; compressed models against the run they were made from.", "",
              differences_table(points)]
    verdicts = transfer_lines(points)
    if verdicts:
        lines += ["## Transfer or regularisation", "", "A distillation gain is called transfer only when the row "
                  "beats the student alone and both controls (label smoothing: soft targets with no teacher; "
                  "self-distillation: a teacher of the student's own size) after Holm.", "", *verdicts, ""]
    for detector in dict.fromkeys(p.group.detector for p in points):
        mine = [p for p in points if p.group.detector == detector]
        dose = dose_response(mine, [r for r in rows if r["detector"] == detector])
        if dose:
            figures.append(dose_figure(dose, out, f"dose_{detector}", detector))
            lines += [f"## Dose-response: {detector}", "",
                      f"Gain of Hinton KD (and of self-distillation, open markers) over the student alone against "
                      f"the teacher-student gap, n = {dose['n']} cells: slope **{dose['slope']:+.3f} "
                      f"[{dose['low']:+.3f}, {dose['high']:+.3f}]** test points per validation point of gap "
                      f"(t, n − 2 df, p {dose['p']:.3f}), intercept {dose['intercept']:+.2f}. A slope above 0 means "
                      "the gain grows with what the teacher knows beyond the student; cells of one size share their "
                      "gap, so the slope rests on the number of distinct gaps more than on n.", ""]
    deviations = runs_csv.parent / "DEVIATIONS.md"  # what changed from the study's PLAN.md, and why
    lines += ["## Deviations from PLAN.md", "", deviations.read_text().strip() if deviations.is_file() else
              "None recorded (no DEVIATIONS.md beside runs.csv).", ""]
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures]
    path = out / "FRONTIER.md"
    path.write_text("\n".join(lines) + "\n")
    return path
