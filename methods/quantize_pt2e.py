"""int8 on PyTorch's maintained path: torchao's PT2E flow with ``X86InductorQuantizer``, post-training and
quantization-aware, and saving and loading the result.

Post-training (:func:`quantize_int8_pt2e`): ``torch.export.export`` of the family's quantizable part,
``prepare_pt2e`` (BatchNorm folded into the convolutions, observers inserted), calibration passes, ``convert_pt2e``
(quantize/dequantize pairs around int8 weights: a reference model that runs in eager mode at float speed).
Quantization-aware (:func:`prepare_qat`, then :func:`convert_qat`): a train-mode export, ``prepare_qat_pt2e``
(fake quantization; BatchNorm statistics frozen by default), training as a module, ``convert_pt2e``. Saving
(:func:`save_int8`, :func:`load_int8`): the int8 part as a ``torch.export`` program, the float rest as a state
dict. To run fast on x86 in PyTorch, the converted graph is lowered: :func:`lower_x86` (torchao's
``lower_pt2e_quantized_to_x86``: freezing passes that fuse each dequantize-conv-quantize pattern into a oneDNN int8
convolution, no code generation) or ``torch.compile`` with inductor; ONNX Runtime runs its export as int8
(:mod:`study.onnx_runtime`).

What is quantized (:func:`quantizable_part`): for Faster R-CNN and FCOS the family declaration's ``input`` module
(:mod:`detectors`), the backbone (body + FPN), fed the transform's normalised batch; with ``heads``, also the heads
the family declares in ``int8_heads``, each its own graph calibrated on its inputs (:class:`Int8Head`: Faster
R-CNN's RoI box head, with a free number of rows; YOLO's six Detect branches, one row per image); the RPN, the box
predictor and FCOS's dense heads stay float. With
``residual_inputs``, convolutions that feed a residual add are quantized at their output too
(:func:`quantize_residual_inputs`: what ONNX Runtime needs to run them and the add in int8). For YOLO every layer
before the Detect head (:class:`detectors.yolo.YOLOTrunk`; export handles C2f's ``chunk``, so no split is needed),
and with ``heads`` the Detect head's convolution branches; the head's box decoding (DFL, anchor points) stays
float. (The whole ``DetectionModel`` also exports and
quantizes, but the lowering pass fails on the head's anchor decoding, a data-dependent ``.item()``.) SiLU has no
int8 pattern in ``X86InductorQuantizer`` and runs in float between int8 convolutions.

Export modes. ``strict=True`` (TorchDynamo) names every call of a module apart. ``strict=False`` (the default of
``torch.export``) leaves ``source_fn_stack`` empty, and torch's fallback then puts every call of a module used
twice (torchvision's ``BasicBlock``/``Bottleneck`` call ``self.relu`` twice) into one partition, on which
``X86InductorQuantizer`` fails with "Input partition has more than one output node" (torchao issue 4478).
:func:`split_repeated_calls` gives each such call its own partition; it runs on every non-strict export here.

Each call that prepares, converts, switches the mode of or lowers a graph runs inside
:func:`methods.pt2e_patterns.reused_patterns` (torchao's pattern graphs exported once per process).

The batch dimension is exported dynamic (any batch size runs); height and width are fixed to the calibration
images' (the study's canvas).
"""
from __future__ import annotations

import copy
import importlib
import types

import torch

from detectors import declaration, family_of, module_at
from methods.pt2e_patterns import reused_patterns

QUANT_PATH = "torchao PT2E, X86InductorQuantizer (static, per-channel weights)"
MAX_BATCH = 1024  # images in a batch, the quantizable part's exported bound
MAX_ROWS = 1 << 16  # RoIs in a call of an int8 head (an evaluation batch of images x 200 proposals, training's samples)


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


def quantize_residual_inputs(gm: torch.fx.GraphModule, spec) -> int:
    """Give every annotated add that takes one of its inputs unquantized (``X86InductorQuantizer``'s conv + add
    pattern: the convolution's output goes straight into oneDNN's fused add) a quantized version of that input:
    the producing node's output is annotated with ``spec``. Returns how many nodes were annotated.

    Then the convolution ends in a quantize node, which ONNX Runtime needs to run it as an int8 ``QLinearConv``
    (dequantize-conv-quantize), and the add reads two dequantized inputs and is quantized after (its ReLU folded
    into the quantize node), which ONNX Runtime runs as ``QLinearAdd``."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    key, annotated = "quantization_annotation", 0
    for node in gm.graph.nodes:
        note = node.meta.get(key)
        if node.target not in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor) or note is None \
                or not note.input_qspec_map:
            continue
        for arg in node.args[:2]:
            if not isinstance(arg, torch.fx.Node) or arg in note.input_qspec_map:
                continue
            source = arg.meta.get(key)
            if source is None:
                arg.meta[key] = QuantizationAnnotation(output_qspec=spec, _annotated=True)
            elif source.output_qspec is None:
                source.output_qspec = spec
            else:
                continue
            annotated += 1
    return annotated


CONVOLUTIONS = (torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default)


def quantize_conv_outputs(gm: torch.fx.GraphModule, spec) -> int:
    """Give every annotated convolution whose output no node takes quantized (SiLU follows it: no int8 pattern in
    ``X86InductorQuantizer``) an output quantization ``spec``, except where its output leaves the graph. Returns how
    many were annotated.

    ONNX Runtime fuses only dequantize-conv-quantize into an int8 ``QLinearConv``: without a quantize node after it,
    such a convolution runs in float on dequantized weights. With it, SiLU runs in float between a dequantize and a
    quantize node."""
    key, annotated = "quantization_annotation", 0
    for node in gm.graph.nodes:
        note = node.meta.get(key)
        if node.target not in CONVOLUTIONS or note is None or not note.input_qspec_map or note.output_qspec is not None:
            continue
        users = list(node.users)
        if not users or any(u.op == "output" or node in getattr(u.meta.get(key), "input_qspec_map", {})
                            for u in users):
            continue
        note.output_qspec = spec
        annotated += 1
    return annotated


SILU = (torch.ops.aten.silu.default, torch.ops.aten.silu_.default)


def decompose_silu(gm: torch.fx.GraphModule) -> int:
    """Replace every SiLU node of ``gm`` by its definition, ``x * sigmoid(x)`` (two nodes a quantizer can annotate
    apart); returns how many were replaced. The new nodes keep the SiLU's value metadata but not its source module,
    so that ``X86InductorQuantizer`` no longer sees a conv + SiLU pattern there: it annotates the convolution alone
    and the product as a quantized ``mul`` (both inputs quantized)."""
    replaced = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in SILU:
            continue
        x = node.args[0]
        with gm.graph.inserting_before(node):
            sigmoid = gm.graph.call_function(torch.ops.aten.sigmoid.default, (x,))
            product = gm.graph.call_function(torch.ops.aten.mul.Tensor, (x, sigmoid))
        for new in (sigmoid, product):
            new.meta = {k: v for k, v in node.meta.items() if k not in ("source_fn_stack", "nn_module_stack")}
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)
        replaced += 1
    gm.graph.lint()
    gm.recompile()
    return replaced


def quantize_sigmoid_outputs(gm: torch.fx.GraphModule, spec) -> int:
    """Give every sigmoid that reads an annotated convolution an output quantization ``spec``, and the convolution
    too where it has none; returns how many sigmoids were annotated.

    With SiLU decomposed (:func:`decompose_silu`), every reader of the convolution then takes it dequantized, so
    ONNX Runtime runs it as ``QLinearConv``, the dequantize-sigmoid-quantize as ``QLinearSigmoid`` and the product
    of the two (``X86InductorQuantizer`` quantizes both inputs of a ``mul``) as ``QLinearMul``, instead of SiLU in
    float between a dequantize and a quantize (docs/quantization-notes.md)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    key, annotated = "quantization_annotation", 0
    for node in gm.graph.nodes:
        if node.target != torch.ops.aten.sigmoid.default or node.meta.get(key) is not None:
            continue
        conv = node.args[0]
        note = conv.meta.get(key) if isinstance(conv, torch.fx.Node) and conv.target in CONVOLUTIONS else None
        if note is None or not note.input_qspec_map:
            continue
        if note.output_qspec is None:
            note.output_qspec = spec
        node.meta[key] = QuantizationAnnotation(output_qspec=spec, _annotated=True)
        annotated += 1
    return annotated


def _quantizer(reduce_range: bool, float_modules: tuple[str, ...] = (), qat: bool = False,
               residual_inputs: bool = False, conv_outputs: bool = False, sigmoid_outputs: bool = False):
    """``X86InductorQuantizer`` with its default static config; ``residual_inputs``: and
    :func:`quantize_residual_inputs` after its annotation; ``conv_outputs``: and :func:`quantize_conv_outputs`;
    ``sigmoid_outputs``: SiLU decomposed before the annotation (:func:`decompose_silu`) and
    :func:`quantize_sigmoid_outputs` after it."""
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    config = get_default_x86_inductor_quantization_config(is_qat=qat, reduce_range=reduce_range)

    class Quantizer(X86InductorQuantizer):
        def transform_for_annotation(self, model):
            model = super().transform_for_annotation(model)
            if sigmoid_outputs:
                decompose_silu(model)
            return model

        def annotate(self, model):
            model = super().annotate(model)
            if residual_inputs:
                quantize_residual_inputs(model, config.output_activation)
            if conv_outputs:
                quantize_conv_outputs(model, config.output_activation)
            if sigmoid_outputs:
                quantize_sigmoid_outputs(model, config.output_activation)
            return model

    quantizer = Quantizer().set_global(config)
    for name in float_modules:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def export_module(module: torch.nn.Module, example: torch.Tensor, strict: bool = False,
                  dynamic_batch: bool = True, train: bool = False, max_batch: int = MAX_BATCH) -> torch.fx.GraphModule:
    """``torch.export`` of ``module`` on ``example`` (eval mode, or train mode for QAT), as a GraphModule ready for
    ``prepare_pt2e`` (repeated module calls split in non-strict mode). With ``dynamic_batch`` the batch size is
    free up to ``max_batch``."""
    module = module.train(train)
    dynamic_shapes = None
    if dynamic_batch:
        if example.shape[0] < 2:  # a batch of 1 would be specialised
            example = example.expand(2, *example.shape[1:]).contiguous()
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    exported = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes, strict=strict)
    gm = exported.module()
    if not strict:
        split_repeated_calls(gm)
    return gm


@reused_patterns()
def quantize_module(module: torch.nn.Module, batches: list[torch.Tensor], strict: bool = False,
                    reduce_range: bool = False, float_modules: tuple[str, ...] = (),
                    dynamic_batch: bool = True, residual_inputs: bool = False,
                    max_batch: int = MAX_BATCH, conv_outputs: bool = False,
                    sigmoid_outputs: bool = False) -> torch.fx.GraphModule:
    """PT2E post-training static int8 of ``module``: exported, prepared with ``X86InductorQuantizer``'s default
    static config (histogram-observed uint8 activations, per-channel symmetric int8 weights), calibrated on
    ``batches``, converted. ``float_modules``: module paths (as in ``named_modules``) left float;
    ``residual_inputs``, ``conv_outputs``, ``sigmoid_outputs``: see :func:`quantize_residual_inputs`,
    :func:`quantize_conv_outputs`, :func:`quantize_sigmoid_outputs`. The result accepts
    ``.eval()`` and ``.train()`` (no-ops for it: it has no dropout, and its BatchNorm is folded)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = export_module(copy.deepcopy(module), batches[0], strict=strict, dynamic_batch=dynamic_batch,
                       max_batch=max_batch)
    prepared = prepare_pt2e(gm, _quantizer(reduce_range, float_modules, residual_inputs=residual_inputs,
                                           conv_outputs=conv_outputs, sigmoid_outputs=sigmoid_outputs))
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    # .eval() / .train() (called by the study on whole detectors) are refused on exported graphs unless allowed
    return allow_exported_model_train_eval(drop_unused_attributes(convert_pt2e(prepared)))


def drop_unused_attributes(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Delete the parameters and buffers no node of ``gm``'s graph reads (``convert_pt2e`` keeps the float weights
    beside the int8 constants it folded them into), so that the saved model holds int8 weights only."""
    read = {node.target for node in gm.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in list(gm.named_parameters()) + list(gm.named_buffers())]:
        if name not in read and not any(name.startswith(r + ".") for r in read):
            parent, _, attr = name.rpartition(".")
            owner = gm.get_submodule(parent) if parent else gm
            owner._parameters.pop(attr, None)
            owner._buffers.pop(attr, None)
    return gm


@reused_patterns()
def prepare_qat_module(module: torch.nn.Module, example: torch.Tensor, strict: bool = False,
                       reduce_range: bool = False, freeze_bn_stats: bool = True,
                       residual_inputs: bool = False, max_batch: int = MAX_BATCH,
                       conv_outputs: bool = False, sigmoid_outputs: bool = False) -> torch.fx.GraphModule:
    """``module`` exported in train mode and prepared for quantization-aware training (``prepare_qat_pt2e`` with
    ``X86InductorQuantizer``'s QAT config): fake-quantized activations and weights, BatchNorm simulated as folded
    into each convolution. Train it as a module, then :func:`convert_qat_module`. Observers start calibrating on
    the first training batches and calibrate in training mode only.

    ``freeze_bn_stats``: BatchNorm normalises with its running statistics in training too, and they stay as the
    float model left them (its scale and shift still train); ``.train()`` leaves it so. Without this, BatchNorm
    trains on batch statistics and the converted model departs from the fake-quantized one it was trained as
    (docs/quantization-notes.md: feature cosine 0.978 after two steps on a YOLO C2f stage, 0.99984 frozen)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    gm = export_module(copy.deepcopy(module), example, strict=strict, train=True, max_batch=max_batch)
    prepared = prepare_qat_pt2e(gm, _quantizer(reduce_range, qat=True, residual_inputs=residual_inputs,
                                               conv_outputs=conv_outputs, sigmoid_outputs=sigmoid_outputs))
    prepared.freeze_bn_stats = freeze_bn_stats
    move_exported_model_to_eval(prepared)
    prepared.train = types.MethodType(_qat_mode, prepared)
    prepared.eval = types.MethodType(_qat_eval, prepared)
    return prepared.train()


def _qat_eval(self):
    return self.train(False)


@reused_patterns()
def _qat_mode(self, mode: bool = True):
    """``train(mode)`` of a QAT graph: observers calibrate in training only (validation passes do not move the
    scales), and BatchNorm follows the mode unless its statistics are frozen (then it stays in eval mode; the graph
    has no other mode-dependent op: no dropout)."""
    from torchao.quantization.pt2e import (disable_observer, enable_observer, move_exported_model_to_eval,
                                           move_exported_model_to_train)

    self.apply(enable_observer if mode else disable_observer)
    if not self.freeze_bn_stats:
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
    self.training = mode
    return self


@reused_patterns()
def convert_qat_module(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 graph of a QAT-prepared module (:func:`prepare_qat_module`) after its training: BatchNorm folded,
    fake quantization replaced by quantize/dequantize pairs around int8 weights (as :func:`quantize_module`)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    return allow_exported_model_train_eval(drop_unused_attributes(convert_pt2e(prepared)))


@reused_patterns()
def lower_x86(converted: torch.fx.GraphModule, example: torch.Tensor,
              dynamic_batch: bool = False) -> torch.fx.GraphModule:
    """The converted model with its int8 patterns fused into oneDNN int8 kernels: fast in eager mode without
    ``torch.compile``. The lowered graph is fixed to ``example``'s shape (torchao's
    ``lower_pt2e_quantized_to_x86``), or, with ``dynamic_batch``, to its shape after the first dimension (a head
    fed a different number of RoIs per image): the same steps (a strict export, core-ATen decompositions kept
    composite, inductor's freezing passes and constant folding) on an export whose first dimension is free."""
    if not dynamic_batch:
        from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
        with torch.no_grad():
            return lower_pt2e_quantized_to_x86(converted, (example,))
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    table = torch.export.default_decompositions()
    for op in list(table):
        if not torch._export.utils._is_cia_op(op):  # after autograd: primitive ops are not decomposed
            del table[op]
    example = example if example.shape[0] >= 2 else example.expand(2, *example.shape[1:]).contiguous()
    with torch.no_grad():
        program = torch.export.export(converted, (example,), strict=True,
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_ROWS)},))
        gm = program.run_decompositions(table).module()
        for node in list(gm.graph.nodes):  # the freezing patterns match a permute, not aten.t
            if node.target == torch.ops.aten.t.default:
                with gm.graph.inserting_before(node):
                    node.replace_all_uses_with(gm.graph.call_function(torch.ops.aten.permute.default,
                                                                      (node.args[0], [1, 0])))
                gm.graph.erase_node(node)
        gm.recompile()
        freezing_passes(gm, (example,))
        constant_fold(gm)
    return gm


def lowered(qmodel: torch.nn.Module, image: torch.Tensor) -> torch.nn.Module:
    """A copy of a model made here whose int8 graphs are lowered to oneDNN int8 kernels (:func:`lower_x86`) for one
    (3, H, W) image at a time (an int8 head for any number of rows): the fast eager-mode form of the same int8
    model, for timing."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    qmodel = copy.deepcopy(qmodel).cpu().eval()
    heads = {path: module_inputs(qmodel, path, image[None]) for path in int8_heads(qmodel)}
    per_roi = head_rows(qmodel) == "rois"  # a number of rows that changes per image; else one row per image
    for path, inputs in heads.items():
        module_at(qmodel, path).graph = allow_exported_model_train_eval(
            lower_x86(module_at(qmodel, path).graph, torch.cat(inputs), dynamic_batch=per_roi))
    name, graph = quantized_part(qmodel)
    fast = allow_exported_model_train_eval(lower_x86(graph, _batches(qmodel, image[None], 1)[0]))
    return _with_part(qmodel, name, graph, fast).eval()


class Int8Head(torch.nn.Module):
    """A head's int8 (or fake-quantized) graph where the detector calls the float head (``graph``).
    ``in_channels``: the float head's input width (what a family reads its tap widths from). ``min_rows``: a call
    with fewer rows is padded to that many and cut back: 2 for a head fed RoIs (an image with one or none; the
    least its dynamically lowered graph takes), 1 for a head fed one row per image (lowered at that shape)."""

    def __init__(self, graph: torch.nn.Module, in_channels: int, min_rows: int = 2):
        super().__init__()
        self.graph, self.in_channels, self.min_rows = graph, in_channels, min_rows

    def forward(self, x):
        n = x.shape[0]
        if n >= self.min_rows:
            return self.graph(x)
        return self.graph(torch.cat([x, x.new_zeros((self.min_rows - n, *x.shape[1:]))]))[:n]


def _int8_head(model: torch.nn.Module, path: str, graph: torch.nn.Module) -> Int8Head:
    """``graph`` as the :class:`Int8Head` for the float head at ``path`` of ``model``."""
    first = next(m for m in module_at(model, path).modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    width = first.in_channels if isinstance(first, torch.nn.Conv2d) else first.in_features
    return Int8Head(graph, width, least_rows(model))


def head_rows(model: torch.nn.Module) -> str:
    """What the first dimension of the family's int8 heads' inputs counts (its declaration's ``int8_head_rows``):
    ``rois`` (any number per image: Faster R-CNN's box head) or ``images`` (YOLO's Detect branches)."""
    return declaration(model).get("int8_head_rows", "rois")


def least_rows(model: torch.nn.Module) -> int:
    """The fewest rows a call of the family's int8 heads takes as it is: 2 for RoIs (the least a dynamically
    lowered graph takes), 1 for one row per image."""
    return 2 if head_rows(model) == "rois" else 1


def head_paths(model: torch.nn.Module) -> tuple[str, ...]:
    """The heads that int8 covers beside the family's quantizable part (its declaration's ``int8_heads``: Faster
    R-CNN's RoI box head, YOLO's Detect branches), each quantized on its own inputs."""
    return tuple(declaration(model).get("int8_heads", ()))


def int8_heads(qmodel: torch.nn.Module) -> list[str]:
    """The paths of the heads of a model made here that are int8 (or QAT) graphs (:class:`Int8Head`)."""
    return [p for p in head_paths(qmodel) if isinstance(module_at(qmodel, p), Int8Head)]


def module_inputs(model: torch.nn.Module, path: str, images: torch.Tensor) -> list[torch.Tensor]:
    """The first input of the module at ``path`` in every call of it while ``model`` (eval mode) detects on
    ``images`` ((N, 3, H, W) in 0..1, one image at a time); for a head fed RoIs (:func:`head_rows`), calls with
    fewer than two rows are left out."""
    seen = []
    handle = module_at(model, path).register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            for image in images:
                model([image.float()])
    finally:
        handle.remove()
        model.train(was_training)
    return [x for x in seen if len(x) >= least_rows(model)]


def _set_module(model: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(module_at(model, parent) if parent else model, attr, module)


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


class Int8YOLOModel(torch.nn.Module):
    """An int8 trunk followed by the float Detect head; ``model[-1]`` is the head, as in ultralytics' models (what
    its loss and the distiller read)."""

    def __init__(self, trunk: torch.nn.Module, detect: torch.nn.Module):
        super().__init__()
        self.trunk = trunk
        self.model = torch.nn.ModuleList([detect])

    def forward(self, x):
        return self.model[-1](self.trunk(x))


def _with_part(qmodel: torch.nn.Module, name: str, part: torch.nn.Module, graph: torch.nn.Module) -> torch.nn.Module:
    """``qmodel`` (a copy) with ``graph`` in place of its part ``part`` at ``name`` (YOLO: a detector over an
    :class:`Int8YOLOModel` of the graph and the float Detect head)."""
    if family_of(qmodel) == "yolo":
        from detectors.yolo import YOLODetector
        return YOLODetector(Int8YOLOModel(graph, qmodel.detect), qmodel.hyp)
    for attr in ("body_channels", "out_channels"):  # what the family's tap_channels and heads read
        if hasattr(part, attr):
            setattr(graph, attr, getattr(part, attr))
    _set_module(qmodel, name, graph)
    return qmodel


def _parts(family: str, name: str, heads: tuple[str, ...] = ()) -> dict:
    if family == "yolo":
        if heads:
            return {"int8_parts": "backbone + neck, Detect convolutions (" + ", ".join(heads) + ")",
                    "float_parts": "Detect box decoding (DFL, anchor points); SiLU in float"}
        return {"int8_parts": "backbone + neck", "float_parts": "Detect head; SiLU in float"}
    floats = ("RPN, RoI box predictor" if heads else "RPN and RoI heads") if family == "faster_rcnn" \
        else "dense heads"
    return {"int8_parts": ", ".join([f"{name} (body + FPN)", *heads]), "float_parts": floats}


def quantize_int8_pt2e(model: torch.nn.Module, calibration_images: torch.Tensor, strict: bool = False,
                       batch_size: int = 8, reduce_range: bool = False, heads: bool = False,
                       residual_inputs: bool = False, conv_outputs: bool | None = None,
                       sigmoid_outputs: bool = False) -> tuple[torch.nn.Module, dict]:
    """A CPU copy of ``model`` whose quantizable part (:func:`quantizable_part`) is a PT2E int8 graph, calibrated
    on ``calibration_images`` ((N, 3, H, W) in 0..1; their height and width are the only ones the graph runs).
    ``heads``: the family's int8 heads (:func:`head_paths`) too, each calibrated on its inputs while the model
    with its int8 part detects on the same images (:class:`Int8Head`). ``residual_inputs``: see
    :func:`quantize_residual_inputs`; ``conv_outputs``: :func:`quantize_conv_outputs` (None: with
    ``residual_inputs``, where the family declares ``int8_conv_outputs``); ``sigmoid_outputs``: SiLU decomposed
    and its sigmoid quantized (:func:`quantize_sigmoid_outputs`). Returns (model, details). The graphs
    are converted reference graphs (eager, float speed); :func:`lowered` or ``torch.compile`` makes them fast,
    and ONNX Runtime runs their export as int8 (:mod:`study.onnx_runtime`)."""
    qmodel = copy.deepcopy(model).cpu().eval()
    conv_outputs = _conv_outputs(qmodel, residual_inputs, conv_outputs)
    name, part = quantizable_part(qmodel)
    graph = quantize_module(part, _batches(qmodel, calibration_images, batch_size), strict, reduce_range,
                            residual_inputs=residual_inputs, conv_outputs=conv_outputs,
                            sigmoid_outputs=sigmoid_outputs)
    qmodel = _with_part(qmodel, name, part, graph).eval()
    paths = head_paths(qmodel) if heads else ()
    for path in paths:
        inputs = module_inputs(qmodel, path, calibration_images)
        _set_module(qmodel, path, _int8_head(qmodel, path, quantize_module(
            module_at(qmodel, path), inputs, strict, reduce_range, residual_inputs=residual_inputs,
            max_batch=MAX_ROWS, conv_outputs=conv_outputs, sigmoid_outputs=sigmoid_outputs)))
    info = {"quant_path": QUANT_PATH, "export": "strict" if strict else "non-strict",
            "calibration_images": len(calibration_images), "reduce_range": reduce_range,
            "residual_inputs": residual_inputs} | _scope_details(conv_outputs, sigmoid_outputs)
    return qmodel.eval(), info | _parts(family_of(model), name, paths)


def _scope_details(conv_outputs: bool, sigmoid_outputs: bool) -> dict:
    return ({"conv_outputs": True} if conv_outputs else {}) | ({"sigmoid_outputs": True} if sigmoid_outputs else {})


def _conv_outputs(model: torch.nn.Module, residual_inputs: bool, conv_outputs: bool | None) -> bool:
    """Whether convolutions end quantized before unquantized consumers (:func:`quantize_conv_outputs`): as asked,
    or (None) where ``residual_inputs`` is on and the family declares ``int8_conv_outputs`` (YOLO: SiLU)."""
    if conv_outputs is not None:
        return conv_outputs
    return residual_inputs and bool(declaration(model).get("int8_conv_outputs", False))


def prepare_qat(model: torch.nn.Module, example_images: torch.Tensor, reduce_range: bool = False,
                freeze_bn_stats: bool = True, heads: bool = False, residual_inputs: bool = False,
                conv_outputs: bool | None = None, sigmoid_outputs: bool = False) -> tuple[torch.nn.Module, dict]:
    """A copy of ``model`` (on its device) whose quantizable part is a QAT-prepared graph
    (:func:`prepare_qat_module`, exported on ``example_images``, (N, 3, H, W) in 0..1 at the canvas size), and with
    ``heads`` the family's int8 heads too (each exported on its inputs for those images): train it like the float
    model (the rest stays float and trains too), then :func:`convert_qat`. ``conv_outputs``, ``sigmoid_outputs``:
    as in :func:`quantize_int8_pt2e`."""
    device = next(model.parameters()).device
    qmodel = copy.deepcopy(model).cpu().train()
    conv_outputs = _conv_outputs(qmodel, residual_inputs, conv_outputs)
    paths = head_paths(qmodel) if heads else ()
    head_examples = {path: torch.cat(module_inputs(qmodel, path, example_images)) for path in paths}
    name, part = quantizable_part(qmodel)
    example = _batches(qmodel.eval(), example_images, len(example_images))[0]
    graph = prepare_qat_module(part, example, reduce_range=reduce_range, freeze_bn_stats=freeze_bn_stats,
                               residual_inputs=residual_inputs, conv_outputs=conv_outputs,
                               sigmoid_outputs=sigmoid_outputs)
    qmodel = _with_part(qmodel, name, part, graph)
    for path, head_example in head_examples.items():
        _set_module(qmodel, path, _int8_head(qmodel, path, prepare_qat_module(
            module_at(qmodel, path), head_example, reduce_range=reduce_range, freeze_bn_stats=freeze_bn_stats,
            residual_inputs=residual_inputs, max_batch=MAX_ROWS, conv_outputs=conv_outputs,
            sigmoid_outputs=sigmoid_outputs)))
    info = {"quant_path": QUANT_PATH.replace("static", "quantization-aware training"), "export": "non-strict",
            "reduce_range": reduce_range, "freeze_bn_stats": freeze_bn_stats, "residual_inputs": residual_inputs
            } | _scope_details(conv_outputs, sigmoid_outputs)
    return qmodel.to(device).train(), info | _parts(family_of(model), name, paths)


def convert_qat(qmodel: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of a trained :func:`prepare_qat` model with its part and int8 heads converted to int8
    (:func:`convert_qat_module`)."""
    qmodel = copy.deepcopy(qmodel).cpu().eval()
    for path in int8_heads(qmodel):
        module_at(qmodel, path).graph = convert_qat_module(module_at(qmodel, path).graph)
    name, part = quantized_part(qmodel)
    return _with_part(qmodel, name, part, convert_qat_module(part)).eval()


def quantized_part(qmodel: torch.nn.Module) -> tuple[str, torch.fx.GraphModule]:
    """(path, graph) of the PT2E graph in a model made here (:func:`quantize_int8_pt2e`, :func:`prepare_qat`)."""
    if family_of(qmodel) == "yolo":
        return "model.trunk", qmodel.model.trunk
    path = declaration(qmodel)["input"]
    return path, module_at(qmodel, path)


PART_FILE, REST_FILE = "int8_part.pt2", "float_rest.pt"


def head_file(path: str) -> str:
    """The file an int8 head at ``path`` is saved in."""
    return f"int8_{path}.pt2"


def _save_program(graph: torch.nn.Module, example: torch.Tensor, file, max_batch: int) -> None:
    program = torch.export.export(graph, (example,), strict=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=max_batch)},))
    program.example_inputs = None  # not part of the model (they would be saved with it)
    torch.export.save(program, file)


def save_int8(qmodel: torch.nn.Module, folder, example_images: torch.Tensor) -> list:
    """Save a PT2E int8 model in ``folder``: its int8 graph as a ``torch.export`` program (``int8_part.pt2``, any
    batch size), each int8 head's likewise (:func:`head_file`, any number of rows) and the float rest as a state
    dict (``float_rest.pt``). Returns the paths (their sizes are the model's size on disk); :func:`load_int8`
    reads them back."""
    from pathlib import Path
    folder = Path(folder)
    heads = int8_heads(qmodel)
    files = []
    for path in heads:
        files.append(folder / head_file(path))
        _save_program(module_at(qmodel, path).graph, torch.cat(module_inputs(qmodel, path, example_images[:2])),
                      files[-1], MAX_ROWS)
    name, graph = quantized_part(qmodel)
    _save_program(graph, _batches(qmodel, example_images[:2], 2)[0], folder / PART_FILE, MAX_BATCH)
    parts = _state_prefixes(qmodel, [name, *heads])
    rest = {k: v for k, v in qmodel.state_dict().items() if not any(k.startswith(p + ".") for p in parts)}
    torch.save(rest, folder / REST_FILE)
    return [folder / PART_FILE, *files, folder / REST_FILE]


def _state_prefixes(model: torch.nn.Module, paths: list[str]) -> list[str]:
    """Every name under which the modules at ``paths`` appear in ``model``'s state dict (a path through a
    property, YOLO's ``detect``, is not one of them)."""
    targets = [module_at(model, p) for p in paths]
    return [n for n, m in model.named_modules(remove_duplicate=False) if any(m is t for t in targets)]


def load_int8(float_model: torch.nn.Module, folder) -> torch.nn.Module:
    """The int8 model saved by :func:`save_int8` in ``folder``, over ``float_model`` (the same architecture, any
    weights: its float parts are loaded from the folder)."""
    from pathlib import Path
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    folder = Path(folder)

    def program(file):
        graph = allow_exported_model_train_eval(torch.export.load(file).module())
        # the saved program has no example inputs, hence no guard function; its shape check in Python instead
        # would stop the ONNX exporter's tracing (it reads symbolic sizes), and the detector feeds it the canvas
        # (a head: rows of its fixed width) anyway
        graph.validate_inputs = False
        return graph

    qmodel = copy.deepcopy(float_model).cpu().eval()
    name, part = quantizable_part(qmodel)
    qmodel = _with_part(qmodel, name, part, program(folder / PART_FILE))
    heads = [p for p in head_paths(qmodel) if (folder / head_file(p)).is_file()]  # none in a backbone-only model
    for path in heads:
        _set_module(qmodel, path, _int8_head(qmodel, path, program(folder / head_file(path))))
    missing, unexpected = qmodel.load_state_dict(torch.load(folder / REST_FILE, map_location="cpu"), strict=False)
    parts = _state_prefixes(qmodel, [quantized_part(qmodel)[0], *heads])
    if unexpected or any(not any(k.startswith(p + ".") for p in parts) for k in missing):
        raise ValueError(f"{folder / REST_FILE}: does not fit the model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    return qmodel.eval()
