"""Post-training static int8 on PyTorch's maintained path: torchao's PT2E flow with ``X86InductorQuantizer``.

Flow: ``torch.export.export`` of the family's quantizable part, ``prepare_pt2e`` (BatchNorm folded into the
convolutions, observers inserted), calibration passes, ``convert_pt2e`` (quantize/dequantize pairs around int8
weights: a reference model that runs in eager mode at float speed). To run fast on x86, the converted graph is
lowered: :func:`lower_x86` (torchao's ``lower_pt2e_quantized_to_x86``: freezing passes that fuse each
dequantize-conv-quantize pattern into a oneDNN int8 convolution, no code generation) or ``torch.compile`` with
inductor (the same fusions plus generated C++ for the rest; needs a C++ compiler).

What is quantized is what :mod:`methods.quantize` quantizes, found the same way: for Faster R-CNN and FCOS the
family declaration's ``input`` module (:mod:`detectors`), the backbone (body + FPN), fed the transform's normalised
batch; the RPN, RoI and dense heads stay float. For YOLO every layer before the Detect head
(:class:`detectors.yolo.YOLOTrunk`; export handles C2f's ``chunk``, so no split is needed); the Detect head stays
float. (The whole ``DetectionModel`` also exports and quantizes, but the lowering pass fails on the head's anchor
decoding, a data-dependent ``.item()``.) SiLU has no int8 pattern in ``X86InductorQuantizer`` and runs in float
between int8 convolutions.

Export modes. ``strict=True`` (TorchDynamo) names every call of a module apart. ``strict=False`` (the default of
``torch.export``) leaves ``source_fn_stack`` empty, and torch's fallback then puts every call of a module used
twice (torchvision's ``BasicBlock``/``Bottleneck`` call ``self.relu`` twice) into one partition, on which
``X86InductorQuantizer`` fails with "Input partition has more than one output node" (torchao issue 4478).
:func:`split_repeated_calls` gives each such call its own partition; it runs on every non-strict export here.

The batch dimension is exported dynamic (any batch size runs); height and width are fixed to the calibration
images' (the study's canvas).
"""
from __future__ import annotations

import copy
import importlib

import torch

from detectors import declaration, family_of, module_at

QUANT_PATH = "torchao PT2E, X86InductorQuantizer (static, per-channel weights)"


def _resolve(type_name):
    if isinstance(type_name, type):
        return type_name
    module, _, name = str(type_name).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def split_repeated_calls(gm: torch.fx.GraphModule) -> int:
    """Give each call of a module that is called more than once its own source partition; returns how many nodes
    were marked.

    A non-strict export records a second call of a module under ``nn_module_stack`` keys ending in ``@1``, ``@2``,
    ..., but the partitioner (``get_source_partitions``) groups by the module's path, which is the same for every
    call. Nodes of a repeated call get a ``source_fn_stack`` entry named by that unique key, which the partitioner
    reads first; nodes of modules called once are left as they are.
    """
    marked = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.meta.get("source_fn_stack"):
            continue
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        calls = [key for key in stack if "@" in key]
        if not calls:
            continue
        key, (_, type_name) = list(stack.items())[-1]
        module_type = _resolve(type_name)
        if module_type is None:
            continue
        node.meta["source_fn_stack"] = [("/".join(calls) if key not in calls else key, module_type)]
        marked += 1
    return marked


def _quantizer(reduce_range: bool, float_modules: tuple[str, ...] = ()):
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(
        reduce_range=reduce_range))
    for name in float_modules:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def export_module(module: torch.nn.Module, example: torch.Tensor, strict: bool = False,
                  dynamic_batch: bool = True) -> torch.fx.GraphModule:
    """``torch.export`` of ``module`` on ``example`` (eval mode), as a GraphModule ready for ``prepare_pt2e``
    (repeated module calls split in non-strict mode). With ``dynamic_batch`` the batch size is free."""
    module = module.eval()
    dynamic_shapes = None
    if dynamic_batch:
        if example.shape[0] < 2:  # a batch of 1 would be specialised
            example = example.expand(2, *example.shape[1:]).contiguous()
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},)
    exported = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes, strict=strict)
    gm = exported.module()
    if not strict:
        split_repeated_calls(gm)
    return gm


def quantize_module(module: torch.nn.Module, batches: list[torch.Tensor], strict: bool = False,
                    reduce_range: bool = False, float_modules: tuple[str, ...] = (),
                    dynamic_batch: bool = True) -> torch.fx.GraphModule:
    """PT2E post-training static int8 of ``module``: exported, prepared with ``X86InductorQuantizer``'s default
    static config (histogram-observed uint8 activations, per-channel symmetric int8 weights), calibrated on
    ``batches``, converted. ``float_modules``: module paths (as in ``named_modules``) left float. The result accepts
    ``.eval()`` and ``.train()`` (no-ops for it: it has no dropout, and its BatchNorm is folded)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = export_module(copy.deepcopy(module), batches[0], strict=strict, dynamic_batch=dynamic_batch)
    prepared = prepare_pt2e(gm, _quantizer(reduce_range, float_modules))
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    # .eval() / .train() (called by the study on whole detectors) are refused on exported graphs unless allowed
    return allow_exported_model_train_eval(convert_pt2e(prepared))


def lower_x86(converted: torch.fx.GraphModule, example: torch.Tensor) -> torch.fx.GraphModule:
    """The converted model with its int8 patterns fused into oneDNN int8 kernels (torchao's
    ``lower_pt2e_quantized_to_x86``): fast in eager mode without ``torch.compile``. The lowered graph is fixed to
    ``example``'s shape (batch size included)."""
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

    with torch.no_grad():
        return lower_pt2e_quantized_to_x86(converted, (example,))


def quantizable_part(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """(name, module) of what int8 covers (see the module docstring)."""
    if family_of(model) == "yolo":
        from detectors.yolo import YOLOTrunk
        return "backbone + neck", YOLOTrunk(model.model).eval()
    path = declaration(model)["input"]
    return path, module_at(model, path)


def _batches(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The quantizable part's inputs for ``images`` ((N, 3, H, W) in 0..1): normalised by the detector's transform
    where it has one (torchvision families), else the images themselves (YOLO)."""
    chunks = [images[i:i + batch_size].float() for i in range(0, len(images), batch_size)]
    transform = getattr(model, "transform", None)
    if transform is None:
        return chunks
    return [transform(list(chunk))[0].tensors for chunk in chunks]


def quantize_int8_pt2e(model: torch.nn.Module, calibration_images: torch.Tensor, strict: bool = False,
                       batch_size: int = 8, reduce_range: bool = False) -> tuple[torch.nn.Module, dict]:
    """A CPU copy of ``model`` whose quantizable part (:func:`quantizable_part`) is a PT2E int8 graph, calibrated
    on ``calibration_images`` ((N, 3, H, W) in 0..1; their height and width are the only ones the graph runs).
    Returns (model, details). The graph is the converted reference graph (eager, float speed); :func:`lower_x86`
    or ``torch.compile`` makes it fast."""
    family = family_of(model)
    qmodel = copy.deepcopy(model).cpu().eval()
    name, part = quantizable_part(qmodel)
    graph = quantize_module(part, _batches(qmodel, calibration_images, batch_size), strict, reduce_range)
    info = {"quant_path": QUANT_PATH, "export": "strict" if strict else "non-strict",
            "calibration_images": len(calibration_images), "reduce_range": reduce_range}
    if family == "yolo":
        from detectors.yolo import YOLODetector
        from methods.quantize import Int8YOLOModel
        qmodel = YOLODetector(Int8YOLOModel(graph, qmodel.detect), qmodel.hyp).eval()
        return qmodel, info | {"int8_parts": "backbone + neck", "float_parts": "Detect head; SiLU in float"}
    for attr in ("body_channels", "out_channels"):  # what the family's tap_channels and heads read
        if hasattr(part, attr):
            setattr(graph, attr, getattr(part, attr))
    parent, _, attr = name.rpartition(".")
    setattr(module_at(qmodel, parent) if parent else qmodel, attr, graph)
    heads = "RPN and RoI heads" if family == "faster_rcnn" else "dense heads"
    return qmodel, info | {"int8_parts": f"{name} (body + FPN)", "float_parts": heads}
