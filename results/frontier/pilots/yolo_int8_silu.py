"""Pilot (2026-12-07, issue 28's latency target): why YOLO's small students are slower in int8 than in fp32 in
ONNX Runtime, and whether SiLU's sigmoid ending quantized would change it.

ONNX Runtime's profiler (``scripts/ort_profile.py --untrained-yolo``) shows the int8 graph running each SiLU as
DequantizeLinear -> Sigmoid -> Mul -> QuantizeLinear in float, where the fp32 graph runs one fused QuickGelu. This
pilot adds a QuantizeLinear/DequantizeLinear pair (uint8, scale 1/255, zero point 0: the sigmoid's range) after
every Sigmoid of the int8 export whose input is dequantized, so that ONNX Runtime can fuse the sigmoid
(QLinearSigmoid) and the product (QLinearMul) into int8 kernels, and times the three forms.

Models: each frontier YOLO size, untrained (seed 0; operator costs depend on the graph and its shapes, not on the
weights), int8 by the study's `int8` settings (scripts/ort_profile.py's ``untrained_yolo``). Recorded: ONNX
Runtime's optimized-graph operator counts, latency of the network (no NMS) at 2 threads, batch 1, in interleaved
rounds (the study's cost settings: 20 rounds of 4 test images), in 5 blocks of such rounds, each block's medians
and ratios kept: two single-block runs of this pilot on 2026-12-07 gave yolov8n's fp32 network 11.7 and 8.2 ms
(interquartile ranges 3.7 and 0.7 ms), the machine's speed moving within minutes that day. Accuracy is not measured: an untrained network's
outputs are degenerate (its fp32 and int8 outputs agree to the last bit), so a change of the int8 method would be
decided on validation mAP of trained models.

Run from the repository root: ``python results/frontier/pilots/yolo_int8_silu.py OUT.json``.
"""
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

from study.defaults import DEFAULTS, load_profile
from study.onnx_runtime import runtime_ops, session
from study.workspace import Workspace

BLOCKS = 5
spec = importlib.util.spec_from_file_location("ort_profile", Path("scripts/ort_profile.py"))
ort_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ort_profile)


def quantized_sigmoids(src: Path, dst: Path) -> int:
    """Write ``src`` with a uint8 QuantizeLinear/DequantizeLinear pair after every Sigmoid fed by a
    DequantizeLinear; returns how many were added."""
    model = onnx.load(str(src))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    graph.initializer.extend([helper.make_tensor("sigmoid_scale", TensorProto.FLOAT, [], [1 / 255]),
                              helper.make_tensor("sigmoid_zero", TensorProto.UINT8, [], [0])])
    nodes, added = [], 0
    for node in graph.node:
        nodes.append(node)
        source = producers.get(node.input[0]) if node.input else None
        if node.op_type == "Sigmoid" and source is not None and source.op_type == "DequantizeLinear":
            out = node.output[0]
            node.output[0] = f"{out}_float"
            nodes += [helper.make_node("QuantizeLinear", [f"{out}_float", "sigmoid_scale", "sigmoid_zero"],
                                       [f"{out}_q"], name=f"{node.name}_quantize"),
                      helper.make_node("DequantizeLinear", [f"{out}_q", "sigmoid_scale", "sigmoid_zero"], [out],
                                       name=f"{node.name}_dequantize")]
            added += 1
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return added


def interleaved_ms(paths: dict, images: list, cfg: dict) -> dict:
    """Median and IQR (ms) of one network run per image, every form timed in each round in a random order."""
    sessions = {key: session(path, cfg["threads"]) for key, path in paths.items()}
    feeds = {key: s.get_inputs()[0].name for key, s in sessions.items()}
    for key, s in sessions.items():
        for _ in range(cfg["warmup"]):
            s.run(None, {feeds[key]: images[0]})
    times, order, rng = {key: [] for key in sessions}, list(sessions), random.Random(cfg["seed"])
    for _ in range(cfg["rounds"]):
        rng.shuffle(order)
        for key in order:
            for image in images:
                start = time.perf_counter()
                sessions[key].run(None, {feeds[key]: image})
                times[key].append((time.perf_counter() - start) * 1000)
    out = {}
    for key, values in times.items():
        q = statistics.quantiles(values, n=4)
        out[key] = {"ms": round(statistics.median(values), 3), "iqr": round(q[2] - q[0], 3)}
    return out


def main(out_json: str) -> None:
    cfg = DEFAULTS["cost"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        workspace = Workspace(load_profile("frontier"), out / "ws", "voc:data/bccd", torch.device("cpu"))
        test = workspace.image_set("test").images
        images = [test[i].float().div(255).numpy() for i in range(cfg["images"])]
        result = {"cost": cfg}
        for name in ("yolov8s", "yolov8n", "yolov8p", "yolov8f"):
            fp32, int8 = ort_profile.untrained_yolo(workspace, name, out)
            sig = out / f"{name}-int8-sigmoid.onnx"
            added = quantized_sigmoids(int8, sig)
            paths = {"fp32": fp32, "int8": int8, "int8 + sigmoid quantized": sig}
            blocks = [interleaved_ms(paths, images, cfg | {"seed": block}) for block in range(BLOCKS)]
            result[name] = {"sigmoids_quantized": added,
                            "ops": {k: runtime_ops(p) for k, p in paths.items()},
                            "ort_ms": blocks,
                            "ratio_to_fp32": {k: [round(b[k]["ms"] / b["fp32"]["ms"], 3) for b in blocks]
                                              for k in paths}}
            print(name, json.dumps(result[name]["ratio_to_fp32"]), flush=True)
    Path(out_json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
