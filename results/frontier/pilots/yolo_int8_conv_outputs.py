"""Pilot (2026-12-06, rule in yolo_int8_scope/RULE.md, second question, written before it ran): YOLO int8 with the
Detect branches, with and without the convolutions' outputs quantized where SiLU follows
(``methods.quantize_pt2e.quantize_conv_outputs``), post-training with the frontier's `int8` settings, of a trained
frontier model: validation mAP of the saved and reloaded model (PyTorch) and of its ONNX export (ONNX Runtime), how
many convolutions ONNX Runtime runs as int8 (`QLinearConv` in its optimized graph), and ONNX Runtime latency of fp32
and both int8 forms in one interleaved loop (1 thread, 6 rounds of 4 test images; contended: ratios only).
Validation split for accuracy. Run from the repository root with the frontier's folder at /work/frontier-run:
``python results/frontier/pilots/yolo_int8_conv_outputs.py RUN_ID``; prints a JSON result."""
import collections
import json
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime
import torch

from methods.quantize_pt2e import load_int8, quantize_int8_pt2e, save_int8
from study.cost import interleaved_latency
from study.defaults import load_profile
from study.evaluate import evaluate_map
from study.onnx_runtime import ort_detector
from study.workspace import Workspace


def int8_convolutions(path: Path) -> dict:
    """Operator counts of ONNX Runtime's optimized graph of ``path`` (basic level: no hardware-specific layout)."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return {op: ops[op] for op in ("QLinearConv", "Conv", "FusedConv", "QuantizeLinear", "DequantizeLinear")}


torch.set_num_threads(1)
run = sys.argv[1]
ws = Workspace(load_profile("frontier"), Path("/work/frontier-run"), "voc:data/bccd", torch.device("cpu"))
model = ws.load_finished(run).eval()
train = ws.image_set("train").images
calibration = torch.stack([train[i].float().div(255) for i in range(32)])
test = ws.image_set("test").images
images = [test[i].float().div(255) for i in range(4)]  # timing only: no labels read
val, classes, cpu = ws.image_set("val"), ws.data().class_names, torch.device("cpu")
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp)
    detectors = {"fp32": ort_detector(model, images[0], out / "fp32.onnx")}
    result = {"run": run, "fp32": {"val_map": evaluate_map(model, val, classes, cpu),
                                   "ops": int8_convolutions(out / "fp32.onnx")}}
    for name, conv_outputs in (("int8 (Detect branches)", False), ("int8 + conv outputs", True)):
        folder = out / str(conv_outputs)
        folder.mkdir()
        qmodel, details = quantize_int8_pt2e(model, calibration, heads=True, residual_inputs=True,
                                             conv_outputs=conv_outputs)
        save_int8(qmodel, folder, calibration)
        loaded = load_int8(ws.build(ws.kept_spec(run)), folder)
        detectors[name] = ort_detector(loaded, images[0], folder / "model.onnx")
        result[name] = {"val_map": evaluate_map(loaded, val, classes, cpu),
                        "onnx_val_map": evaluate_map(detectors[name], val, classes, cpu),
                        "ops": int8_convolutions(folder / "model.onnx")}
        print(name, json.dumps(result[name]), flush=True)
    timed = interleaved_latency(detectors, images, {"threads": 1, "warmup": 2, "rounds": 6})
    result["ort_ms_contended"] = {k: round(v["cpu_ms"], 2) for k, v in timed.items()}
print(json.dumps(result, indent=1))
