"""ONNX export and ONNX Runtime int8 of tiny detectors: outputs match PyTorch, static int8 stays close and is
smaller; whole detectors (fp32 and PT2E int8) detect in ONNX Runtime what they detect in PyTorch."""
from __future__ import annotations

import pytest
import torch

from detectors.faster_rcnn import build_faster_rcnn
from helpers import SMALL, one_thread
from study.onnx_runtime import compare, export_onnx, onnx_part, quantize_onnx_int8, run, runtime_ops, session


@pytest.fixture(autouse=True)
def torch_on_one_thread():
    with one_thread():
        yield


def tiny():
    torch.manual_seed(0)
    return build_faster_rcnn("shallow", 3, fpn_channels=16, roi_dim=32, **SMALL).eval()


def images(n=8, h=64, w=96):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(5))


def test_backbone_exports_and_quantizes_in_onnx_runtime(tmp_path):
    model = tiny()
    part, x = onnx_part(model, images())
    with torch.no_grad():
        ref = part(x[:1])
    fp32 = export_onnx(part, x[:1], tmp_path / "fp32.onnx")
    assert compare(ref, run(session(fp32), x[:1]))["max_rel"] < 1e-4
    int8 = quantize_onnx_int8(fp32, tmp_path / "int8.onnx", x)
    assert compare(ref, run(session(int8), x[:1]))["cosine"] >= 0.99
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size


def tiny_of(family):
    torch.manual_seed(0)
    if family == "yolo":
        from detectors.yolo import build_yolo
        return build_yolo("yolov8p", 3).eval()
    if family == "fcos":
        from detectors.fcos import build_fcos
        return build_fcos("shallow", 3, fpn_channels=32).eval()
    return tiny()


@pytest.mark.parametrize("family,precision", [(family, precision) for family in ("faster_rcnn", "fcos", "yolo")
                                              for precision in ("fp32", "int8")]
                         + [("faster_rcnn", "int8-heads")])  # only Faster R-CNN declares an int8 head
def test_whole_detector_in_onnx_runtime_detects_what_pytorch_does(family, precision, tmp_path):
    """The whole detector (Faster R-CNN and FCOS with NMS; YOLO's network, NMS after) exported on one image, and
    on two others ONNX Runtime's detections are PyTorch's: the float model, and the PT2E int8 one whose int8 graph
    exports as QuantizeLinear/DequantizeLinear (int8 weights in the file); ``int8-heads``: with the family's int8
    heads too (Faster R-CNN's box head, fed a different number of RoIs per image)."""
    import onnx
    from methods.quantize_pt2e import quantize_int8_pt2e
    from study.cost import interleaved_latency
    from study.onnx_runtime import ort_detector
    model = tiny_of(family)
    x = images(4, 64, 64 if family == "yolo" else 96)
    if precision != "fp32":
        model, _ = quantize_int8_pt2e(model, x, heads=precision == "int8-heads")
    detector = ort_detector(model, x[0], tmp_path / "model.onnx")
    with torch.no_grad():
        ref = model(list(x[1:3]))
    out = detector(list(x[1:3]))
    for r, o in zip(ref, out):
        assert len(o["boxes"]) == len(r["boxes"]) > 0
        assert torch.allclose(o["boxes"], r["boxes"], atol=1e-3) and torch.allclose(o["scores"], r["scores"], atol=1e-4)
        assert torch.equal(o["labels"], r["labels"])
    types = {init.data_type for init in onnx.load(str(tmp_path / "model.onnx")).graph.initializer}
    assert (onnx.TensorProto.INT8 in types) == (precision != "fp32")
    timed = interleaved_latency({"onnxruntime": detector, "eager": model}, list(x[1:3]),
                                {"threads": 1, "warmup": 1, "rounds": 2})  # called alike, timed in the same rounds
    assert all(t["cpu_ms"] > 0 for t in timed.values())


def test_int8_scope_decides_what_onnx_runtime_runs_in_int8(tmp_path):
    """Backbone only, ONNX Runtime runs every convolution that feeds a residual add in float (no quantize node
    after it) and the box head in float; ``residual_inputs`` makes those convolutions ``QLinearConv`` and their adds
    ``QLinearAdd``, ``heads`` the box head's first layer a ``QGemm``; each detector still detects."""
    from methods.quantize_pt2e import quantize_int8_pt2e
    from study.onnx_runtime import ort_detector
    model, x = tiny(), images(4, 64, 96)
    ops = {}
    for name, scope in (("backbone", {}), ("residual", {"residual_inputs": True}),
                        ("both", {"residual_inputs": True, "heads": True})):
        qmodel, _ = quantize_int8_pt2e(model, x, **scope)
        detector = ort_detector(qmodel, x[0], tmp_path / f"{name}.onnx")
        assert len(detector(list(x[1:2]))[0]["boxes"]) > 0
        ops[name] = runtime_ops(tmp_path / f"{name}.onnx")
    blocks = sum(type(m).__name__ == "BasicBlock" for m in model.backbone.body.modules())  # each ends in an add
    assert blocks >= 2
    assert ops["backbone"]["QLinearAdd"] == 0 and ops["residual"]["QLinearAdd"] >= blocks
    assert ops["residual"]["QLinearConv"] >= ops["backbone"]["QLinearConv"] + blocks
    assert ops["backbone"]["QGemm"] == ops["residual"]["QGemm"] == 0 and ops["both"]["QGemm"] >= 1


def test_yolo_convolutions_before_silu_run_as_int8_in_onnx_runtime(tmp_path):
    """SiLU has no int8 pattern, so a YOLO convolution's output is not quantized and ONNX Runtime runs it in float on
    dequantized weights; the family's ``int8_conv_outputs`` (on with ``residual_inputs``) ends each in a quantize
    node, which ONNX Runtime fuses into ``QLinearConv``, except the Detect branches' last convolutions (their
    outputs leave the graph); ``sigmoid_outputs`` then quantizes each SiLU's sigmoid, which ONNX Runtime runs as
    ``QLinearSigmoid`` (and the product as ``QLinearMul`` where both its inputs are quantized); the detector still
    detects and stays close to fp32."""
    import torch.nn.functional as F
    from test_quantize_pt2e import briefly_trained_yolo
    from methods.quantize_pt2e import quantize_int8_pt2e
    from study.onnx_runtime import ort_detector
    model, x = briefly_trained_yolo()
    ops = {}
    for name, scope in (("plain", {"conv_outputs": False}), ("conv", {}),  # {}: as the family declares (on)
                        ("sigmoid", {"sigmoid_outputs": True})):
        qmodel, info = quantize_int8_pt2e(model, x, heads=True, residual_inputs=True, **scope)
        assert info.get("conv_outputs", False) == (name != "plain")
        assert info.get("sigmoid_outputs", False) == (name == "sigmoid")
        detector = ort_detector(qmodel, x[0], tmp_path / f"{name}.onnx")
        assert len(detector(list(x[:2]))) == 2
        ops[name] = runtime_ops(tmp_path / f"{name}.onnx")
        with torch.no_grad():
            ref, out = model.model(x)[0], qmodel.model(x)[0]
        assert F.cosine_similarity(ref.flatten(), out.flatten(), dim=0) >= 0.99
    convolutions = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    last = 6  # the Detect branches' 1x1 output convolutions
    assert ops["plain"]["QLinearConv"] == 0
    assert ops["conv"]["QLinearConv"] >= convolutions - last - 1  # (the DFL's fixed 1x1 convolution stays float)
    assert ops["conv"]["QLinearSigmoid"] == ops["conv"]["QLinearMul"] == 0
    silus = sum(isinstance(m, torch.nn.SiLU) for m in model.modules())  # one module object may serve many calls
    assert ops["sigmoid"]["QLinearConv"] == ops["conv"]["QLinearConv"]
    assert ops["sigmoid"]["QLinearSigmoid"] >= ops["conv"]["QLinearConv"] - 1 >= silus
    assert ops["sigmoid"]["QLinearMul"] >= 1


def test_yolo_trunk_exports_with_both_exporters(tmp_path):
    from detectors.yolo import build_yolo
    torch.manual_seed(0)
    model = build_yolo("yolov8p", 3).eval()
    part, x = onnx_part(model, images(1, 64, 64))
    with torch.no_grad():
        ref = part(x)
    for dynamo in (False, True):
        path = export_onnx(part, x, tmp_path / f"yolo-{dynamo}.onnx", dynamo=dynamo)
        assert compare(ref, run(session(path), x))["max_rel"] < 1e-4, dynamo


def test_sessions_sleep_between_runs(tmp_path):
    """Each session has its own thread pool; one left spinning after its run slowed the next session's first image
    about 2.5x in the latency pass's interleaved rounds (docs/decisions.md), so sessions do not spin."""
    part, x = onnx_part(tiny(), images())
    sess = session(export_onnx(part, x[:1], tmp_path / "fp32.onnx"), threads=2)
    assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_latency_pass_times_each_runtime_in_rounds_of_its_own(tmp_path, monkeypatch):
    import types

    from study import latency_pass

    calls = []
    monkeypatch.setattr(latency_pass, "interleaved_latency", lambda models, *a, **k: calls.append(sorted(models)) or {
        key: {"cpu_ms": 1.0, "cpu_ms_iqr": 0.1} for key in models})
    monkeypatch.setattr("study.onnx_runtime.ort_detector", lambda model, image, path, threads: types.SimpleNamespace(
        path=types.SimpleNamespace(stat=lambda: types.SimpleNamespace(st_size=10 ** 6))))
    monkeypatch.setattr(latency_pass, "evaluate_map", lambda *a: 0.5)
    workspace = types.SimpleNamespace(image_set=lambda split: None, data=lambda: types.SimpleNamespace(class_names=[]),
                                      run_dir=lambda run_id: tmp_path / run_id)
    out = latency_pass._onnxruntime_pass(workspace, {"a": tiny(), "b": tiny()}, {"a": True, "b": True},
                                         [images(1)[0]], {"threads": 1, "seed": 0})
    assert calls == [[("a", "ort"), ("b", "ort")], [("a", "eager"), ("b", "eager")]]
    assert out["a"]["cpu_ms"] == 1.0 and out["a"]["eager_ms"] == 1.0 and out["a"]["onnx_mb"] == 1.0
