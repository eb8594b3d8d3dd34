"""Pilot (2026-12-06, rule in yolo_int8_scope/RULE.md, written before it ran): YOLO's int8 scope, the trunk alone
or the trunk and the Detect head's convolution branches, post-training int8 with the frontier's `int8` settings (32
calibration images from train, residual_inputs), of a trained frontier model: validation mAP of the saved and
reloaded int8 model (PyTorch) and of its ONNX export (ONNX Runtime), size of the saved int8 files and of the ONNX
file against fp32. Validation split only. Run from the repository root with the frontier's folder at
/work/frontier-run: ``python results/frontier/pilots/yolo_int8_scope.py RUN_ID``; prints a JSON result."""
import json
import sys
import tempfile
from pathlib import Path

import torch

from methods.quantize_pt2e import load_int8, quantize_int8_pt2e, save_int8
from study.defaults import load_profile
from study.evaluate import evaluate_map
from study.onnx_runtime import ort_detector
from study.workspace import Workspace

torch.set_num_threads(1)
run = sys.argv[1]
ws = Workspace(load_profile("frontier"), Path("/work/frontier-run"), "voc:data/bccd", torch.device("cpu"))
model = ws.load_finished(run).eval()
train = ws.image_set("train").images
calibration = torch.stack([train[i].float().div(255) for i in range(32)])
image = ws.image_set("test").images[0].float().div(255)  # the export's example (the latency pass's); no labels read
val, classes = ws.image_set("val"), ws.data().class_names
cpu = torch.device("cpu")
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp)
    torch.save(model.state_dict(), out / "fp32.pt")
    fp32_onnx = ort_detector(model, image, out / "fp32.onnx")
    result = {"run": run, "fp32": {"val_map": evaluate_map(model, val, classes, cpu),
                                   "onnx_val_map": evaluate_map(fp32_onnx, val, classes, cpu),
                                   "mb": (out / "fp32.pt").stat().st_size / 1e6,
                                   "onnx_mb": (out / "fp32.onnx").stat().st_size / 1e6}}
    for scope, heads in (("trunk", False), ("trunk + Detect convolutions", True)):
        folder = out / str(heads)
        folder.mkdir()
        qmodel, details = quantize_int8_pt2e(model, calibration, heads=heads, residual_inputs=True)
        files = save_int8(qmodel, folder, calibration)
        loaded = load_int8(ws.build(ws.kept_spec(run)), folder)
        onnx = ort_detector(loaded, image, folder / "model.onnx")
        result[scope] = {"int8_parts": details["int8_parts"], "val_map": evaluate_map(loaded, val, classes, cpu),
                         "onnx_val_map": evaluate_map(onnx, val, classes, cpu),
                         "mb": sum(f.stat().st_size for f in files) / 1e6,
                         "onnx_mb": (folder / "model.onnx").stat().st_size / 1e6}
        for key in ("mb", "onnx_mb"):
            result[scope][key + "_ratio"] = result[scope][key] / result["fp32"][key]
        print(scope, json.dumps(result[scope]), flush=True)
print(json.dumps(result, indent=1))
