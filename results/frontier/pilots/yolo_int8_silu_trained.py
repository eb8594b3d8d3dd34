"""Pilot (2026-12-07, rule in yolo_int8_scope/RULE.md, third question, written before it ran): YOLO post-training
int8 with and without ``sigmoid_outputs`` (SiLU decomposed, its sigmoid quantized) on trained students, validation
split only.

For each run (the frontier's `baseline` seed-0 yolov8p and yolov8f, trained into FOLDER by
``python -m study run --profile results/frontier/pilots/yolo-silu-sources.yaml --out FOLDER --val-only``):
post-training int8 with the study's `int8` settings (32 calibration images from train, the Detect branches,
residual inputs, the family's convolution outputs), with and without ``sigmoid_outputs``; validation mAP of the
saved and reloaded model (PyTorch) and of its ONNX export (ONNX Runtime); ONNX Runtime latency of the whole
detector (its NMS after ONNX Runtime, as the study times it) of fp32 and both int8 forms, the study's cost settings
(2 threads, batch 1, 20 interleaved rounds of 4 test images; test images timed only, no labels read), in 5 blocks.

Run from the repository root: ``python results/frontier/pilots/yolo_int8_silu_trained.py FOLDER RUN_ID [RUN_ID ...]``;
writes ``pilots/yolo_int8_scope/silu-RUN_ID.json`` for each run.
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

from methods.quantize_pt2e import load_int8, quantize_int8_pt2e, save_int8
from study.cost import interleaved_latency
from study.defaults import DEFAULTS, load_profile
from study.evaluate import evaluate_map
from study.onnx_runtime import ort_detector
from study.workspace import Workspace

BLOCKS = 5
HERE = Path(__file__).parent


def main(folder: str, runs: list[str]) -> None:
    cfg, cost = DEFAULTS["compression"]["int8"], DEFAULTS["cost"]
    ws = Workspace(load_profile(str(HERE / "yolo-silu-sources.yaml")), Path(folder), "voc:data/bccd",
                   torch.device("cpu"))
    calibration = ws.image_set("train").images[:cfg["calibration_images"]].float().div(255)
    test = ws.image_set("test").images
    images = [test[i].float().div(255) for i in range(cost["images"])]
    val, classes, cpu = ws.image_set("val"), ws.data().class_names, torch.device("cpu")
    for run in runs:
        torch.set_num_threads(1)
        model = ws.load_finished(run).eval()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            detectors = {"fp32": ort_detector(model, images[0], out / "fp32.onnx", threads=cost["threads"])}
            result = {"run": run, "fp32": {"val_map": evaluate_map(model, val, classes, cpu),
                                           "onnx_val_map": evaluate_map(detectors["fp32"], val, classes, cpu)}}
            for name, sigmoid in (("int8", False), ("int8 + sigmoid quantized", True)):
                saved = out / str(sigmoid)
                saved.mkdir()
                qmodel, details = quantize_int8_pt2e(model, calibration, reduce_range=cfg["reduce_range"],
                                                     heads=cfg["heads"], residual_inputs=cfg["residual_inputs"],
                                                     sigmoid_outputs=sigmoid)
                files = save_int8(qmodel, saved, calibration)
                loaded = load_int8(ws.build(ws.kept_spec(run)), saved).eval()
                detectors[name] = ort_detector(loaded, images[0], saved / "model.onnx", threads=cost["threads"])
                result[name] = {"details": details,
                                "size_mb": sum(f.stat().st_size for f in files) / 1e6,
                                "val_map": evaluate_map(loaded, val, classes, cpu),
                                "onnx_val_map": evaluate_map(detectors[name], val, classes, cpu)}
            blocks = [interleaved_latency(detectors, images, cost, seed=block) for block in range(BLOCKS)]
        result["ort_ms"] = blocks
        result["ratio_to_fp32"] = {k: [round(b[k]["cpu_ms"] / b["fp32"]["cpu_ms"], 3) for b in blocks]
                                   for k in detectors}
        (HERE / "yolo_int8_scope" / f"silu-{run}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(run, json.dumps({k: result[k].get("val_map") for k in detectors}), json.dumps(result["ratio_to_fp32"]),
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
