"""Parity: a plain YOLO trained by this harness against the same model trained by ultralytics' own trainer.

Same data (the study's splits), image size, epochs, seed, batch and recipe (see
:data:`study.ultralytics_trainer.MATCHED_SETTINGS`), one machine, one after the other. Both trained models are scored
by the study's pycocotools evaluator on the study's test split; ultralytics' own validator's mAP on the same
split is recorded too. Writes ``parity.json`` and ``parity.md`` in ``out``.
"""
from __future__ import annotations

import copy
import json
import platform
import statistics
from pathlib import Path

import torch

from study.evaluate import evaluate
from study.plan import plan_runs
from study.runner import Study, describe_device
from study.store import read_runs
from study.ultralytics_trainer import MATCHED_SETTINGS, load_ultralytics_detector, ultralytics_train


def parity_profile(profile: dict, model: str, image_size: int, epochs: int, seed: int) -> dict:
    """``profile`` reduced to one plain YOLO ``model`` run (the teacher slot, no students)."""
    p = copy.deepcopy(profile)
    p["name"] = "parity"
    p.update(detectors=["yolo"], image_size=image_size, teacher_seeds=[seed])
    p["yolo"]["teacher"] = {"model": model, "epochs": epochs}
    p["yolo"]["methods"], p["yolo"]["compress"] = [], []
    return p


def run_parity(profile: dict, model: str, image_size: int, epochs: int, seed: int, out: Path,
               data_spec: str | None = None, device: str | None = None, log=print) -> dict:
    out = Path(out)
    p = parity_profile(profile, model, image_size, epochs, seed)
    study = Study(p, out / "harness", data_spec, device, progress=False, log=log)
    spec = plan_runs(p, study.data().name)[0]
    study.run([spec])  # skipped if it already finished in ``out``
    row = next(r for r in read_runs(study.runs_csv) if r["run_id"] == spec.run_id)
    harness_wall = float(row.get("wall_s") or row["train_s"])
    if row["status"] != "ok":
        raise RuntimeError(f"the harness's run failed: {row['error']}")
    history = json.loads((out / "harness" / "runs" / spec.run_id / "history.json").read_text())
    harness_img_s = statistics.median(h["img_s"] for h in history[1:] or history)

    cached, best = out / "ultralytics" / "result.json", out / "ultralytics" / "train" / "weights" / "best.pt"
    if cached.is_file() and best.is_file():  # ultralytics' side does not depend on the harness's settings
        theirs = json.loads(cached.read_text()) | {"detector": load_ultralytics_detector(best)}
    else:
        log(f"ultralytics trainer: {model}, {epochs} epochs at {image_size} px ...")
        theirs = ultralytics_train(study.data(), model, image_size, epochs, seed, p["yolo"]["train"]["batch_size"],
                                   out / "ultralytics", device=str(study.device))
        cached.write_text(json.dumps({k: v for k, v in theirs.items() if k != "detector"}, indent=1))
    test_set = study.image_set("test")
    their_metrics = evaluate(theirs["detector"].to(study.device), test_set, study.data().class_names, study.device)
    result = {
        "model": model, "image_size": image_size, "epochs": epochs, "seed": seed,
        "batch_size": p["yolo"]["train"]["batch_size"], "dataset": study.data().name,
        "test_images": len(test_set), "machine": describe_device(study.device),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "ultralytics": __import__("ultralytics").__version__},
        "harness": {"torch_threads": torch.get_num_threads(), "map": row["map"], "map50": row["map50"], "wall_s": harness_wall, "train_img_s": harness_img_s,
                    "best_epoch": row["best_epoch"]},
        "ultralytics": {"map": their_metrics["map"], "map50": their_metrics["map50"],
                        "own_validator_map": theirs.get("own_map"), "own_validator_map50": theirs.get("own_map50"),
                        "wall_s": theirs["wall_s"], "train_img_s": theirs["img_s"],
                        "torch_threads": theirs["torch_threads"], "dataloader_workers": theirs["dataloader_workers"]},
        "ultralytics_settings": MATCHED_SETTINGS | {"nbs": p["yolo"]["train"]["batch_size"], "workers": 2},
    }
    result["map_difference_points"] = (float(row["map"]) - their_metrics["map"]) * 100
    (out / "parity.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "parity.md").write_text(parity_markdown(result))
    return result


def run_parity_seeds(profile: dict, model: str, image_size: int, epochs: int, seeds: list[int], out: Path,
                     data_spec: str | None = None, device: str | None = None, log=print) -> dict:
    """:func:`run_parity` for each seed (in ``out/s<seed>``; finished runs of either side are reused), then the
    mean and spread of both."""
    out = Path(out)
    per_seed = [run_parity(profile, model, image_size, epochs, seed, out / f"s{seed}", data_spec, device, log)
                for seed in seeds]
    summary = {"model": model, "image_size": image_size, "epochs": epochs, "seeds": seeds, "per_seed": per_seed}
    for who in ("harness", "ultralytics"):
        maps = [float(r[who]["map"]) for r in per_seed]
        summary[who] = {"map_mean": statistics.mean(maps), "map_std": statistics.stdev(maps) if len(maps) > 1 else 0.0,
                        "train_img_s": statistics.median(r[who]["train_img_s"] for r in per_seed)}
    diffs = [r["map_difference_points"] for r in per_seed]
    summary["difference_points_mean"] = statistics.mean(diffs)
    (out / "parity.json").write_text(json.dumps(summary, indent=1, default=float))
    lines = [f"# Parity over seeds {seeds}: {model}, {image_size} px, {epochs} epochs", "",
             "Each seed: the harness and ultralytics' trainer, same settings, one after the other on one machine; "
             "both scored by the study's pycocotools evaluator on the test split. Per-seed details in `s<seed>/parity.md`.",
             "", "| trainer | mAP50-95 mean ± std | per seed | train img/s (median) |", "|---|---|---|---|"]
    for who, label in (("harness", "this harness"), ("ultralytics", "ultralytics' trainer")):
        seeds_text = ", ".join(f"{float(r[who]['map']):.3f}" for r in per_seed)
        lines.append(f"| {label} | {summary[who]['map_mean']:.3f} ± {summary[who]['map_std']:.3f} | {seeds_text} | "
                     f"{summary[who]['train_img_s']:.1f} |")
    lines += ["", f"Mean difference (harness - ultralytics): {summary['difference_points_mean']:+.2f} mAP points.", "",
              f"Command: `python -m study parity --model {model} --image-size {image_size} --epochs {epochs} --seeds "
              f"{' '.join(map(str, seeds))}` (the defaults of `nox -s parity`). Finished runs of either side are "
              "reused, so a rerun only re-scores them.", ""]
    (out / "parity.md").write_text("\n".join(lines))
    return summary


def parity_markdown(r: dict) -> str:
    h, u = r["harness"], r["ultralytics"]
    own = f"{u['own_validator_map']:.3f}" if u["own_validator_map"] is not None else "n/a"
    return "\n".join([
        f"# Parity: {r['model']} trained by this harness vs ultralytics' trainer", "",
        f"{r['dataset']}, {r['image_size']} px, {r['epochs']} epochs, seed {r['seed']}, batch {r['batch_size']}; "
        f"test split ({r['test_images']} images); {r['machine']}; torch {r['versions']['torch']}, "
        f"ultralytics {r['versions']['ultralytics']}.", "",
        "| trainer | mAP50-95 (pycocotools) | AP50 (pycocotools) | ultralytics' own validator mAP50-95 | "
        "train img/s | wall s |",
        "|---|---|---|---|---|---|",
        f"| this harness | {float(h['map']):.3f} | {float(h['map50']):.3f} | - | {h['train_img_s']:.1f} | "
        f"{h['wall_s']:.0f} |",
        f"| ultralytics | {u['map']:.3f} | {u['map50']:.3f} | {own} | {u['train_img_s']:.1f} | {u['wall_s']:.0f} |",
        "", f"Threads: the harness {h['torch_threads']} torch threads, data in memory; ultralytics "
        f"{u['torch_threads']} torch thread(s) (its own CPU choice) plus {u['dataloader_workers']} dataloader workers.",
        "", f"Difference (harness - ultralytics): {r['map_difference_points']:+.2f} mAP points.", "",
        "Ultralytics' settings: " + ", ".join(f"{k}={v}" for k, v in r["ultralytics_settings"].items()), ""])
