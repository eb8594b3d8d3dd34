"""PT2E (torchao) int8 of tiny detectors: non-strict export of modules called twice, close outputs, the lowered
graph, full detectors still detecting; QAT with distillation, conversion, saving and loading."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from detectors.faster_rcnn import build_faster_rcnn
from methods.quantize_pt2e import lower_x86, quantize_int8_pt2e, quantize_module, split_repeated_calls
from helpers import SMALL, one_thread


@pytest.fixture(autouse=True)
def torch_on_one_thread():
    with one_thread():
        yield


def tiny(backbone="resnet18"):
    torch.manual_seed(0)
    return build_faster_rcnn(backbone, 3, fpn_channels=16, roi_dim=32, **SMALL).eval()


def images(n=8, h=64, w=96):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(5))


def test_non_strict_export_of_a_block_calling_relu_twice_quantizes():
    """torchvision's BasicBlock calls ``self.relu`` twice: the repeated call gets its own partition."""
    from torchvision.models.resnet import BasicBlock
    block = BasicBlock(8, 8).eval()
    x = torch.rand(2, 8, 16, 16)
    gm = torch.export.export(block, (x,), strict=False).module()
    assert split_repeated_calls(gm) >= 1
    q = quantize_module(block, [x, torch.rand(2, 8, 16, 16)], strict=False)
    with torch.no_grad():
        assert F.cosine_similarity(block(x).flatten(), q(x).flatten(), dim=0) >= 0.99


def test_faster_rcnn_backbone_int8_is_close_runs_any_batch_and_lowers():
    model = tiny()
    calibration = images()
    qmodel, info = quantize_int8_pt2e(model, calibration)
    assert info["int8_parts"].startswith("backbone") and info["export"] == "non-strict"
    assert qmodel.backbone.out_channels == model.backbone.out_channels
    x = model.transform(list(calibration))[0].tensors
    with torch.no_grad():
        qmodel.eval()  # what the study calls before evaluating
        ref, out = model.backbone(x), qmodel.backbone(x)  # batch 8; calibrated in batches of 8
        assert list(out) == list(ref)
        for k in ref:
            assert F.cosine_similarity(ref[k].flatten(), out[k].flatten(), dim=0) >= 0.99, k
        assert len(qmodel(list(calibration[:3]))) == 3  # another batch size, through the float heads
        lowered = lower_x86(qmodel.backbone, x[:1])
        fast = lowered(x[:1])
    for k in ref:
        assert F.cosine_similarity(out[k][:1].flatten(), fast[k].flatten(), dim=0) >= 0.999, k
    assert any("onednn" in str(n.target) for n in lowered.graph.nodes)  # fused into oneDNN int8 kernels


def _adds_reading_a_dequantized_input(graph):
    """For every add of a converted graph, how many of its inputs come straight from a dequantize node."""
    return [sum(getattr(arg, "target", None) is not None and "dequantize" in str(arg.target) for arg in n.args[:2])
            for n in graph.graph.nodes if n.target in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)]


def test_decompose_silu_replaces_each_silu_by_its_definition():
    """``decompose_silu`` turns every SiLU of an exported graph into ``x * sigmoid(x)``: as many sigmoids and
    products as there were SiLUs, none left, and the same outputs."""
    from methods.quantize_pt2e import SILU, decompose_silu, export_module
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.SiLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.SiLU(),
                              torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.rand(2, 3, 16, 16)
    gm = export_module(net, x)
    targets = lambda: [n.target for n in gm.graph.nodes if n.op == "call_function"]  # noqa: E731
    assert sum(t in SILU for t in targets()) == 2
    assert decompose_silu(gm) == 2
    assert not any(t in SILU for t in targets())
    assert targets().count(torch.ops.aten.sigmoid.default) == 2 and targets().count(torch.ops.aten.mul.Tensor) == 2
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-6)


def test_residual_inputs_quantizes_the_convolution_that_feeds_an_add():
    """``X86InductorQuantizer`` leaves a convolution feeding a residual add unquantized at its output (oneDNN fuses
    the add); ``residual_inputs`` quantizes it, so that both inputs of every add are dequantized int8 (what ONNX
    Runtime needs for QLinearConv and QLinearAdd), and the block computes about the same."""
    from torchvision.models.resnet import BasicBlock
    torch.manual_seed(0)
    block = BasicBlock(8, 8).eval()
    batches = [torch.rand(2, 8, 16, 16) for _ in range(3)]
    plain = quantize_module(block, batches)
    full = quantize_module(block, batches, residual_inputs=True)
    assert _adds_reading_a_dequantized_input(plain) == [1]  # the identity input only
    assert _adds_reading_a_dequantized_input(full) == [2]
    with torch.no_grad():
        ref, out = block(batches[0]), full(batches[0])
    assert F.cosine_similarity(ref.flatten(), out.flatten(), dim=0) >= 0.99


def test_faster_rcnn_box_head_int8_is_close_takes_any_number_of_rois_and_lowers():
    """With ``heads``, the RoI box head is an int8 graph calibrated on its inputs: close to the float head on RoIs
    of other images, it runs on 0, 1 or many rows, and its lowered form takes any number of rows."""
    from methods.quantize_pt2e import Int8Head, module_inputs
    model = tiny("shallow")
    calibration = images()
    with_batch_statistics(model, calibration)
    qmodel, info = quantize_int8_pt2e(model, calibration[:6], heads=True)
    assert isinstance(qmodel.roi_heads.box_head, Int8Head) and "roi_heads.box_head" in info["int8_parts"]
    rois = torch.cat(module_inputs(model, "roi_heads.box_head", calibration[6:]))  # images not calibrated on
    head = qmodel.roi_heads.box_head
    with torch.no_grad():
        ref, out = model.roi_heads.box_head(rois), head(rois)
        assert F.cosine_similarity(ref.flatten(), out.flatten(), dim=0) >= 0.99
        assert head(rois[:0]).shape == (0, ref.shape[1])
        assert torch.allclose(head(rois[:1]), out[:1])  # padded to the graph's least batch, cut back
        fast = lower_x86(head.graph, rois[:5], dynamic_batch=True)
        for n in (len(rois), 3):
            assert torch.allclose(fast(rois[:n]), out[:n], atol=0.05 * out.abs().max().item())
        many = rois.repeat(1500 // len(rois) + 1, 1, 1, 1)  # an evaluation batch of images x 200 proposals
        assert len(many) > 1024 and head(many).shape[0] == fast(many).shape[0] == len(many)
    assert any("onednn" in str(n.target) for n in fast.graph.nodes)


def briefly_trained_yolo():
    """A fresh copy of :func:`_briefly_trained_yolo`'s model (trained once per test session), and its images."""
    model, x = _briefly_trained_yolo()
    return copy.deepcopy(model), x.clone()


@functools.lru_cache(maxsize=1)
def _briefly_trained_yolo():
    """yolov8p after 10 SGD steps on 8 bundled BCCD images at 64 px: an untrained ultralytics model's features
    are noise of shrinking scale."""
    from detectors.yolo import build_yolo
    from study.data import load_dataset
    from study.images import load_images
    data = load_dataset("voc:data/bccd")
    loaded = load_images(data.splits["train"][:8], (64, 64), 64)
    x = loaded.images.float() / 255
    targets = [{"boxes": b, "labels": label} for b, label in zip(loaded.boxes, loaded.labels)]
    torch.manual_seed(0)
    model = build_yolo("yolov8p", 3).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(10):
        loss = sum(model(list(x), targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    return model.eval(), x


def test_yolo_trunk_int8_is_close_and_the_detector_detects():
    from detectors.yolo import YOLOTrunk
    model, x = briefly_trained_yolo()
    qmodel, info = quantize_int8_pt2e(model, x)
    assert info["int8_parts"] == "backbone + neck"
    with torch.no_grad():
        ref, out = YOLOTrunk(model.model).eval()(x), qmodel.model.trunk(x)
        for r, o in zip(ref, out):
            assert F.cosine_similarity(r.flatten(), o.flatten(), dim=0) >= 0.99
        detections = qmodel(list(x[:2]))
    assert len(detections) == 2 and detections[0]["boxes"].shape[1] == 4


def test_yolo_int8_heads_are_the_detect_branches_saved_apart_and_lowered_per_image(tmp_path):
    """With ``heads``, YOLO's six Detect branches (box and class, three levels) are int8 graphs called on one row
    per image (no padding at batch 1), the decoding stays float, the tap widths read the same, the saved float rest
    holds none of the branches' weights, and the loaded and lowered models compute what the converted one does."""
    from detectors.yolo import FAMILY, yolo_tap_channels
    from methods.quantize_pt2e import Int8Head, head_file, load_int8, lowered, save_int8
    model, x = briefly_trained_yolo()
    qmodel, info = quantize_int8_pt2e(model, x, heads=True, residual_inputs=True)
    branches = [*qmodel.detect.cv2, *qmodel.detect.cv3]
    assert len(branches) == 6 and all(isinstance(b, Int8Head) and b.min_rows == 1 for b in branches)
    assert "Detect convolutions" in info["int8_parts"] and info["float_parts"].startswith("Detect box decoding")
    assert yolo_tap_channels(qmodel) == yolo_tap_channels(model) == {"p3": 16, "p4": 32, "p5": 64}
    with torch.no_grad():
        ref, out = model.model(x)[0], qmodel.model(x)[0]
        assert F.cosine_similarity(ref.flatten(), out.flatten(), dim=0) >= 0.99
        files = save_int8(qmodel, tmp_path, x)
        assert {f.name for f in files} >= {head_file(p) for p in FAMILY["int8_heads"]}
        rest = torch.load(tmp_path / "float_rest.pt")
        assert not any(".cv2." in k or ".cv3." in k for k in rest)  # the branches are in their own files only
        loaded = load_int8(build_yolo_like(model), tmp_path)
        assert torch.equal(loaded.model(x)[0], out)
        fast = lowered(loaded, x[0])
        assert torch.allclose(fast.model(x[:1])[0], out[:1], atol=1e-3 * out.abs().max().item())


def build_yolo_like(model):
    """A fresh model of ``model``'s architecture (random weights)."""
    from detectors.yolo import build_yolo
    return build_yolo("yolov8p", model.detect.nc)


@pytest.mark.parametrize("heads", [False, True])
def test_int8_saves_int8_weights_only_and_loads_the_same_model(tmp_path, heads):
    """``convert_pt2e`` keeps the float weights beside the int8 ones; the saved model holds the int8 ones only (with
    ``heads``, the box head's too, in its own file)."""
    from methods.quantize_pt2e import PART_FILE, head_file, load_int8, save_int8
    model = tiny()
    calibration = images()
    qmodel, _ = quantize_int8_pt2e(model, calibration, heads=heads)
    files = save_int8(qmodel, tmp_path, calibration)
    torch.save(model.backbone.state_dict(), tmp_path / "fp32_backbone.pt")
    # ResNet-18 body + FPN: 4 bytes a weight in fp32, 1 in int8, plus the graph's description
    assert (tmp_path / PART_FILE).stat().st_size < 0.3 * (tmp_path / "fp32_backbone.pt").stat().st_size
    loaded = load_int8(tiny(), tmp_path)  # another model of the architecture: every weight comes from the files
    x = model.transform(list(calibration[:2]))[0].tensors
    with torch.no_grad():
        a, b = qmodel.backbone(x), loaded.backbone(x)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert [d["boxes"].tolist() for d in qmodel(list(calibration[:2]))] == \
            [d["boxes"].tolist() for d in loaded(list(calibration[:2]))]
    assert len(files) == 2 + heads and (tmp_path / head_file("roi_heads.box_head")).is_file() == heads
    with torch.no_grad():  # the saved programs take any batch the study feeds them
        loaded.backbone(x.repeat(8, 1, 1, 1))
        loaded.roi_heads.box_head(torch.rand(1500, 16, 7, 7))
    if heads:  # the head's program holds fc6 and fc7 as int8, and no float copy of them
        program = torch.export.load(tmp_path / head_file("roi_heads.box_head"))
        tensors = list(program.state_dict.values()) + list(program.constants.values())
        fc = [m.weight for m in (model.roi_heads.box_head.fc6, model.roi_heads.box_head.fc7)]
        assert sorted(t.shape for t in tensors if t.dtype == torch.int8) == sorted(w.shape for w in fc)
        assert not any(t.is_floating_point() and t.numel() >= fc[1].numel() for t in tensors)


def with_batch_statistics(model, x):
    """Set a random model's BatchNorm running statistics to those of ``x``, as a trained model's are its data's."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average
    model.backbone.train()
    with torch.no_grad():
        model.backbone(model.transform(list(x))[0].tensors)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def _feature_distance(family, float_model, qmodel, x, fake_quantized=False):
    """Cosine of the quantizable part's outputs of the float (or fake-quantized) and the int8 model, the least
    over levels."""
    from methods.quantize_pt2e import quantizable_part, quantized_part
    with torch.no_grad():
        model_input = x
        if family != "yolo":
            model_input = float_model.transform(list(x))[0].tensors
        part = (quantized_part if fake_quantized else quantizable_part)(float_model)[1]
        ref = torch.utils._pytree.tree_leaves(part(model_input))
        out = torch.utils._pytree.tree_leaves(quantized_part(qmodel)[1](model_input))
    return min(F.cosine_similarity(r.flatten(), o.flatten(), dim=0).item() for r, o in zip(ref, out))


def qat_case(family):
    """(float model, its images, the family's feature term) for a QAT test."""
    if family == "yolo":
        model, x = briefly_trained_yolo()
        return model, x, {"cwd": {"weight": 10.0, "tau": 1.0, "taps": ["p3", "p4", "p5"]}}
    model, x = tiny("shallow"), images(4)
    with_batch_statistics(model, x)
    return model, x, {"pkd": {"weight": 6.0, "taps": ["p3", "p4", "p5"]}}


def train_qat_steps(qat, x, teacher=None, feature=None, steps=2, lr=1e-4):
    """``steps`` SGD steps of a QAT model on ``x`` with fixed boxes, distilled from ``teacher`` by Hinton +
    ``feature`` when given; returns the last step's losses."""
    from methods.distill.distiller import Distiller, TeacherCache
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])} for _ in range(len(x))]
    net = qat if teacher is None else Distiller(qat, TeacherCache(teacher), {"hinton": {"weight": 1.0,
                                                                                         "temperature": 4.0}} | feature)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
    try:
        for _ in range(steps):
            qat.train()
            losses = net(list(x), targets)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    finally:
        if teacher is not None:
            net.remove_hooks()
    return losses


@pytest.mark.parametrize("family", ["faster_rcnn", "yolo"])
def test_qat_with_distillation_trains_and_converts_to_what_the_fake_quantized_model_computed(family):
    """``int8-qat+kd`` on a tiny detector, BatchNorm statistics frozen (the default): a training pass calibrates the
    observers, after which the fake-quantized model is close to the float one and evaluation passes do not move
    its scales; it trains with Hinton + the family's feature term from its own float model, the feature term's
    gradients reaching the fake-quantized convolutions, and BatchNorm stays on its running statistics; conversion
    keeps the fake-quantized model's function, and the int8 model detects."""
    from methods.distill.distiller import Distiller, TeacherCache
    from methods.quantize_pt2e import convert_qat, prepare_qat, quantized_part
    model, x, feature = qat_case(family)
    qat, info = prepare_qat(model, x)
    assert info["freeze_bn_stats"] and "quantization-aware" in info["quant_path"]
    graph = quantized_part(qat)[1]
    stats = {k: v.clone() for k, v in graph.state_dict().items() if "running" in k}
    assert stats
    train_qat_steps(qat, x, steps=1, lr=0.0)  # observers calibrate on a training pass; nothing else moves
    assert graph.eval() is graph and not graph.training  # the graph's own eval() and train() work too
    qat.eval()
    assert _feature_distance(family, model.eval(), qat, x) >= 0.99  # fake-quantized: close to float
    scales = {k: v.clone() for k, v in graph.state_dict().items() if k.endswith("scale")}
    _feature_distance(family, model, qat, x)
    assert all(torch.equal(v, graph.state_dict()[k]) for k, v in scales.items())  # eval passes do not calibrate

    name = next(iter(feature))
    distiller = Distiller(qat, TeacherCache(copy.deepcopy(model)), {"hinton": {"weight": 1.0, "temperature": 4.0}}
                          | feature)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])} for _ in range(len(x))]
    weights = [p for p in graph.parameters() if p.requires_grad and p.dim() == 4]
    try:
        qat.train()
        losses = distiller(list(x), targets)
        feature_terms = [v for k, v in losses.items() if k.startswith(f"kd_{name}_")]
        assert "kd_hinton" in losses and len(feature_terms) == 3
        assert all(torch.isfinite(v) for v in losses.values())
        sum(feature_terms).backward()
        assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in weights) >= len(weights) // 2
    finally:
        distiller.remove_hooks()
    losses = train_qat_steps(qat, x, copy.deepcopy(model), feature)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.equal(v, graph.state_dict()[k]) for k, v in stats.items())  # frozen through train steps

    qat.eval()
    qmodel = convert_qat(qat)
    assert not any(p.requires_grad and p.dim() == 4 for p in quantized_part(qmodel)[1].parameters())
    # measured 0.998 (Faster R-CNN, whose gap is there after calibration alone) and 0.9999 (YOLO) after two plain
    # steps; with BatchNorm statistics left to train, YOLO's was 0.968
    assert _feature_distance(family, qat, qmodel, x, fake_quantized=True) >= 0.995
    with torch.no_grad():
        detections = qmodel(list(x[:2]))
    assert len(detections) == 2 and detections[0]["boxes"].shape[1] == 4


def test_qat_with_heads_trains_the_fake_quantized_box_head_and_converts():
    """With ``heads`` and ``residual_inputs``, QAT fake-quantizes the box head too: a training step reaches its
    weights, and the converted model's box head is an int8 graph that detects."""
    from methods.quantize_pt2e import Int8Head, convert_qat, prepare_qat
    model, x, _ = qat_case("faster_rcnn")
    qat, info = prepare_qat(model, x, heads=True, residual_inputs=True)
    assert isinstance(qat.roi_heads.box_head, Int8Head) and info["residual_inputs"]
    head_weights = [p for p in qat.roi_heads.box_head.parameters() if p.requires_grad and p.dim() == 2]
    assert len(head_weights) == 2  # fc6, fc7
    train_qat_steps(qat, x, steps=1, lr=1e-3)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head_weights)
    qmodel = convert_qat(qat)
    assert isinstance(qmodel.roi_heads.box_head, Int8Head)
    assert not any(p.requires_grad and p.dim() == 2 for p in qmodel.roi_heads.box_head.parameters())
    with torch.no_grad():
        detections = qmodel(list(x[:2]))
    assert len(detections) == 2 and detections[0]["boxes"].shape[1] == 4
