"""ONNX Runtime's profiler over exported detectors: each operator type's share of the time.

``python scripts/ort_profile.py FOLDER MODEL.onnx [MODEL.onnx ...]``: FOLDER is the study folder the models were
exported in (its test images are fed, at its profile's canvas; the `default` profile's settings); 1 intra-op
thread; 3 passes over 8 test images. docs/quantization-notes.md quotes its output.

``python scripts/ort_profile.py --untrained-yolo FOLDER NAME [NAME ...]``: for each YOLO model NAME (``yolov8s``,
``yolov8n``, ...), untrained (seeded), its fp32 and post-training int8 forms as the study makes and times them
(the `int8` compression settings: PT2E, calibrated on the first training images; saved, reloaded and exported
whole), each profiled as above. Operator costs depend on the graph and its shapes, not on the weights; the time of
NMS, which runs after ONNX Runtime for YOLO, is not in the profile.
"""
from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime
import torch

from study.defaults import DEFAULTS, load_profile
from study.workspace import Workspace


def op_shares(path: str, images: list) -> tuple[float, list]:
    """(ms per image, [(operator type, share of the time, nodes)] largest first) over ``images``."""
    options = onnxruntime.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads, options.inter_op_num_threads = True, 1, 1
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        runs = 0
        for _ in range(3):
            for image in images:
                session.run(None, {session.get_inputs()[0].name: image})
                runs += 1
        events = json.loads(Path(session.end_profiling()).read_text())
    time, nodes = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            time[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    total = sum(time.values())
    return total / runs / 1000, [(op, t / total, nodes[op] // runs) for op, t in time.most_common()]


def untrained_yolo(workspace: Workspace, name: str, out: Path) -> list[Path]:
    """ONNX files of YOLO ``name`` untrained (seed 0), fp32 and post-training int8 (the study's `int8` settings),
    written under ``out``."""
    from detectors.yolo import build_yolo
    from methods.quantize_pt2e import load_int8, quantize_int8_pt2e, save_int8
    from study.onnx_runtime import export_detector

    cfg = DEFAULTS["compression"]["int8"]
    classes = len(workspace.data().class_names)
    torch.manual_seed(0)
    model = build_yolo(name, classes).eval()
    calibration = workspace.image_set("train").images[:cfg["calibration_images"]].float().div(255)
    image = workspace.image_set("test").images[0].float().div(255)
    qmodel, _ = quantize_int8_pt2e(model, calibration, reduce_range=cfg["reduce_range"], heads=cfg["heads"],
                                   residual_inputs=cfg["residual_inputs"])
    (out / f"{name}-int8").mkdir()
    save_int8(qmodel, out / f"{name}-int8", calibration)
    int8 = load_int8(build_yolo(name, classes), out / f"{name}-int8").eval()
    return [export_detector(model, image, out / f"{name}-fp32.onnx"),
            export_detector(int8, image, out / f"{name}-int8.onnx")]


def main(folder: str, models: list[str], yolo: bool = False) -> None:
    workspace = Workspace(load_profile("default"), Path(folder), "voc:data/bccd", torch.device("cpu"))
    test = workspace.image_set("test").images
    images = [test[i].float().div(255).numpy() for i in range(8)]
    if yolo:
        scratch = tempfile.TemporaryDirectory()
        models = [str(p) for name in models for p in untrained_yolo(workspace, name, Path(scratch.name))]
    for path in models:
        ms, shares = op_shares(path, images)
        print(f"{path}: {ms:.1f} ms an image")
        for op, share, count in shares[:12]:
            print(f"  {op:22s} {100 * share:5.1f}%  {count} nodes")


if __name__ == "__main__":
    if sys.argv[1] == "--untrained-yolo":
        main(sys.argv[2], sys.argv[3:], yolo=True)
    else:
        main(sys.argv[1], sys.argv[2:])
