"""Ultralytics' own trainer on the study's data and settings: what a YOLO user would pick instead of this project's
trainer. Product code: the rival rows (:mod:`study.rival`) train with it; the benchmark kit (:mod:`study.bench`:
the parity check and the benchmark) imports it from here.

``ultralytics_train`` trains through ``ultralytics.YOLO(...).train`` on a YOLO-format *view* of the study's data
(images symlinked, not copied; labels written from the study's parsed and cleaned boxes), with ultralytics'
augmentation reduced to the harness's (h/v flips only) and its recipe matched to the harness's YOLO recipe (SGD
0.01 / 0.937, wd 5e-4, batch 16 with no gradient accumulation, 100 warm-up iterations, cosine decay). Everything
it writes stays under the given folder. It runs offline: ultralytics' dataset check fetches a font from GitHub
even with ``YOLO_OFFLINE=1`` (``check_font`` in ``check_det_dataset``), which on a machine without network is a
failed look-up or, where DNS hangs, a stall; :func:`no_font_downloads` points it at matplotlib's bundled DejaVu Sans
instead for the duration of the call.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch
import yaml

from detectors.yolo import YOLO_DEFAULTS, YOLO_MODELS, YOLODetector, configure_ultralytics, yolo_model_dict
from study.data import DetectionData

# ultralytics' settings that make its trainer do what the harness's YOLO recipe does
MATCHED_SETTINGS = {
    "optimizer": "SGD", "lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 5e-4, "cos_lr": True,
    "warmup_epochs": 3, "mosaic": 0.0, "close_mosaic": 0, "mixup": 0.0, "cutmix": 0.0, "copy_paste": 0.0,
    "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0,
    "perspective": 0.0, "fliplr": 0.5, "flipud": 0.5, "rect": False, "amp": False, "plots": False,
    "pretrained": False, "deterministic": True, "verbose": False,
}


@contextlib.contextmanager
def no_font_downloads():
    """While inside, ultralytics' ``check_font`` returns matplotlib's bundled DejaVu Sans and never downloads."""
    import matplotlib
    import ultralytics.data.utils as data_utils
    import ultralytics.utils.checks as checks
    import ultralytics.utils.plotting as plotting

    local = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    modules = (checks, data_utils, plotting)
    saved = [m.check_font for m in modules]
    for m in modules:
        m.check_font = lambda font="Arial.ttf": local
    try:
        yield
    finally:
        for m, original in zip(modules, saved):
            m.check_font = original


def write_yolo_view(data: DetectionData, out: Path) -> Path:
    """A YOLO-format view of ``data`` under ``out``: images symlinked, one label file per image, ``data.yaml``."""
    out = Path(out)
    for split, samples in data.splits.items():
        images, labels = out / "images" / split, out / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(samples):
            stem = f"{i:06d}_{s.image_path.stem}"
            link = images / f"{stem}{s.image_path.suffix.lower()}"
            if not link.exists():
                link.symlink_to(s.image_path.resolve())
            lines = []
            for (x0, y0, x1, y1), label in zip(s.boxes.tolist(), s.labels.tolist()):
                lines.append(f"{label - 1} {(x0 + x1) / 2 / s.width:.6f} {(y0 + y1) / 2 / s.height:.6f} "
                             f"{(x1 - x0) / s.width:.6f} {(y1 - y0) / s.height:.6f}")
            (labels / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    yaml_path = out / "data.yaml"
    yaml_path.write_text(json.dumps({"path": str(out.resolve()), "train": "images/train", "val": "images/val",
                                     "test": "images/test", "names": dict(enumerate(data.class_names))}))
    return yaml_path


def model_yaml(model: str, out: Path) -> str:
    """What ultralytics' ``YOLO(...)`` is built from for one of :data:`YOLO_MODELS`: its own YAML name for a named
    scale; for a custom width (``yolov8t``, ``yolov8p``) a YAML file written under ``out`` whose only scale is
    that width (its name carries no scale letter, so ultralytics takes the one scale it lists)."""
    yaml_name, scale = YOLO_MODELS[model]
    if not isinstance(scale, list):
        return yaml_name.replace(".yaml", f"{scale}.yaml")
    cfg = {k: v for k, v in yolo_model_dict(model).items() if k not in ("scale", "yaml_file")}
    path = Path(out) / f"{model.replace('yolov8', 'yolov8-')}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def write_ultralytics_checkpoint(detector: YOLODetector, path: Path) -> Path:
    """A harness-trained YOLO as an ultralytics checkpoint (what ``distill_model=`` loads): ``{"model": ...}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(detector.model).float().eval()
    model.args = {}
    torch.save({"model": model, "train_args": {}}, path)
    return path


def ultralytics_train(data: DetectionData, model: str, image_size: int, epochs: int, seed: int, batch_size: int,
                      out: Path, workers: int = 2, validate: bool = True, device: str = "cpu",
                      extra: dict | None = None) -> dict:
    """Train YOLO ``model`` with ultralytics' own trainer (``extra`` settings on top of :data:`MATCHED_SETTINGS`,
    e.g. ``distill_model=``); return its timing, its own test metrics and the trained detector (its EMA weights,
    as ultralytics saves them) wrapped as a :class:`YOLODetector`."""
    out = Path(out).resolve()  # ultralytics puts a relative project under its own runs/ folder
    configure_ultralytics(out / ".ultralytics")
    from ultralytics import YOLO

    yaml_path = write_yolo_view(data, out / "data")
    yolo = YOLO(model_yaml(model, out / "model"), task="detect")
    epoch_times: list[float] = []
    yolo.add_callback("on_train_epoch_start", lambda trainer: epoch_times.append(-time.perf_counter()))
    yolo.add_callback("on_train_epoch_end", lambda trainer: epoch_times.__setitem__(-1, epoch_times[-1] + time.perf_counter()))
    threads = torch.get_num_threads()  # ultralytics sets its own (cpu_count - 1 on a CPU); restored at the end
    try:
        with no_font_downloads():
            return _train_and_score(yolo, data, yaml_path, model, image_size, epochs, seed, batch_size, out,
                                    workers, validate, device, epoch_times, extra or {})
    finally:
        torch.set_num_threads(threads)


def _train_and_score(yolo, data, yaml_path, model, image_size, epochs, seed, batch_size, out, workers, validate,
                     device, epoch_times, extra) -> dict:
    from ultralytics import YOLO

    start = time.perf_counter()
    yolo.train(data=str(yaml_path), imgsz=image_size, epochs=epochs, batch=batch_size, nbs=batch_size, seed=seed,
               workers=workers, device=device, project=str(out), name="train", exist_ok=True, val=validate,
               **(MATCHED_SETTINGS | extra))
    wall_s = time.perf_counter() - start
    their_threads = torch.get_num_threads()
    n_train = len(data.splits["train"])
    steady = epoch_times[1:] or epoch_times
    result = {"wall_s": wall_s, "epoch_s": epoch_times,
              "img_s": n_train / statistics.median(steady) if steady else math.nan,
              "torch_threads": their_threads, "dataloader_workers": workers}
    best = out / "train" / "weights" / ("best.pt" if validate else "last.pt")
    if validate:
        metrics = YOLO(str(best)).val(data=str(yaml_path), split="test", imgsz=image_size, batch=batch_size,
                                      device=device, project=str(out), name="test", exist_ok=True, plots=False,
                                      verbose=False)
        result |= {"own_map": float(metrics.box.map), "own_map50": float(metrics.box.map50)}
    result["detector"] = load_ultralytics_detector(best)
    return result


def load_ultralytics_detector(checkpoint_path: Path) -> YOLODetector:
    """The model of an ultralytics checkpoint (its EMA weights, as its trainer saves them) as a YOLODetector."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model = checkpoint.get("ema") or checkpoint["model"]
    model = getattr(model, "student_model", model)  # distill_model=: the student (its projector is training-only)
    return YOLODetector(model.float(), YOLO_DEFAULTS)
