"""Is a study's latency pass trustworthy? Time the models of a results folder again in several independent
interleaved passes (the study's own procedure, ``study.cost.interleaved_latency``, with other orders) and print how
far identical architectures (same detector, backbone and parameter count, as the report groups them) lie apart in
each, how well the models' ranks agree between passes (Spearman; the study's own pass, runs.csv's cpu_ms,
included), each method's mean latency relative to its pass's median, and the correlation of latency with how many
boxes a model keeps on the timed images. Changes nothing in the folder.

    python scripts/latency_passes.py results/default 3 [--json FILE]   # needs the folder's checkpoints
    python scripts/latency_passes.py results/default --from-json FILE  # the analysis again, from a saved JSON

Run it with nothing else on the machine (it times, like the study's pass).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        out = [0] * len(v)
        for r, i in enumerate(order):
            out[i] = r
        return out
    return statistics.correlation(ranks(a), ranks(b))


def measure(folder: Path, rows: list[dict], passes: int) -> dict:
    import torch

    from study.cost import interleaved_latency
    from study.defaults import load_profile
    from study.runner import Study
    profile = load_profile(rows[0]["profile"])
    study = Study(profile, folder, progress=False, log=lambda *_: None)
    models = {r["run_id"]: study.evaluated_model(study.kept_spec(r["run_id"]))[0] for r in rows}
    cfg, test = profile["cost"], study.image_set("test").images
    images = [test[i].float().div(255) for i in range(min(cfg["images"], len(test)))]
    with torch.inference_mode():
        boxes = {k: [len(o["boxes"]) for o in m.eval()(images)] for k, m in models.items()}
    timed = {str(p): interleaved_latency(models, images, cfg, seed=100 + p) for p in range(passes)}
    return {"boxes": boxes, "passes": timed}


def analyse(rows: list[dict], data: dict) -> None:
    """``rows``: the folder's runs (the study's own pass is their ``cpu_ms``); ``data``: :func:`measure`'s."""
    passes = {p: {k: v["cpu_ms"] for k, v in t.items()} for p, t in data["passes"].items()}
    passes["study"] = {r["run_id"]: float(r["cpu_ms"]) for r in rows}
    groups: dict[tuple, list[dict]] = {}  # identical architectures, as the report groups them
    for r in rows:
        groups.setdefault((r["detector"], r["backbone"], r["params"]), []).append(r)
    for (detector, backbone, _), members in groups.items():
        keys = [r["run_id"] for r in members]
        if len(keys) < 2:
            continue
        print(f"{detector} {backbone} ({len(keys)} models)")
        for p, t in passes.items():
            v = [t[k] for k in keys]
            print(f"  pass {p}: {min(v):.2f}-{max(v):.2f} ms, max/min {max(v) / min(v):.3f}")
        for a, b in itertools.combinations(passes if len(keys) > 2 else [], 2):  # (two models: always +-1)
            print(f"  Spearman of the models' latencies, pass {a} vs {b}: "
                  f"{spearman([passes[a][k] for k in keys], [passes[b][k] for k in keys]):+.2f}")
        for method in dict.fromkeys(r["method"] for r in members):
            ks = [r["run_id"] for r in members if r["method"] == method]
            rel = [statistics.mean(t[k] for k in ks) / statistics.median(t[k] for k in keys) for t in passes.values()]
            print(f"  {method} ({len(ks)}): mean / pass median = {', '.join(f'{x:.4f}' for x in rel)}")
        kept = [sum(data["boxes"][k]) for k in keys]
        if len(keys) > 2:
            print("  Pearson r of latency with boxes kept on the timed images: "
                  + ", ".join(f"{statistics.correlation(kept, [t[k] for k in keys]):+.2f}" for t in passes.values())
                  + f" (boxes per image {min(min(data['boxes'][k]) for k in keys)}-"
                  f"{max(max(data['boxes'][k]) for k in keys)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("passes", type=int, nargs="?", default=3)
    parser.add_argument("--json", type=Path, help="save the timings here")
    parser.add_argument("--from-json", type=Path, help="analyse saved timings instead of timing")
    args = parser.parse_args()
    from study.store import read_runs
    rows = [r for r in read_runs(args.folder / "runs.csv") if r["status"] == "ok"]
    data = json.loads(args.from_json.read_text()) if args.from_json else measure(args.folder, rows, args.passes)
    if args.json:
        args.json.write_text(json.dumps(data))
    analyse(rows, data)


if __name__ == "__main__":
    main()
