"""torchao's PT2E pattern graphs, exported once per process instead of at every call.

torchao rewrites a quantized graph by matching small pattern graphs, and it builds each one by a strict
``torch.export`` of a pattern function (``torchao.quantization.pt2e.utils._get_aten_graph_module_for_pattern``),
about 1-2.5 s a pattern on a CPU, at every call: ``convert_pt2e`` of a QAT graph exports 96 (the conv-BatchNorm
fold: 4 convolution kinds x 12 variants x a pattern and its replacement), ``move_exported_model_to_eval`` and
``lower_pt2e_quantized_to_x86`` a dozen more, whatever the model's size. :func:`reused_patterns` keeps each
exported pattern for the life of the process (keyed by the pattern function's code and closure, the shapes of
its inputs and the grad and autocast modes) and hands out a copy; and the fold skips a convolution kind whose operator the graph does not hold
(none of its patterns can match there). Both leave torchao's result as it is: the tests check that a model
prepared, converted and lowered inside it gives the same graph and the same outputs as without
(docs/decisions.md, "torchao's pattern exports").
"""
from __future__ import annotations

import contextlib
import copy
import types

import torch
import torch.nn.functional as F

_MODULE_STATE = set(vars(torch.nn.Module()))  # what every module holds
_EXPORTED: dict = {}  # pattern key -> exported pattern GraphModule (handed out as copies)
ACTIVE = True  # False: torchao as it is (scripts/pt2e_patterns_check.py compares the two)

# the operator each convolution kind of the fold's patterns exports to
_CONV_OPS = {F.conv1d: torch.ops.aten.conv1d, F.conv2d: torch.ops.aten.conv2d,
             F.conv_transpose1d: torch.ops.aten.conv_transpose1d,
             F.conv_transpose2d: torch.ops.aten.conv_transpose2d}
# operators that may stand for any convolution kind: a graph holding one is never skipped
_ANY_CONV = (torch.ops.aten.convolution, torch.ops.aten._convolution)


def _value_key(value):
    """A hashable stand-in for a pattern or one of its inputs or closure values: a tensor by its shape, dtype and
    device (export traces tensors as inputs), a function by its code, defaults and closure, a module that only
    wraps a function (torchao's ``WrapperModule``) by that function, anything else as itself. Raises TypeError for
    a value with no such stand-in."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_value_key(v) for v in value))
    if isinstance(value, types.FunctionType):
        return ("function", value.__module__, value.__code__, _value_key(value.__defaults__ or ()),
                tuple(_value_key(cell.cell_contents) for cell in (value.__closure__ or ())))
    if isinstance(value, torch.nn.Module):
        if type(value).__name__ != "WrapperModule" or list(value.children()) or list(value.parameters()) \
                or list(value.buffers()) or set(vars(value)) - _MODULE_STATE - {"fn"}:
            raise TypeError("not a wrapped function")
        return ("wrapped", _value_key(value.fn))
    hash(value)
    return value


def pattern_key(pattern, example_inputs: tuple, is_cuda: bool, kwargs: dict):
    """What an exported pattern depends on: the pattern (:func:`_value_key`), the inputs' shapes and types, the
    device kind and the keyword inputs, and the grad and autocast modes it is exported under. None when one of
    them has no hashable stand-in."""
    modes = (torch.is_grad_enabled(),
             *((torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda")))
    try:
        return (_value_key(pattern), _value_key(tuple(example_inputs)), is_cuda,
                tuple(sorted((name, _value_key(v)) for name, v in kwargs.items())), modes)
    except (TypeError, ValueError):
        return None


def reusing(export_pattern, store: dict):
    """``export_pattern`` (torchao's signature) that keeps each result in ``store`` under :func:`pattern_key` and
    returns a copy of it (a pattern without a key is exported every time)."""
    def reused(pattern, example_inputs, is_cuda=False, **kwargs):
        key = pattern_key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return export_pattern(pattern, example_inputs, is_cuda, **kwargs)
        if key not in store:
            store[key] = export_pattern(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(store[key])  # the rewriter may edit what it is given
    reused.reuses = True
    return reused


def holds_conv_kind(gm: torch.fx.GraphModule, conv_fn) -> bool:
    """Whether ``gm``'s graph may hold a convolution of ``conv_fn``'s kind (always, for a kind not in the table or
    a graph with a generic convolution operator)."""
    packet = _CONV_OPS.get(conv_fn)
    if packet is None:
        return True
    targets = {getattr(node.target, "overloadpacket", None) for node in gm.graph.nodes if node.op == "call_function"}
    return packet in targets or any(op in targets for op in _ANY_CONV)


def _skipping_absent_kinds(fold_helper):
    def fold(m, conv_fn, example_inputs, is_cuda):
        if not holds_conv_kind(m, conv_fn):
            return m
        return fold_helper(m, conv_fn, example_inputs, is_cuda)
    return fold


def replaceable(utils, qat_utils) -> bool:
    """Whether torchao's modules have the private functions this module replaces (torchao 0.18 has)."""
    return all(callable(getattr(module, name, None)) for module, name in (
        (utils, "_get_aten_graph_module_for_pattern"), (qat_utils, "_get_aten_graph_module_for_pattern"),
        (qat_utils, "_fold_conv_bn_qat_helper")))


@contextlib.contextmanager
def reused_patterns():
    """Inside: torchao's pattern graphs come from this process's store after their first export, and the
    conv-BatchNorm fold skips the convolution kinds a graph does not hold. Restores torchao's functions on exit;
    a use inside another changes nothing, and with a torchao that lacks them nothing is replaced."""
    from torchao.quantization.pt2e import qat_utils, utils

    if not ACTIVE or not replaceable(utils, qat_utils) \
            or getattr(utils._get_aten_graph_module_for_pattern, "reuses", False):  # another torchao, or nested
        yield
        return
    saved = (utils._get_aten_graph_module_for_pattern, qat_utils._get_aten_graph_module_for_pattern,
             qat_utils._fold_conv_bn_qat_helper)
    reused = reusing(saved[0], _EXPORTED)
    utils._get_aten_graph_module_for_pattern = reused  # export_utils imports it from here at each call
    qat_utils._get_aten_graph_module_for_pattern = reused  # qat_utils holds its own name for it
    qat_utils._fold_conv_bn_qat_helper = _skipping_absent_kinds(saved[2])
    try:
        yield
    finally:
        (utils._get_aten_graph_module_for_pattern, qat_utils._get_aten_graph_module_for_pattern,
         qat_utils._fold_conv_bn_qat_helper) = saved
