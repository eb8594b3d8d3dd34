"""``bench.md``: the benchmark's figures (:func:`study.bench.benchmarks.run_bench`'s ``bench.json``) as tables."""
from __future__ import annotations


def bench_markdown(r: dict) -> str:
    lines = [f"# Benchmark: {r['machine']}", "",
             f"torch {r['versions']['torch']}, ultralytics {r['versions']['ultralytics']}, python "
             f"{r['versions']['python']}; {r['torch_threads']} torch threads; {r['dataset']} at {r['image_size']} px; "
             f"{r['settings']['train_images']} training images; our loop: {r['settings']['epochs']} epochs per plain "
             f"measurement, 1 per distilled one; reference tools: {r['settings']['reference_epochs']} epochs, the "
             "first dropped. "
             f"Benchmark wall time {r['bench_wall_s'] / 60:.1f} min.", "",
             "## Data pipeline", "",
             "| pipeline | images/s |", "|---|---|",
             f"| decode + resize JPEGs every epoch | {r['data']['decode_img_s']:.0f} |",
             f"| harness: decoded once, batches cut from memory (after the first epoch) | {r['data']['cached_img_s']:.0f} |",
             "", "## Training throughput (our loop)", "",
             "Images/s, median over the epochs. A distilled student is measured twice: with the teacher run at every "
             "step (cache off: a study's first epoch) and with every (image, flip) already in the teacher cache (a "
             "study's later epochs). Overhead = the plain student's step time / the distilled step time.", "",
             "| detector | role | model | method | img/s | img/s, teacher every step | img/s, teacher cached | "
             "overhead, every step | overhead, cached |",
             "|---|---|---|---|---|---|---|---|---|"]
    plain = {t["detector"]: t["img_s"] for t in r["training"] if t["method"] == "baseline"}
    for t in r["training"]:
        if "img_s" in t:
            lines.append(f"| {t['detector']} | {t['role']} | {t['model']} | {t['method']} | {t['img_s']:.1f} | - | - "
                         f"| - | - |")
            continue
        base = plain[t["detector"]]
        off, warm = t["img_s_cache_off"], t["img_s_cache_warm"]
        lines.append(f"| {t['detector']} | {t['role']} | {t['model']} | {t['method']} | - | {off:.1f} | {warm:.1f} | "
                     f"{base / off:.2f}x | {base / warm:.2f}x |")
    layout = [t for t in r["training"] if "img_s_nchw" in t]
    if layout:
        lines += ["", "Training memory layout (plain runs; the loop trains channels-last, results are NCHW):", "",
                  "| detector | role | model | NCHW img/s | channels-last img/s | speed-up |", "|---|---|---|---|---|---|"]
        lines += [f"| {t['detector']} | {t['role']} | {t['model']} | {t['img_s_nchw']:.1f} | {t['img_s']:.1f} | "
                  f"{t['img_s'] / t['img_s_nchw']:.2f}x |" for t in layout]
    lines += ["", "GFLOPs per image (teacher / student): " + ", ".join(
        f"{d} {f['teacher']:.2f} / {f['student']:.2f} ({f['teacher'] / f['student']:.1f}x)" for d, f in r["flops"].items()),
        "", "## Against the tools a user would otherwise pick (same model, images, recipe, machine)", ""]
    lines += ["Each row compares the two loops at the same precision (bf16 under autocast where the reference can run "
              "it: torchvision's loop can, ultralytics' trainer runs fp32 on a CPU); bf16's own gain in this "
              "project's loop is the last column.", "",
              "| detector | model | precision | reference tool | theirs img/s | ours img/s | ours / theirs |",
              "|---|---|---|---|---|---|---|"]
    for x in r["reference"]:
        theirs = "–" if x["theirs_img_s"] is None else f"{x['theirs_img_s']:.1f}"
        ratio = "–" if x["theirs_img_s"] is None else f"{x['ours_img_s'] / x['theirs_img_s']:.2f}x"
        lines.append(f"| {x['detector']} | {x['model']} | {x.get('precision', 'fp32')} | {x['tool']} | {theirs} | "
                     f"{x['ours_img_s']:.1f} | {ratio} |")
    gains = bf16_gains(r["reference"])
    if gains:
        lines += ["", "bf16's own gain in this project's loop (bf16 img/s over fp32 img/s, same model and images): "
                  + ", ".join(f"{d} {m} {g:.2f}x" for (d, m), g in gains.items()) + "."]
    if r.get("teacher_forward"):
        lines += ["", "## The teacher's feature pass (what the distiller caches), images/s", "",
                  "| detector | teacher | NCHW, no_grad | NCHW, inference_mode | channels-last, no_grad (used) |",
                  "|---|---|---|---|---|"]
        for t in r["teacher_forward"]:
            lines.append(f"| {t['detector']} | {t['model']} | {t['no_grad']:.1f} | {t['inference_mode']:.1f} | "
                         f"{t['no_grad+channels_last']:.1f} |")
    lines += ["", "## Evaluation and latency", "",
              "| detector | role | model | inference s / 100 images | pycocotools s / 100 images | CPU ms (batch 1) | GPU ms |",
              "|---|---|---|---|---|---|---|"]
    for e, lat in zip(r["eval"], r["latency_ms"]):
        gpu = f"{lat['gpu_ms']:.1f}" if lat["gpu_ms"] is not None else "-"
        lines.append(f"| {e['detector']} | {e['role']} | {e['model']} | {e['inference_s_per_100']:.2f} | "
                     f"{e['pycocotools_s_per_100']:.2f} | {lat['cpu_ms']:.1f} | {gpu} |")
    lines += ["", "## Study wall time: how it grows", "",
              "A small study (every detector: teacher, baseline, Hinton) at a base size and with one factor doubled; "
              "'serial' runs one run at a time with every thread (how studies ran before worker processes).", "",
              "| size | training images | epochs | seeds | runs | workers x threads | wall s |",
              "|---|---|---|---|---|---|---|"]
    for s in r["scaling"]:
        lines.append(f"| {s['size']} | {s['train_images']} | {s['epochs']} | {s['seeds']} | {s['runs']} | "
                     f"{s.get('workers', 1)} x {s.get('threads', '-')} | {s['wall_s']:.0f} |")
    if r.get("default_study"):
        lines += ["", "Last `default` study (results/default/runs.csv), summed per detector: " + "; ".join(
            f"{d}: {v['runs']} runs, training {v['train_s'] / 60:.1f} min" +
            (f", run wall {v['wall_s'] / 60:.1f} min ({v['wall_recorded']} runs recorded)" if v["wall_recorded"] else "")
            for d, v in r["default_study"].items())]
        overhead = [(d, m, t / v["method_train_s"]["baseline"]) for d, v in r["default_study"].items()
                    if "baseline" in v.get("method_train_s", {}) for m, t in v["method_train_s"].items()
                    if m != "baseline" and "prune" not in m]
        if overhead:
            lines += ["", "Whole-run distillation overhead in that study (a method's mean training time over its "
                      "seeds / the baseline's; the teacher runs until the cache holds every (image, flip)): " +
                      ", ".join(f"{d} {m} {x:.2f}x" for d, m, x in overhead)]
    return "\n".join(lines) + "\n"


def bf16_gains(reference: list[dict]) -> dict[tuple[str, str], float]:
    """(detector, model) -> our loop's bf16 images/s over its fp32 images/s, where both were measured."""
    by = {(x["detector"], x["model"], x.get("precision", "fp32")): x["ours_img_s"] for x in reference}
    return {(d, m): by[(d, m, "bf16")] / v for (d, m, p), v in by.items() if p == "fp32" and (d, m, "bf16") in by}

