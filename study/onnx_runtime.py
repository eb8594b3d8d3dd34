"""Detectors in ONNX Runtime: whole-detector export (float, or with its PT2E int8 graph as QDQ), static int8
through ``onnxruntime.quantization``, and CPU latency at batch 1.

- Whole detectors (:func:`export_detector`, :class:`OrtDetector`): the TorchScript-based exporter traces one
  canvas image through the model. Faster R-CNN and FCOS export whole (NMS and RoIAlign included); YOLO exports
  its network (trunk and Detect head, decoded boxes and class scores) and NMS runs after ONNX Runtime, in
  PyTorch, as ultralytics' own ONNX export leaves it. A PT2E int8 part (:mod:`methods.quantize_pt2e`) exports as
  QuantizeLinear/DequantizeLinear around int8 weights (:func:`register_pt2e_symbolics`), which ONNX Runtime fuses
  into int8 kernels: the model timed is the one evaluated.

- What is exported: the family's quantizable part (:func:`onnx_part`: the backbone body + FPN of Faster R-CNN and
  FCOS, fed the normalised batch; the layers of a YOLO before its Detect head), or any module whose outputs are
  tensors, lists, tuples or dicts of tensors (flattened into ONNX outputs in ``torch.utils._pytree`` order).
- Export: ``torch.onnx.export``, the TorchScript-based exporter (``dynamo=False``, the default here) or the
  ``torch.export``-based one (``dynamo=True``, which needs ``onnxscript``). Batch size fixed at export (1 here).
- Int8: ``quantize_static`` in QDQ format (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8
  kernels), per-channel weights by default, activations calibrated (min-max) by a data reader over a few images.
  ``quant_pre_process`` (shape inference, graph optimisation) runs first, as ONNX Runtime recommends.
- Latency: ONNX Runtime's CPU provider, ``intra_op_num_threads`` fixed, one inter-op thread, batch 1; an
  :class:`OrtDetector` is called like the PyTorch model, so :func:`study.cost.interleaved_latency` times it as it
  times eager models (the latency pass times each runtime in rounds of its own).
"""
from __future__ import annotations

import collections
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import torch


class FlatOutputs(torch.nn.Module):
    """``module`` with its outputs flattened to a tuple of tensors (ONNX outputs are a flat list)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return tuple(torch.utils._pytree.tree_leaves(self.module(x)))


def onnx_part(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.nn.Module, torch.Tensor]:
    """(module, its input for ``images`` ((N, 3, H, W) in 0..1)) for a detector's quantizable part, the same part
    that :mod:`methods.quantize` and :mod:`methods.quantize_pt2e` make int8: the family's ``input`` module (the
    backbone of Faster R-CNN and FCOS, on the transform's normalised batch); for YOLO the layers before the Detect
    head (:class:`detectors.yolo.YOLOTrunk`, on the images)."""
    from detectors import declaration, family_of, module_at

    model = model.eval()
    if family_of(model) == "yolo":
        from detectors.yolo import YOLOTrunk
        return YOLOTrunk(model.model).eval(), images.float()
    part = module_at(model, declaration(model)["input"])
    return part, model.transform(list(images.float()))[0].tensors


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path | str, dynamo: bool = False,
                opset: int = 17) -> Path:
    """Write ``module`` (eval mode, outputs flattened by :class:`FlatOutputs`) as ONNX at ``path``, traced on
    ``example``. Returns the path."""
    path = Path(path)
    wrapped = FlatOutputs(module).eval()
    with torch.no_grad():
        if dynamo:
            program = torch.onnx.export(wrapped, (example,), dynamo=True, opset_version=max(opset, 18),
                                        input_names=["images"])
            program.save(str(path))
        else:
            torch.onnx.export(wrapped, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["images"], do_constant_folding=True)
    return path


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a list of input arrays."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name, self.batches, self.i = input_name, batches, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.input_name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def quantize_onnx_int8(fp32_path: Path | str, int8_path: Path | str, calibration: torch.Tensor,
                       per_channel: bool = True, batch_size: int = 1) -> Path:
    """Static int8 (QDQ) of the ONNX model at ``fp32_path`` into ``int8_path``, calibrated (min-max) on
    ``calibration``: the model's inputs, (N, ...), fed ``batch_size`` at a time (the exported batch size), or one
    (C, H, W) image at a time to a model whose input has no batch dimension (a whole torchvision detector).
    Activations uint8, weights int8 (per channel by default). ``quant_pre_process`` runs first; where its symbolic
    shape inference fails (a whole detector's data-dependent shapes), it runs without it."""
    import onnxruntime
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path).resolve(), Path(int8_path).resolve()
    prepared = int8_path.with_name(int8_path.stem + ".prep.onnx")
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):  # it leaves temp files in the cwd
        try:
            quant_pre_process(str(fp32_path), str(prepared))
        except Exception:  # "Incomplete symbolic shape inference"
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    model_input = onnxruntime.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0]
    batches = [calibration[i:i + batch_size].float().numpy() for i in range(0, len(calibration), batch_size)]
    if len(model_input.shape) < calibration.dim():
        batches = [image for batch in batches for image in batch]
    quantize_static(str(prepared), str(int8_path), _Reader(model_input.name, batches), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink(missing_ok=True)
    return int8_path


def session(path: Path | str, threads: int = 1):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and one inter-op thread, whose threads sleep
    when a run ends instead of spinning: each session has its own thread pool, and a pool still spinning after its
    run competes for the cores with the next session's (docs/decisions.md, "ONNX Runtime sessions do not spin")."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runtime_ops(path: Path | str) -> collections.Counter:
    """Operator counts of the graph ONNX Runtime runs for the model at ``path``, after its extended optimisations
    (where QuantizeLinear/DequantizeLinear around an operator fuse into its int8 kernel), largest first (an operator
    it does not run counts 0)."""
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory() as scratch:
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops = collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    return collections.Counter(dict(ops.most_common()))


def run(sess, x: torch.Tensor) -> list[np.ndarray]:
    """The session's outputs for the input ``x``."""
    return sess.run(None, {sess.get_inputs()[0].name: x.float().numpy()})


# ---------------------------------------------------------------- whole detectors
def _zero_point(value: int, quant_min: int) -> torch.Tensor:
    return torch.tensor(int(value), dtype=torch.uint8 if int(quant_min) == 0 else torch.int8)


def register_pt2e_symbolics(opset: int = 17) -> None:
    """ONNX symbolics (TorchScript-based exporter) for the ``quantized_decomposed`` ops of a converted PT2E graph:
    per-tensor quantize and dequantize (constant scale and zero point) and per-channel dequantize of the int8
    weights, as ONNX QuantizeLinear / DequantizeLinear (uint8 activations, int8 weights)."""
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper as sh

    def const(g, value, kind):
        return sh._maybe_get_const(value, kind)

    def per_tensor(op):
        def symbolic(g, x, scale, zero_point, quant_min, quant_max, dtype, *rest):
            scale_t = torch.tensor(float(const(g, scale, "f")))
            zp = _zero_point(const(g, zero_point, "i"), const(g, quant_min, "i"))
            return g.op(op, x, g.op("Constant", value_t=scale_t), g.op("Constant", value_t=zp))
        return symbolic

    def dequantize_per_channel(g, x, scales, zero_points, axis, quant_min, quant_max, dtype, *rest):
        int8 = 3 if int(const(g, quant_min, "i")) < 0 else 2  # ONNX TensorProto INT8 / UINT8
        return g.op("DequantizeLinear", x, scales, g.op("Cast", zero_points, to_i=int8),
                    axis_i=int(const(g, axis, "i")))

    for name, fn in (("quantize_per_tensor", per_tensor("QuantizeLinear")),
                     ("dequantize_per_tensor", per_tensor("DequantizeLinear")),
                     ("dequantize_per_channel", dequantize_per_channel)):
        register_custom_op_symbolic(f"quantized_decomposed::{name}", fn, opset)


class _OneImage(torch.nn.Module):
    """A torchvision detector on one (3, H, W) image: its boxes, scores and labels."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image):
        out = self.model([image])[0]
        return out["boxes"], out["scores"], out["labels"]


class _YOLONetwork(torch.nn.Module):
    """A YOLO detector's network on one (3, H, W) image: decoded boxes and class scores before NMS."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image):
        inference, _ = self.model.model(image[None])
        return inference


def export_detector(model: torch.nn.Module, image: torch.Tensor, path: Path | str, opset: int = 17) -> Path:
    """Write the whole detector ``model`` (float, or with a PT2E int8 part) as ONNX at ``path``, traced on one
    canvas image (3, H, W) in 0..1 (see the module docstring for what YOLO leaves to PyTorch)."""
    from detectors import family_of

    register_pt2e_symbolics(opset)
    model = model.eval().cpu()
    wrapped = _YOLONetwork(model) if family_of(model) == "yolo" else _OneImage(model)
    path = Path(path)
    with torch.no_grad(), _quiet():
        torch.onnx.export(wrapped.eval(), (image.float(),), str(path), dynamo=False, opset_version=opset,
                          input_names=["image"], do_constant_folding=True)
    return path


@contextlib.contextmanager
def _quiet():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python values (fixed canvas)
        yield


class OrtDetector:
    """An exported detector (:func:`export_detector`) in an ONNX Runtime CPU session, called like the PyTorch
    model: a list of (3, H, W) images in, a list of ``{"boxes", "scores", "labels"}`` out, one image per run.
    ``postprocess``: YOLO's NMS (the detector's own), None for detectors exported whole."""

    def __init__(self, path: Path | str, threads: int = 1, postprocess=None):
        self.path, self.session, self.postprocess = Path(path), session(path, threads), postprocess
        self.input_name = self.session.get_inputs()[0].name

    def eval(self):
        return self

    def to(self, device):
        return self

    def __call__(self, images) -> list[dict]:
        out = []
        for image in images:
            outputs = self.session.run(None, {self.input_name: image.float().cpu().numpy()})
            if self.postprocess is not None:
                out += self.postprocess(torch.from_numpy(outputs[0]))
            else:
                boxes, scores, labels = (torch.from_numpy(o) for o in outputs)
                out.append({"boxes": boxes, "scores": scores, "labels": labels})
        return out


def ort_detector(model: torch.nn.Module, image: torch.Tensor, path: Path | str, threads: int = 1) -> OrtDetector:
    """``model`` exported to ``path`` (:func:`export_detector`) and loaded in ONNX Runtime."""
    from detectors import family_of

    export_detector(model, image, path)
    return OrtDetector(path, threads, model.postprocess if family_of(model) == "yolo" else None)


def compare(reference, outputs: list[np.ndarray]) -> dict:
    """Max absolute error, it relative to the reference's largest magnitude, and cosine similarity between a
    PyTorch output (any nesting of tensors) and ONNX Runtime's flat outputs."""
    ref = torch.cat([t.detach().flatten().float() for t in torch.utils._pytree.tree_leaves(reference)])
    out = torch.cat([torch.from_numpy(np.asarray(o)).flatten().float() for o in outputs])
    diff = (ref - out).abs().max().item()
    return {"max_abs": diff, "max_rel": diff / max(ref.abs().max().item(), 1e-12),
            "cosine": torch.nn.functional.cosine_similarity(ref, out, dim=0).item()}
