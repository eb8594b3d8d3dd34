"""Check (2026-12-07, the export check of issue 28): how far ONNX Runtime's int8 kernels are from PyTorch's converted
PT2E reference graph, against how far int8 is from fp32, on one small network whose outputs are not degenerate.

A stack of four conv + BatchNorm + ReLU blocks (random weights and BatchNorm statistics, seed 0) made int8 by
``methods.quantize_pt2e.quantize_module`` (calibrated on 16 random 64 x 64 images), exported by
``study.onnx_runtime.export_onnx`` (QuantizeLinear/DequantizeLinear, fused by ONNX Runtime into int8 kernels) and
run on one more random image. The last convolution's output leaves the graph unquantized, so the outputs are
float; their differences are given against the scale of the last quantized activation (differences under 1e-5 are
float accumulation order, not counted as differing).

Run from the repository root: ``python results/frontier/pilots/int8_export_rounding.py``; prints a JSON result.
"""
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from methods.quantize_pt2e import quantize_module
from study.onnx_runtime import export_onnx, register_pt2e_symbolics, run, session

torch.manual_seed(0)
net = torch.nn.Sequential(*[m for c_in, c_out in ((3, 16), (16, 32), (32, 32), (32, 32))
                            for m in (torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm2d(c_out),
                                      torch.nn.ReLU())]).eval()
for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
batches = [torch.rand(4, 3, 64, 64) for _ in range(4)]
x = torch.rand(1, 3, 64, 64)
graph = quantize_module(net, batches)
scales = [n.args[1] for n in graph.graph.nodes
          if n.op == "call_function" and str(n.target).startswith("quantized_decomposed.quantize_per_tensor")]
register_pt2e_symbolics()
with tempfile.TemporaryDirectory() as tmp:
    ort = run(session(export_onnx(graph, x, Path(tmp) / "int8.onnx")), x)[0]
with torch.no_grad():
    reference, fp32 = graph(x).numpy(), net(x).numpy()
gap = np.abs(reference - ort)
print(json.dumps({
    "elements": int(reference.size),
    "last_activation_scale": scales[-1],
    "ort_vs_reference": {"mean_abs": float(gap.mean()), "max_abs": float(gap.max()),
                         "max_in_last_scales": float(gap.max() / scales[-1]),
                         "fraction_differing_by_over_1e-5": float((gap > 1e-5).mean())},
    "reference_vs_fp32": {"mean_abs": float(np.abs(reference - fp32).mean()),
                          "max_abs": float(np.abs(reference - fp32).max())},
}, indent=1))
