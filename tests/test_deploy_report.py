"""The report's deployment section: ONNX Runtime against eager, the export check, int8 against its float source."""
from __future__ import annotations

import json

from study.deploy_report import deployment_lines


def row(run_id, method, cpu_ms, eager_ms, size_mb, onnx_mb, map_, onnx_map, source=None, seed=0):
    return {"run_id": run_id, "detector": "faster_rcnn", "backbone": "resnet50", "method": method, "seed": str(seed),
            "status": "ok", "runtime": "onnxruntime", "cpu_ms": str(cpu_ms), "eager_ms": str(eager_ms),
            "size_mb": str(size_mb), "onnx_mb": str(onnx_mb), "map": str(map_), "onnx_map": str(onnx_map),
            "hparams": json.dumps({"source_run": source} if source else {})}


def test_int8_rows_are_set_against_their_float_source_and_a_bad_export_is_flagged():
    rows = [row("t", "teacher", 20.0, 50.0, 100.0, 98.0, 0.500, 0.500),
            row("q", "int8", 8.0, 12.0, 26.0, 25.0, 0.495, 0.490, source="t")]
    text = "\n".join(deployment_lines(rows))
    # teacher: eager / ORT = 50 / 20 = 2.50; its export matches (0.000 points)
    assert "| faster_rcnn | resnet50 | teacher | 1 | 20.00 | 50.00 | 2.50 | 98.00 | 0.000 |" in text
    # int8: |0.495 - 0.490| = 0.5 points, over the 0.2-point tolerance
    assert "| int8 | 1 | 8.00 | 12.00 | 1.50 | 25.00 | 0.500 (over the tolerance) |" in text
    # against the teacher: latency 8 / 20 = 0.40, size 26 / 100 = 0.26, ONNX 25 / 98 = 0.26, mAP -0.50 points
    assert "| faster_rcnn | resnet50 | int8 | 0 | 0.40 | 0.26 | 0.26 | -0.50 |" in text


def test_no_section_without_onnx_runtime_rows():
    plain = row("t", "teacher", 20.0, 50.0, 100.0, 98.0, 0.5, 0.5) | {"runtime": "pytorch"}
    assert deployment_lines([plain]) == []
