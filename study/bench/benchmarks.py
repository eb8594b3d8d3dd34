"""What the harness itself costs, measured in one run on one machine, against the tools a user would pick instead.

``python -m study bench`` (``nox -s bench``) writes ``bench.json`` and ``bench.md``:

- data: images/s of the harness's pipeline after the first epoch (decoded once, batches cut from memory) against
  decoding and resizing the JPEGs every epoch;
- training images/s of each detector's teacher and student, plain and with each distillation method, on the same
  subset of the training split (2 epochs: the first computes the teacher, the second reads its cache), and the
  distillation overhead (step time with the teacher / without), also for a teacher with 3-4x the student's FLOPs;
- the same models trained by the reference tools in the same run: torchvision's stock detection loop (a
  ``DataLoader`` decoding JPEGs in workers, as in torchvision's ``references/detection``) for Faster R-CNN and
  ultralytics' own trainer for YOLO; the ratio ours / theirs;
- evaluation time per 100 images (inference, then pycocotools) and batch-1 latency per model;
- how a study's wall time grows with images, epochs and seeds: a small study at a base size and with each doubled,
  and the base study run serially (one run at a time with every thread) against worker processes;
- before / after training in channels-last, for each plain teacher and student.

Throughput figures are medians over the measured epochs; nothing here is a test (the tests do not time anything).
The reference tools' loops are :mod:`study.bench.reference_tools`'s (ultralytics' trainer: :mod:`study.ultralytics_trainer`); the tables are written by :mod:`study.bench.markdown`.
"""
from __future__ import annotations

import copy
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from detectors import declaration
from methods.distill.distiller import Distiller, TeacherCache
from study.cost import count_gflops, latency_ms
from study.data import DetectionData
from study.defaults import PROJECT_ROOT
from study.evaluate import coco_ground_truth, coco_metrics, predict
from study.images import ImageSet, canvas_size, flip_batch, load_images
from study.bench.markdown import bench_markdown
from study.plan import RunSpec, detector_config, plan_detector
from study.runner import Study, build_model, describe_device
from study.store import read_runs
from study.bench.reference_tools import torchvision_stock_train
from study.train import train, trains_bf16

BENCH_DEFAULTS = {"train_images": 96, "epochs": 2, "val_images": 8, "reference_epochs": 3, "eval_images": 72,
                  "scaling_base": {"max_train_images": 16, "epochs": 2, "seeds": [0]}}


# ------------------------------------------------------------------ data pipeline
def bench_data(study: Study, n_images: int, batch_size: int) -> dict:
    data = study.data()
    samples = data.splits["train"][:n_images]
    canvas = canvas_size([s for v in data.splits.values() for s in v], study.profile["image_size"])
    start = time.perf_counter()
    images = load_images(samples, canvas, study.profile["image_size"])  # decode + resize: what every epoch pays
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):  # what an epoch costs once images are in memory
        idx = list(range(i, min(i + batch_size, len(images))))
        batch, _ = flip_batch(images.images[idx], [images.boxes[j] for j in idx], [j % 4 for j in idx])
        batch.float().div_(255)
    cached_s = time.perf_counter() - start
    return {"images": len(samples), "decode_img_s": len(samples) / decode_s, "cached_img_s": len(samples) / cached_s}


# ------------------------------------------------------------------ our loop
def _subset(image_set: ImageSet, n: int) -> ImageSet:
    return ImageSet(image_set.images[:n], image_set.boxes[:n], image_set.labels[:n], image_set.scales[:n],
                    image_set.samples[:n])


def bench_train(study: Study, spec: RunSpec, teacher: torch.nn.Module | None, train_set: ImageSet,
                val_set: ImageSet, epochs: int, work: Path, cache: str = "warm", **train_cfg) -> dict:
    """Images/s of our loop training ``spec``'s model, per epoch; distilled from ``teacher`` if given, with the
    teacher's outputs either computed at every step (``cache="off"``) or all in the cache already (``"warm"``:
    every (image, flip) pair is filled before the timed epochs, as after the first few epochs of a study)."""
    classes = study.data().class_names
    model = build_model(spec, len(classes))
    cfg = dict(spec.hparams["train"], val_every=10**6, **train_cfg)
    if teacher is not None:
        teacher_cache = TeacherCache(copy.deepcopy(teacher).to(study.device), 4096 if cache == "warm" else 0)
        distiller = Distiller(model, teacher_cache, spec.hparams["distill"])
        if cache == "warm":
            _fill_cache(distiller, train_set, study.device)
        wrapped, loss_fn = distiller, distiller
    else:
        wrapped, loss_fn = model, (lambda images, targets, keys: model(images, targets))
    result = train(wrapped, loss_fn, model, train_set, val_set, classes, cfg, epochs, spec.seed, work, study.device,
                   progress=False)
    return {"epoch_img_s": [h["img_s"] for h in result["history"]]}


@torch.no_grad()
def _fill_cache(distiller: Distiller, train_set: ImageSet, device: torch.device, batch_size: int = 8) -> None:
    """Run the distiller once over every (image, flip code) so that its teacher cache holds them all."""
    distiller.to(device).train()
    for code in range(4):
        for start in range(0, len(train_set), batch_size):
            idx = list(range(start, min(start + batch_size, len(train_set))))
            images, boxes = flip_batch(train_set.images[idx], [train_set.boxes[i] for i in idx], [code] * len(idx))
            targets = [{"boxes": b.to(device), "labels": train_set.labels[i].to(device)} for b, i in zip(boxes, idx)]
            distiller(list(images.to(device).float().div_(255)), targets, [(i, code) for i in idx])


def bench_teacher_forward(teacher: torch.nn.Module, images: torch.Tensor, device: torch.device, repeats: int = 5
                          ) -> dict:
    """Images/s of the frozen teacher's feature pass (what the distiller's cache computes) under ``no_grad`` and
    ``inference_mode`` with contiguous (NCHW) weights and input, and under ``no_grad`` in channels-last (what
    :class:`TeacherCache` uses)."""
    features = declaration(teacher)["teacher"]
    model = copy.deepcopy(teacher).to(device).eval()
    out = {}
    for label in ("no_grad", "inference_mode", "no_grad+channels_last"):
        layout = torch.channels_last if label.endswith("channels_last") else torch.contiguous_format
        model.to(memory_format=layout)
        x = images.to(device).contiguous(memory_format=layout)
        context = torch.inference_mode if label == "inference_mode" else torch.no_grad
        with context():
            features(model, x)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                features(model, x)
            if device.type == "cuda":
                torch.cuda.synchronize()
        out[label] = repeats * len(x) / (time.perf_counter() - start)
    return out


# ------------------------------------------------------------------ evaluation and latency
def bench_eval(model: torch.nn.Module, test_set: ImageSet, classes: list[str], device: torch.device) -> dict:
    gt = coco_ground_truth(test_set, classes)
    model.eval().to(device)
    start = time.perf_counter()
    detections = predict(model, test_set, device)
    infer_s = time.perf_counter() - start
    start = time.perf_counter()
    coco_metrics(gt, detections, classes)
    coco_s = time.perf_counter() - start
    per100 = 100 / len(test_set)
    return {"inference_s_per_100": infer_s * per100, "pycocotools_s_per_100": coco_s * per100,
            "detections": len(detections)}


# ------------------------------------------------------------------ study wall time scaling
def bench_scaling(profile: dict, base: dict, work: Path, data_spec: str | None) -> list[dict]:
    """Wall time of a small study (every detector: teacher, baseline and one distilled student) at a base size and
    with images, epochs and seeds each doubled."""
    sizes = [("base", {}), ("base, serial", {"serial": True}),
             ("2x images", {"max_train_images": 2 * base["max_train_images"]}),
             ("2x epochs", {"epochs": 2 * base["epochs"]}), ("2x seeds", {"seeds": base["seeds"] + [base["seeds"][-1] + 1]})]
    out = []
    for label, change in sizes:
        size = base | change
        p = copy.deepcopy(profile)
        p.update(name="scaling", max_train_images=size["max_train_images"], max_eval_images=16, seeds=size["seeds"],
                 methods=["baseline", "hinton"])
        if size.get("serial"):  # one run at a time with every thread: how studies ran before worker processes
            p["execution"] = dict(p["execution"], workers=1)
        for d in ("faster_rcnn", "yolo", "fcos"):
            p[d]["compress"] = []
            for role in ("teacher", "student"):
                p[d][role]["epochs"] = size["epochs"]
        p["train"]["val_every"] = size["epochs"]
        for d in ("yolo", "fcos"):
            p[d].pop("methods", None)
        folder = work / label.replace(" ", "_")
        study = Study(p, folder, data_spec, progress=False, log=lambda *_: None)
        study.data()
        study.run()
        rows = read_runs(folder / "runs.csv")
        [execution] = read_runs(folder / "executions.csv")  # how the study ran it, and for how long
        out.append({"size": label, "train_images": size["max_train_images"], "epochs": size["epochs"],
                    "seeds": len(size["seeds"]), "runs": len(rows), "failed": sum(r["status"] == "failed" for r in rows),
                    "workers": int(execution["workers"]), "threads": int(execution["threads_per_run"]),
                    "wall_s": float(execution["wall_s"])})
    return out


def default_study_wall(results: Path) -> dict | None:
    """Per-detector sums of the last default study's recorded run times (runs.csv ``wall_s``, else ``train_s``),
    and each student method's mean training time over its seeds (whole runs: the teacher cache fills as it goes)."""
    rows = [r for r in read_runs(results / "runs.csv") if r["profile"] == "default"]
    if not rows:
        return None
    out: dict[str, dict] = {}
    for r in rows:
        entry = out.setdefault(r["detector"], {"runs": 0, "train_s": 0.0, "wall_s": 0.0, "wall_recorded": 0,
                                               "method_train_s": {}})
        entry["runs"] += 1
        entry["train_s"] += float(r["train_s"] or 0)
        if r.get("wall_s"):
            entry["wall_s"] += float(r["wall_s"])
            entry["wall_recorded"] += 1
        if r["status"] == "ok" and r["method"] != "teacher" and r["train_s"]:
            entry["method_train_s"].setdefault(r["method"], []).append(float(r["train_s"]))
    for entry in out.values():
        entry["method_train_s"] = {m: statistics.mean(v) for m, v in entry["method_train_s"].items()}
    return out


def run_bench(profile: dict, out: Path, data_spec: str | None = None, device: str | None = None,
              settings: dict | None = None, log=print) -> dict:
    """Run every benchmark into ``out`` (bench.json, bench.md); its checkpoints go to a temporary folder that is
    removed afterwards, failed or not (each run left about 0.8 GB behind before)."""
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        return _run_bench(profile, Path(out), work, data_spec, device, BENCH_DEFAULTS | (settings or {}), log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_bench(profile: dict, out: Path, work: Path, data_spec: str | None, device: str | None, settings: dict,
               log) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    study = Study(dict(profile, max_train_images=None, max_eval_images=None), work / "study", data_spec, device,
                  progress=False, log=log)
    data: DetectionData = study.data()
    classes = data.class_names
    train_set = _subset(study.image_set("train"), settings["train_images"])
    val_set = _subset(study.image_set("val"), settings["val_images"])
    test_set = _subset(study.image_set("test"), settings["eval_images"])
    started = time.perf_counter()
    report = {"machine": describe_device(study.device), "torch_threads": torch.get_num_threads(),
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "ultralytics": __import__("ultralytics").__version__},
              "dataset": data.name, "image_size": profile["image_size"], "settings": settings,
              # the precision of the training tables (the profile's); the reference rows carry their own
              "training_precision": "bf16 autocast" if trains_bf16(study.device, profile["train"]) else "fp32"}
    log("bench: data pipeline")
    report["data"] = bench_data(study, settings["train_images"], profile["train"]["batch_size"])

    report["training"], report["eval"], report["latency_ms"], report["flops"] = [], [], [], {}
    pairs = {}
    for detector in profile["detectors"]:
        plan = plan_detector(profile, detector, data.name)
        teacher_spec = plan[0]
        student_specs = {}
        for s in plan[1:]:
            if s.role == "student" and s.method != "baseline-long":  # the baseline's speed, for longer
                student_specs.setdefault(s.method, s)
        classes_n = len(classes)
        teacher_model = build_model(teacher_spec, classes_n)
        baseline = student_specs.get("baseline") or next(iter(student_specs.values()))
        image = test_set.images[0].float().div(255)
        flops = {"teacher": count_gflops(teacher_model, image)[0], "student": count_gflops(build_model(baseline, classes_n), image)[0]}
        report["flops"][detector] = flops
        jobs = [("teacher", "plain", teacher_spec, None)] + [
            ("student", method, spec, teacher_model if "distill" in spec.hparams else None)
            for method, spec in student_specs.items()]
        for role, method, spec, teacher in jobs:
            log(f"bench: {detector} {role} {method}")
            entry = {"detector": detector, "role": role, "model": spec.backbone, "method": method}
            for cache in (("off", "warm") if teacher is not None else ("plain",)):
                r = bench_train(study, spec, teacher, train_set, val_set, settings["epochs"] if cache == "plain" else 1,
                                work / "train" / f"{spec.run_id}-{cache}", cache)
                entry["img_s" if cache == "plain" else f"img_s_cache_{cache}"] = statistics.median(r["epoch_img_s"])
            if teacher is None and spec.hparams["train"].get("channels_last"):  # before / after channels-last
                r = bench_train(study, spec, None, train_set, val_set, settings["epochs"],
                                work / "train" / f"{spec.run_id}-nchw", "plain", channels_last=False)
                entry["img_s_nchw"] = statistics.median(r["epoch_img_s"])
            report["training"].append(entry)
        for role, spec in (("teacher", teacher_spec), ("student", baseline)):
            model = build_model(spec, classes_n)
            report["eval"].append({"detector": detector, "role": role, "model": spec.backbone}
                                  | bench_eval(model, test_set, classes, study.device))
            cpu = latency_ms(model, image, torch.device("cpu"), profile["cost"]["warmup"],
                             profile["cost"]["rounds"] * profile["cost"]["images"],
                             profile["cost"]["threads"])
            gpu = latency_ms(model, image, torch.device("cuda"), 5, 20) if torch.cuda.is_available() else None
            report["latency_ms"].append({"detector": detector, "role": role, "model": spec.backbone, "cpu_ms": cpu,
                                         "gpu_ms": gpu})
        pairs[detector] = (teacher_spec, baseline)
        batch = train_set.images[:profile["train"]["batch_size"]].float().div(255)
        if detector != "yolo":  # torchvision models normalise inside; the cache sees the normalised canvas
            batch = teacher_model.transform(list(batch))[0].tensors
        report.setdefault("teacher_forward", []).append(
            {"detector": detector, "model": teacher_spec.backbone}
            | bench_teacher_forward(teacher_model, batch, study.device))

    # distillation overhead with a teacher of 3-4x the student's FLOPs: YOLOv8n -> the half-width student
    if "yolo" in profile["detectors"]:
        t_spec, s_spec = pairs["yolo"]
        near = copy.deepcopy(t_spec)
        near.hparams["role"] = dict(near.hparams["role"], model="yolov8n")
        near.backbone = "yolov8n"
        near_model = build_model(near, len(classes))
        image = test_set.images[0].float().div(255)
        ratio = count_gflops(near_model, image)[0] / report["flops"]["yolo"]["student"]
        for method in ("hinton", "at", "fitnets", "nst"):
            spec = copy.deepcopy(s_spec)
            spec.hparams["distill"] = {method: detector_config(profile, "yolo")["distill"][method]}
            log(f"bench: yolo student {method} from yolov8n ({ratio:.1f}x FLOPs)")
            entry = {"detector": "yolo", "role": "student", "model": s_spec.backbone,
                     "method": f"{method} (teacher yolov8n, {ratio:.1f}x FLOPs)"}
            for cache in ("off", "warm"):
                r = bench_train(study, spec, near_model, train_set, val_set, 1, work / "near" / f"{method}-{cache}",
                                cache)
                entry[f"img_s_cache_{cache}"] = statistics.median(r["epoch_img_s"])
            report["training"].append(entry)

    log("bench: reference tools, at equal precision")
    report["reference"] = []
    subset_samples = data.splits["train"][:settings["train_images"]]
    bf16_here = trains_bf16(study.device, {"bf16_on_cpu": True})  # bf16 kernels on this machine's device

    def ours_at(spec: RunSpec, precision: str) -> float:
        r = bench_train(study, spec, None, train_set, val_set, settings["epochs"],
                        work / "reference" / f"{spec.detector}-{spec.backbone}-{precision}", "plain",
                        bf16_on_cpu=precision == "bf16")
        return statistics.median(r["epoch_img_s"])

    if "faster_rcnn" in profile["detectors"]:
        for spec in pairs["faster_rcnn"]:
            for precision in ("fp32", "bf16") if bf16_here else ("fp32",):
                r = torchvision_stock_train(build_model(spec, len(classes)), subset_samples, profile["image_size"],
                                            spec.hparams["train"], settings["reference_epochs"], study.device,
                                            workers=min(2, torch.get_num_threads()), bf16=precision == "bf16")
                report["reference"].append({"detector": "faster_rcnn", "model": spec.backbone, "precision": precision,
                                            "tool": "torchvision stock loop (DataLoader, 2 workers)",
                                            "theirs_img_s": statistics.median(r["epoch_img_s"][1:]),
                                            "ours_img_s": ours_at(spec, precision)})
    if "yolo" in profile["detectors"]:
        from study.ultralytics_trainer import ultralytics_train
        sub = DetectionData(data.name, classes, dict(data.splits, train=subset_samples))
        from detectors.yolo import YOLO_MODELS
        named = [m for m in dict.fromkeys(("yolov8n", pairs["yolo"][0].backbone)) if isinstance(YOLO_MODELS[m][1], str)]
        for model_name in named:  # ultralytics' trainer builds its own named scales only; fp32 on a CPU (no AMP)
            spec = copy.deepcopy(pairs["yolo"][0])
            spec.hparams["role"] = dict(spec.hparams["role"], model=model_name)
            spec.backbone = model_name
            theirs = ultralytics_train(sub, model_name, profile["image_size"], settings["reference_epochs"], 0,
                                       spec.hparams["train"]["batch_size"], work / "ultralytics" / model_name,
                                       validate=False, device=str(study.device))
            report["reference"].append({"detector": "yolo", "model": model_name, "precision": "fp32",
                                        "tool": f"ultralytics trainer ({theirs['torch_threads']} torch thread(s), "
                                                f"{theirs['dataloader_workers']} workers)",
                                        "theirs_img_s": theirs["img_s"], "ours_img_s": ours_at(spec, "fp32")})
            if bf16_here:  # bf16's own gain in our loop, where the reference has no bf16 to compare with
                report["reference"].append({"detector": "yolo", "model": model_name, "precision": "bf16",
                                            "tool": "– (ultralytics trains fp32 on a CPU)", "theirs_img_s": None,
                                            "ours_img_s": ours_at(spec, "bf16")})

    report["scaling"] = []
    if settings["scaling_base"]:
        log("bench: study wall time scaling")
        report["scaling"] = bench_scaling(profile, settings["scaling_base"], work / "scaling", data_spec)
    report["default_study"] = default_study_wall(PROJECT_ROOT / "results" / "default")  # the committed default
    report["bench_wall_s"] = time.perf_counter() - started
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    (out / "bench.md").write_text(bench_markdown(report))
    return report
