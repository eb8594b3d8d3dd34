"""Figures for the report (matplotlib, PNG and PDF): accuracy against cost with the Pareto front, per-class AP,
training curves. Colours are the Okabe-Ito palette and every method also has its own marker, so the figures read
in greyscale print and for colour-blind readers."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from study.groups import Group, pareto_front  # noqa: E402

OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]
MARKERS = ["*", "o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]


def log_axis(ax) -> None:
    """A log-scale x axis labelled in plain numbers (0.1, 2, 5, 10, 20 ...), not as 2x10^0."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}".lstrip("0.")[:1] in "25" else ""))


def _style(i: int) -> dict:
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[i % len(MARKERS)]}


def _label(g: Group) -> str:
    return f"{g.backbone} {g.method}"


def _save(fig, out: Path, stem: str) -> str:
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=150)
    fig.savefig(out / f"{stem}.pdf")
    plt.close(fig)
    return f"{stem}.png"


def accuracy_vs_cost(groups: list[Group], out: Path, column: str, xlabel: str, stem: str, log_x: bool
                     ) -> str | None:
    """One point per (detector, backbone, method): the colour names the model, the marker the method (None where
    no group has ``column``)."""
    shown = [g for g in groups if g.ok and g.mean(column) is not None and g.mean("map") is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    scale = 1e-6 if column == "params" else 1.0
    models = list(dict.fromkeys((g.detector, g.backbone) for g in shown))
    methods = list(dict.fromkeys(g.method for g in shown))
    several_detectors = len({g.detector for g in shown}) > 1
    points = []
    for g in shown:
        x, y, err = g.mean(column) * scale, g.mean("map"), g.std("map")
        points.append((x, y))
        style = {"color": OKABE_ITO[models.index((g.detector, g.backbone)) % len(OKABE_ITO)],
                 "marker": MARKERS[methods.index(g.method) % len(MARKERS)]}
        label = f"{g.detector} {_label(g)}" if several_detectors else _label(g)
        ax.errorbar(x, y, yerr=err, linestyle="none", markersize=8, capsize=3, label=label, **style)
    front = sorted((points[i] for i in pareto_front(points)), key=lambda p: p[0])
    if len(front) > 1:
        ax.plot(*zip(*front), linestyle="--", color="grey", linewidth=1, label="Pareto front", zorder=0)
    if log_x:
        log_axis(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("COCO mAP@[.5:.95] (test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out, stem)


def per_class_ap(groups: list[Group], out: Path) -> str | None:
    """Teacher, baseline and the best other method (by mean mAP), per class, mean over seeds."""
    groups = [g for g in groups if g.ok and all(r["per_class_ap"] for r in g.ok)]
    chosen = [g for g in groups if g.method in ("teacher", "baseline")]
    others = [g for g in groups if g.method not in ("teacher", "baseline")]
    if others:
        chosen.append(max(others, key=lambda g: g.mean("map")))
    if not chosen:
        return None
    classes = list(json.loads(chosen[0].ok[0]["per_class_ap"]))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(classes) + 2), 4))
    width = 0.8 / len(chosen)
    for i, g in enumerate(chosen):
        per_run = [json.loads(r["per_class_ap"]) for r in g.ok]
        means = [sum(p[c] for p in per_run) / len(per_run) for c in classes]
        ax.bar([k + i * width for k in range(len(classes))], means, width, label=_label(g),
               color=OKABE_ITO[i % len(OKABE_ITO)], hatch=["", "//", "..", "xx"][i % 4], edgecolor="black")
    ax.set_xticks([k + width * (len(chosen) - 1) / 2 for k in range(len(classes))], classes, rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("AP@[.5:.95] (test)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "per_class_ap")


def training_curves(groups: list[Group], runs_dir: Path, out: Path) -> str | None:
    """Total training loss and validation mAP per epoch, one line per method (first finished seed)."""
    curves = []
    for g in groups:
        for r in g.ok:
            path = runs_dir / r["run_id"] / "history.json"
            if path.is_file():
                curves.append((g, json.loads(path.read_text())))
                break
    if not curves:
        return None
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (g, history) in enumerate(curves):
        style = _style(i)
        ax_loss.plot([h["epoch"] for h in history], [h["loss"] for h in history], label=_label(g),
                     markersize=4, **style)
        val = [(h["epoch"], h["val_map"]) for h in history if "val_map" in h]
        ax_map.plot(*zip(*val), label=_label(g), markersize=4, **style)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (detector + weighted KD terms)")
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("validation mAP@[.5:.95]")
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
    ax_map.legend(fontsize=7)
    return _save(fig, out, "training_curves")


def write_figures(groups: list[Group], rows: list[dict], runs_dir: Path, out: Path) -> list[str]:
    names = [accuracy_vs_cost(groups, out, "params", "parameters (M, log scale)", "map_vs_params", True),
             accuracy_vs_cost(groups, out, "gflops", "GFLOPs per image (2 × GMACs)", "map_vs_gflops", False),
             # where pruning and int8 move: size on disk and measured latency
             accuracy_vs_cost(groups, out, "size_mb", "size on disk (MB, log scale)", "map_vs_size", True),
             accuracy_vs_cost(groups, out, "cpu_ms", "CPU latency (ms per image, batch 1)", "map_vs_latency", False),
             per_class_ap(groups, out), training_curves(groups, runs_dir, out)]
    return [n for n in names if n]
