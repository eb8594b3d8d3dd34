"""ONNX export and ONNX Runtime int8 of tiny detectors: outputs match PyTorch, static int8 stays close and is
smaller, latency is measured. Skipped where onnx or onnxruntime is not installed."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from detectors.faster_rcnn import build_faster_rcnn  # noqa: E402
from helpers import SMALL, one_thread  # noqa: E402
from study.onnx_runtime import (compare, export_onnx, interleaved_ort_latency, onnx_part,  # noqa: E402
                                quantize_onnx_int8, run, session)


@pytest.fixture(autouse=True)
def torch_on_one_thread():
    with one_thread():
        yield


def tiny():
    torch.manual_seed(0)
    return build_faster_rcnn("shallow", 3, fpn_channels=16, roi_dim=32, **SMALL).eval()


def images(n=8, h=64, w=96):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(5))


def test_backbone_exports_quantizes_and_is_timed(tmp_path):
    model = tiny()
    part, x = onnx_part(model, images())
    with torch.no_grad():
        ref = part(x[:1])
    fp32 = export_onnx(part, x[:1], tmp_path / "fp32.onnx")
    assert compare(ref, run(session(fp32), x[:1]))["max_rel"] < 1e-4
    int8 = quantize_onnx_int8(fp32, tmp_path / "int8.onnx", x)
    assert compare(ref, run(session(int8), x[:1]))["cosine"] >= 0.99
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    latency = interleaved_ort_latency({"fp32": session(fp32), "int8": session(int8)}, [x[:1], x[1:2]],
                                      {"warmup": 1, "rounds": 2})
    assert set(latency) == {"fp32", "int8"} and all(v["cpu_ms"] > 0 for v in latency.values())


def test_whole_faster_rcnn_exports_and_matches_on_another_image(tmp_path):
    """The TorchScript-based exporter takes the whole detector (NMS and RoIAlign included)."""
    model = tiny()
    x = images(3)
    path = tmp_path / "whole.onnx"
    with torch.no_grad():
        torch.onnx.export(model, ([x[0]],), str(path), dynamo=False, opset_version=17)
        ref = model([x[1]])[0]
    boxes, labels, scores = run(session(path), x[1])
    assert len(boxes) == len(ref["boxes"])
    assert compare(ref["boxes"], [boxes])["max_abs"] < 1e-3
    assert compare(ref["scores"], [scores])["max_abs"] < 1e-4


def test_yolo_trunk_exports_with_both_exporters(tmp_path):
    pytest.importorskip("onnxscript")
    from detectors.yolo import build_yolo
    torch.manual_seed(0)
    model = build_yolo("yolov8p", 3).eval()
    part, x = onnx_part(model, images(1, 64, 64))
    with torch.no_grad():
        ref = part(x)
    for dynamo in (False, True):
        path = export_onnx(part, x, tmp_path / f"yolo-{dynamo}.onnx", dynamo=dynamo)
        assert compare(ref, run(session(path), x))["max_rel"] < 1e-4, dynamo
