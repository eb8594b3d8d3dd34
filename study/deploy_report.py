"""The deployment section of a study's report, when its latency pass ran in ONNX Runtime (``cost.runtime:
onnxruntime``, :mod:`study.latency_pass`): each model's ONNX Runtime and PyTorch eager latency, the export check
(the exported model's test mAP against PyTorch's), and every int8 model against the float model it was made from
(latency, size on disk and mAP ratios: the targets of docs/methods.md's quantization flow).
"""
from __future__ import annotations

import json
import statistics

EXPORT_TOLERANCE = 0.002  # mAP (0.2 points): the exported model must score what PyTorch's does


def _f(row: dict, key: str) -> float | None:
    value = row.get(key)
    return None if value in (None, "") else float(value)


def deployment_lines(rows: list[dict]) -> list[str]:
    """Markdown lines of the section (empty when no row was timed in ONNX Runtime)."""
    timed = [r for r in rows if r.get("status") == "ok" and r.get("runtime") == "onnxruntime" and _f(r, "cpu_ms")]
    if not timed:
        return []
    groups: dict[tuple, list[dict]] = {}
    for r in timed:
        groups.setdefault((r["detector"], r["backbone"], r["method"]), []).append(r)
    lines = ["## Deployment: ONNX Runtime and PyTorch eager", "",
             "Every model exported whole to ONNX (an int8 model with its int8 graph as QuantizeLinear/DequantizeLinear "
             "pairs) and timed in ONNX Runtime (CPU provider) in interleaved rounds, beside its PyTorch eager form "
             "timed in rounds of the eager forms (an int8 graph lowered to oneDNN kernels); batch 1, medians over the "
             "runs' medians. The export check: "
             f"the exported model's test mAP against PyTorch's, to be within {EXPORT_TOLERANCE * 100:.1f} points.", "",
             "| Detector | Backbone | Method | Runs | ONNX Runtime ms | Eager ms | Eager / ORT | ONNX MB | "
             "max abs(mAP − exported mAP), points |", "|---|---|---|---|---|---|---|---|---|"]
    for (detector, backbone, method), group in groups.items():
        ort = statistics.median(_f(r, "cpu_ms") for r in group)
        eager = [_f(r, "eager_ms") for r in group if _f(r, "eager_ms")]
        eager_ms = statistics.median(eager) if eager else None
        gaps = [abs(_f(r, "map") - _f(r, "onnx_map")) * 100 for r in group if _f(r, "onnx_map") is not None]
        gap = max(gaps) if gaps else None
        flag = " (over the tolerance)" if gap is not None and gap > EXPORT_TOLERANCE * 100 else ""
        lines.append(f"| {detector} | {backbone} | {method} | {len(group)} | {ort:.2f} | "
                     f"{'–' if eager_ms is None else f'{eager_ms:.2f}'} | "
                     f"{'–' if eager_ms is None else f'{eager_ms / ort:.2f}'} | "
                     f"{statistics.median(_f(r, 'onnx_mb') or 0 for r in group):.2f} | "
                     f"{'–' if gap is None else f'{gap:.3f}'}{flag} |")
    lines += [""] + int8_against_float(timed)
    return lines


def int8_against_float(rows: list[dict]) -> list[str]:
    """Each int8 row against its source run (the float model it was made from): ONNX Runtime latency ratio, size
    on disk ratio (PyTorch's saved files, and the ONNX files), and the mAP difference."""
    by_id = {r["run_id"]: r for r in rows}
    out = []
    for r in rows:
        if not r["method"].startswith("int8"):
            continue
        source = by_id.get(json.loads(r["hparams"]).get("source_run"))
        if source is None:
            continue
        out.append(f"| {r['detector']} | {r['backbone']} | {r['method']} | {r['seed']} | "
                   f"{_f(r, 'cpu_ms') / _f(source, 'cpu_ms'):.2f} | "
                   f"{_f(r, 'size_mb') / _f(source, 'size_mb'):.2f} | "
                   f"{(_f(r, 'onnx_mb') or 0) / (_f(source, 'onnx_mb') or 1):.2f} | "
                   f"{(_f(r, 'map') - _f(source, 'map')) * 100:+.2f} |")
    if not out:
        return []
    return ["### int8 against the float model it was made from", "",
            "Ratios int8 / float of the same source run: ONNX Runtime latency, size on disk (PyTorch's saved model; "
            "the ONNX file), and the test mAP difference in points (one run each; QAT rows per fine-tuning seed).", "",
            "| Detector | Backbone | Method | Seed | ORT latency ratio | Size ratio | ONNX size ratio | Δ mAP (points) |",
            "|---|---|---|---|---|---|---|---|", *out, ""]
