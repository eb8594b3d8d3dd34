"""methods.pt2e_patterns: torchao's pattern graphs exported once per process, and the conv-BatchNorm fold skipping
convolution kinds a graph lacks, leave torchao's results as they are."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import methods.pt2e_patterns as patterns
from helpers import one_thread


def fake_export(calls):
    def export(pattern, example_inputs, is_cuda=False, **kwargs):
        calls.append(pattern)
        return torch.fx.symbolic_trace(nn.Identity())
    return export


def dropout_pattern(p):
    def pattern(x):
        return F.dropout(x, p=p, training=True)
    return pattern


def test_a_pattern_is_exported_once_per_closure_input_shape_and_mode_and_handed_out_as_a_copy():
    calls, store = [], {}
    export = patterns.reusing(fake_export(calls), store)
    x = (torch.randn(1, 1, 3, 3),)
    first = export(dropout_pattern(0.5), x)
    output = next(n for n in first.graph.nodes if n.op == "output")
    with first.graph.inserting_before(output):
        first.graph.call_function(torch.relu, (output.args[0],))  # what a rewriter's edit would do
    second = export(dropout_pattern(0.5), x)  # a new function object with the same code and closure
    assert len(calls) == 1 and first is not second
    assert [n.op for n in second.graph.nodes] == ["placeholder", "output"]  # untouched by the edit of the first
    export(dropout_pattern(0.25), x)  # another closure value
    export(dropout_pattern(0.5), (torch.randn(1, 1, 5, 5),))  # another input shape
    export(dropout_pattern(0.5), x, True)  # for CUDA
    export(dropout_pattern(0.5), x, scale=torch.tensor([1.0]))  # another keyword input
    assert len(calls) == 5 and len(store) == 5
    with torch.no_grad():
        export(dropout_pattern(0.5), x)  # exported under another grad mode
    with torch.autocast("cpu", dtype=torch.bfloat16):
        export(dropout_pattern(0.5), x)  # under autocast
    assert len(calls) == 7
    export(dropout_pattern(0.5), x, scale=torch.tensor([2.0]))  # a tensor's value is traced, not specialised
    assert len(calls) == 7


def test_a_pattern_without_a_hashable_key_is_exported_every_time():
    calls, store = [], {}
    export = patterns.reusing(fake_export(calls), store)
    options = {"p": 0.5}

    def pattern(x):
        return F.dropout(x, **options)
    export(pattern, (torch.randn(1),))
    export(pattern, (torch.randn(1),))
    assert len(calls) == 2 and not store
    assert patterns.pattern_key(nn.Conv2d(1, 1, 1), (), False, {}) is None  # a module with weights


def test_the_fold_skips_only_the_convolution_kinds_a_graph_lacks():
    conv2d = torch.export.export(nn.Conv2d(1, 1, 3), (torch.randn(1, 1, 5, 5),)).module()
    assert patterns.holds_conv_kind(conv2d, F.conv2d)
    assert not any(patterns.holds_conv_kind(conv2d, fn) for fn in (F.conv1d, F.conv_transpose1d, F.conv_transpose2d))
    generic = torch.fx.GraphModule(nn.Module(), torch.fx.Graph())
    x = generic.graph.placeholder("x")
    generic.graph.output(generic.graph.call_function(torch.ops.aten.convolution.default,
                                                     (x, x, None, [1], [0], [1], False, [0], 1)))
    assert all(patterns.holds_conv_kind(generic, fn) for fn in (F.conv1d, F.conv2d, F.conv_transpose1d))
    assert patterns.holds_conv_kind(conv2d, torch.matmul)  # a kind it does not know: never skipped


def test_the_pinned_torchao_has_the_functions_it_replaces():
    """Fails when torchao changes them: the store then stays off (torchao runs as it is, slower)."""
    from torchao.quantization.pt2e import qat_utils, utils
    assert patterns.replaceable(utils, qat_utils)


def test_the_store_is_in_place_only_inside_and_a_nested_use_changes_nothing():
    from torchao.quantization.pt2e import qat_utils, utils
    original = (utils._get_aten_graph_module_for_pattern, qat_utils._fold_conv_bn_qat_helper)
    with patterns.reused_patterns():
        outer = (utils._get_aten_graph_module_for_pattern, qat_utils._fold_conv_bn_qat_helper)
        assert outer[0] is qat_utils._get_aten_graph_module_for_pattern and outer != original
        with patterns.reused_patterns():
            assert (utils._get_aten_graph_module_for_pattern, qat_utils._fold_conv_bn_qat_helper) == outer
        assert (utils._get_aten_graph_module_for_pattern, qat_utils._fold_conv_bn_qat_helper) == outer
    assert (utils._get_aten_graph_module_for_pattern, qat_utils._fold_conv_bn_qat_helper) == original
    assert qat_utils._get_aten_graph_module_for_pattern is original[0]


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn_b(self.b(F.relu(self.bn_a(self.a(x))))).relu()


def test_qat_convert_and_lowering_give_torchao_own_graph_and_outputs():
    """The whole QAT path of a conv-BatchNorm network (prepare, a training step, convert, lower) with torchao as it
    is and with the pattern store: the same generated code and the same outputs, bit for bit."""
    from methods.quantize_pt2e import convert_qat_module, lower_x86, prepare_qat_module
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    results = []
    with one_thread():
        for active in (False, True):
            patterns.ACTIVE = active
            try:
                torch.manual_seed(0)
                qat = prepare_qat_module(ConvBN(), x)
                qat(x).pow(2).mean().backward()
                with torch.no_grad():
                    for p in qat.parameters():
                        p -= 0.01 * p.grad
                converted = convert_qat_module(qat)
                lowered = lower_x86(converted, x)
                results.append((qat.code, converted.code, lowered.code, converted(x), lowered(x)))
            finally:
                patterns.ACTIVE = True
    (*plain_code, plain_c, plain_l), (*stored_code, stored_c, stored_l) = results
    assert plain_code == stored_code
    assert torch.equal(plain_c, stored_c) and torch.equal(plain_l, stored_l)
