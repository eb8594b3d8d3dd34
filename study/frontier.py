"""The compute frontier of a study: which method gives the best detector for the least compute.

Computes, from a study's rows (and, where kept, its runs' test detections), everything the frontier report shows;
:mod:`study.frontier_report` renders it. Each group (detector, backbone, method) is one budget point, placed in a
method class (:func:`method_class`); its accuracy is the mean test mAP over its runs with a 95% t-interval and,
where detections were kept, a two-level bootstrap interval over runs and test images (:mod:`study.bootstrap`).

- Differences: each student row against ``baseline`` of its size (paired by student seed, the cells spanning
  the teachers); at the sizes that have them, against the two controls, label smoothing (``ls``) and
  self-distillation (``hinton@self``); a compressed model against the run it was made from, and a
  quantization-aware int8 row against post-training int8 (and, with KD, plain QAT) of the same source. Holm over
  each detector's student comparisons.
- Transfer or regularisation: a distillation row's gain is called transfer only when it beats ``baseline`` and
  both controls after correction; a gain over ``baseline`` that a control matches could be regularisation.
- Dose-response: per distilled (Hinton) cell, its gain over ``baseline`` of the same seed against the
  teacher-student gap of its size (the teacher's validation mAP minus the size's mean ``baseline`` validation
  mAP; validation, so that the test noise of a cell's baseline does not enter both axes); the OLS slope with a
  t-interval (n − 2 df). Self-distillation cells are the gap-near-zero points.
- Best at each budget: for every budget point (a student size or a compressed teacher), the most accurate model
  whose parameters (or latency) are at most that point's.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field

from study.groups import Group, group_runs, pareto_front
from study.stats import holm, paired_summary, t_quantile

SELF = "@self"
CONTROLS = ("ls", "hinton" + SELF)  # the two controls a distillation gain must exceed
FEATURE_METHODS = ("pkd", "cwd", "fgfi")  # detection-specific feature distillation
CLASSIC = ("fitnets", "at", "nst")
# the quantized rows a quantization-aware row is also compared with (besides the float model it was made from)
QAT_REFERENCES = {"int8-qat": ("int8",), "int8-qat+kd": ("int8", "int8-qat")}


def method_class(method: str, role: str) -> str:
    """The line of the frontier a group belongs to."""
    if method == "self-teacher":
        return "self-teacher"
    if role == "teacher":
        return "teacher"
    if method.startswith("prune"):
        return "pruned teacher + KD" if "+kd" in method else "pruned teacher"
    if method in ("int8", "fp16"):
        return method
    if method.startswith("int8-qat"):
        return "int8 QAT + KD" if method.endswith("+kd") else "int8 QAT"
    if method == "baseline":
        return "student alone"
    if method == "baseline-long":
        return "student alone, 2x epochs"
    if method == "ls":
        return "label smoothing (control)"
    if method.endswith(SELF):
        return "self-distillation (control)"
    if method == "self-teacher":
        return "self-teacher"
    if method == "hinton":
        return "Hinton KD"
    if method in FEATURE_METHODS:
        return "feature KD (detection)"
    if method in CLASSIC:
        return f"classic KD ({method})"
    return f"other KD ({method})"


@dataclass
class Point:
    """One group as a budget point: its costs, its accuracy and the intervals on it."""
    group: Group
    role: str  # teacher, student, compressed
    cls: str
    params: float | None
    gflops: float | None
    size_mb: float | None
    cpu_ms: float | None
    map: float
    t_low: float | None
    t_high: float | None
    val_map: float | None
    onnx_mb: float | None = None  # the exported ONNX file, where the latency pass ran in ONNX Runtime
    boot: dict | None = None  # two-level bootstrap interval of the mean mAP
    diffs: dict = field(default_factory=dict)  # reference name -> paired summary (+ bootstrap, Holm)

    @property
    def label(self) -> str:
        return f"{self.group.backbone} {self.group.method}"


def _role(g: Group, teacher_models: set) -> str:
    if g.method in ("teacher", "self-teacher"):
        return "teacher"
    # a compressed row names its compression (fp16's settings are empty) and the run it was made from
    if (g.detector, g.backbone) in teacher_models or any("compress" in json.loads(r["hparams"] or "{}")
                                                         for r in g.ok):
        return "compressed"
    return "student"


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """The t-interval of a mean over runs (None with fewer than two)."""
    if len(values) < 2:
        return None, None
    half = t_quantile(level, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    m = statistics.fmean(values)
    return m - half, m + half


def points_of(rows: list[dict]) -> list[Point]:
    """Every group with finished runs as a budget point."""
    groups = [g for g in group_runs(rows) if g.ok and g.mean("map") is not None]
    teacher_models = {(g.detector, g.backbone) for g in groups if g.method == "teacher"}
    out = []
    for g in groups:
        role = _role(g, teacher_models)
        low, high = mean_interval(g.values("map"))
        params = g.mean("params")
        out.append(Point(g, role, method_class(g.method, role), params and params * 1e-6, g.mean("gflops"),
                         g.mean("size_mb"), g.mean("cpu_ms"), g.mean("map"), low, high, g.mean("val_map"),
                         onnx_mb=g.mean("onnx_mb")))
    return out


def source_of(row: dict) -> str | None:
    return json.loads(row["hparams"] or "{}").get("source_run")


def differences(points: list[Point], rows: list[dict]) -> None:
    """Fill each point's ``diffs``: students against ``baseline`` of their size and against the controls present
    at it (paired by seed); compressed models against their source run (each run minus the run it was made from), and
    quantization-aware rows against post-training int8 of the same source and (+KD) plain QAT of the same seed.
    Holm over each detector's comparisons; a verdict per comparison."""
    by_key = {(p.group.detector, p.group.backbone, p.group.method): p for p in points}
    map_of = {r["run_id"]: float(r["map"]) for r in rows if r["status"] == "ok" and r.get("map") not in (None, "")}
    for p in points:
        g = p.group
        if p.role == "student":
            refs = ["baseline"] if g.method != "baseline" else []
            if g.method not in ("baseline", "baseline-long") + CONTROLS and g.method != "self-teacher":
                refs += [c for c in CONTROLS if (g.detector, g.backbone, c) in by_key]
            for ref in refs:
                other = by_key.get((g.detector, g.backbone, ref))
                if other is None:
                    continue
                mine, theirs = g.by_seed("map"), other.group.by_seed("map")
                seeds = sorted(set(mine) & set(theirs))
                p.diffs[ref] = paired_summary([mine[s] - theirs[s] for s in seeds]) | {
                    "seeds": seeds, "pairs": [(_run_of(g, s), _run_of(other.group, s)) for s in seeds]}
        elif p.role == "compressed":
            pairs = [(r["run_id"], source_of(r)) for r in g.ok if source_of(r) in map_of]
            if pairs:
                p.diffs["source"] = paired_summary([map_of[a] - map_of[b] for a, b in pairs]) | {"pairs": pairs}
            for ref in QAT_REFERENCES.get(g.method, ()):  # QAT against post-training int8, +KD against plain QAT
                other = by_key.get((g.detector, g.backbone, ref))
                if other is None:
                    continue
                # post-training int8 runs once per source; QAT once per (source, seed)
                key = (lambda r: source_of(r)) if ref == "int8" else (lambda r: (source_of(r), int(r["seed"])))
                theirs = {key(r): r["run_id"] for r in other.group.ok}
                pairs = [(r["run_id"], theirs[key(r)]) for r in g.ok if theirs.get(key(r)) in map_of]
                if pairs:
                    p.diffs[ref] = paired_summary([map_of[a] - map_of[b] for a, b in pairs]) | {"pairs": pairs}
    for detector in {p.group.detector for p in points}:
        family = {(i, ref): d["p"] for i, p in enumerate(points) if p.group.detector == detector
                  for ref, d in p.diffs.items() if p.role == "student"}
        for (i, ref), h in holm(family).items():
            points[i].diffs[ref] |= {"p_adj": h["p_adj"], "holm_family": len(family),
                                     "reject": h["reject"]}
    for p in points:
        for d in p.diffs.values():
            d["verdict"] = verdict(d)


def _run_of(g: Group, seed: int) -> str:
    return next(r["run_id"] for r in g.ok if int(r["seed"]) == seed)


def verdict(d: dict) -> str:
    """A comparison's verdict: after Holm where it was in a family, else at its own 95% interval."""
    if d.get("mean") is None or d.get("low") is None:
        return "one run: no interval over runs" if d.get("n") == 1 else "too few pairs"
    significant = d["reject"] if "reject" in d else (d["low"] > 0 or d["high"] < 0)
    if not significant:
        return "not significant"
    return "significant gain" if d["mean"] > 0 else "significant loss"


def transfer_verdicts(points: list[Point]) -> list[dict]:
    """Per distillation row that has at least one control at its size: gain over baseline, over each control, and
    whether the gain is transfer (beats baseline and every control present, after Holm) or could be
    regularisation."""
    out = []
    for p in points:
        if p.role != "student" or not any(c in p.diffs for c in CONTROLS) or "baseline" not in p.diffs:
            continue
        gain = p.diffs["baseline"]["verdict"] == "significant gain"
        beats = {c: p.diffs[c]["verdict"] == "significant gain" for c in CONTROLS if c in p.diffs}
        missing = [c for c in CONTROLS if c not in p.diffs]
        if not gain:
            call = "no gain over the student alone"
        elif all(beats.values()) and not missing:
            call = "transfer: beats both controls"
        elif all(beats.values()):
            call = f"beats {', '.join(beats)}; {', '.join(missing)} not measured here"
        else:
            call = "could be regularisation: a control matches it"
        out.append({"point": p, "call": call, "beats": beats, "missing": missing})
    return out


def dose_response(points: list[Point], rows: list[dict], method: str = "hinton") -> dict | None:
    """OLS of the per-cell gain of ``method`` (and its self-distilled variant) over ``baseline`` of the same size
    and seed (test mAP points) on the teacher-student gap (validation mAP points: the cell's teacher's validation
    mAP minus the size's mean ``baseline`` validation mAP). Returns the cells, the slope, intercept, its
    t-interval (n − 2 df) and p, or None with fewer than three cells or a single gap."""
    val_of = {r["run_id"]: float(r["val_map"]) for r in rows if r["status"] == "ok" and r.get("val_map")}
    by_key = {(p.group.detector, p.group.backbone, p.group.method): p for p in points}
    cells = []
    for p in points:
        g = p.group
        if p.role != "student" or g.method not in (method, method + SELF):
            continue
        base = by_key.get((g.detector, g.backbone, "baseline"))
        if base is None or base.val_map is None:
            continue
        base_map = base.group.by_seed("map")
        for r in g.ok:
            teacher = json.loads(r["hparams"] or "{}").get("teacher_run")
            seed = int(r["seed"])
            if teacher not in val_of or seed not in base_map:
                continue
            cells.append({"detector": g.detector, "backbone": g.backbone, "method": g.method, "seed": seed,
                          "gap": (val_of[teacher] - base.val_map) * 100,
                          "gain": (float(r["map"]) - base_map[seed]) * 100})
    return ols(cells)


def ols(cells: list[dict], level: float = 0.95) -> dict | None:
    """Least squares of ``gain`` on ``gap`` over the cells: slope b = Σ(x − x̄)(y − ȳ) / Σ(x − x̄)², intercept
    ȳ − b·x̄, se(b) = √(Σ residual² / (n − 2) / Σ(x − x̄)²), a t-interval and two-sided p with n − 2 df."""
    from study.stats import t_two_sided_p
    n = len(cells)
    if n < 3:
        return None
    x, y = [c["gap"] for c in cells], [c["gain"] for c in cells]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return None
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    intercept = my - slope * mx
    rss = sum((b - intercept - slope * a) ** 2 for a, b in zip(x, y))
    se = math.sqrt(rss / (n - 2) / sxx)
    half = t_quantile(level, n - 2) * se
    p = t_two_sided_p(slope / se, n - 2) if se > 0 else (0.0 if slope else 1.0)
    return {"cells": cells, "n": n, "slope": slope, "intercept": intercept, "low": slope - half,
            "high": slope + half, "p": p}


def best_at_budgets(points: list[Point], column: str = "params") -> list[dict]:
    """For each budget point (a student size's ``baseline`` or a teacher or compressed teacher): the most accurate
    model with at most its ``column`` (params, gflops, size_mb, onnx_mb or cpu_ms), and the runner-up, per detector."""
    out = []
    for detector in dict.fromkeys(p.group.detector for p in points):
        mine = [p for p in points if p.group.detector == detector and getattr(p, column) is not None
                and p.cls not in ("self-teacher",)]
        budgets = sorted({getattr(p, column) for p in mine if p.group.method == "baseline" or p.role != "student"})
        for budget in budgets:
            fits = sorted((p for p in mine if getattr(p, column) <= budget * 1.001), key=lambda p: -p.map)
            if fits:
                out.append({"detector": detector, "budget": budget, "best": fits[0],
                            "runner_up": fits[1] if len(fits) > 1 else None})
    return out


def pareto(points: list[Point], column: str) -> list[Point]:
    """The points no other point of the same detector beats on (``column`` lower, mAP higher)."""
    out = []
    for detector in dict.fromkeys(p.group.detector for p in points):
        mine = [p for p in points if p.group.detector == detector and getattr(p, column) is not None
                and p.group.method != "self-teacher"]
        front = pareto_front([(getattr(p, column), p.map) for p in mine])
        out += sorted((mine[i] for i in front), key=lambda p: getattr(p, column))
    return out
