"""Post-training static int8 quantization of a detector's backbone (and FPN or YOLO neck), and a half-precision
weights baseline.

Path: ``torch.ao`` FX graph mode with the x86 engine (``prepare_fx`` / calibrate / ``convert_fx``). It is
deprecated in torch 2.14 but works, and the study's ``int8`` rows use it. The maintained path, torchao's PT2E
``X86InductorQuantizer``, is :mod:`methods.quantize_pt2e` (a non-strict export of a torchvision ResNet needs its
``split_repeated_calls`` pass; docs/quantization-notes.md), not yet wired into the study's rows. What is
quantized: the backbone body and the FPN (BatchNorm folded into the convolutions); if the FPN does not trace, the
body alone. What stays float, and why: the RPN and RoI heads (they run on variable-size proposal lists through
torchvision ops). YOLO (ultralytics): every layer before the Detect head (backbone and neck), traced as one
module (:class:`detectors.yolo.YOLOTrunk`, after :func:`detectors.yolo.split_c2f`, since C2f's ``chunk`` does not trace); the Detect
head stays float (its anchor decoding is shape-dependent code). SiLU has no int8 kernel in this path, so each
activation is dequantized, applied in float and requantized. Quantized models run on the CPU.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch.ao.quantization import HistogramObserver, QConfig, QConfigMapping, \
    default_per_channel_weight_observer, default_weight_observer
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from detectors import family_of

QUANT_PATH = "torch.ao FX graph mode, x86 engine"


def _qconfig_mapping(per_channel: bool, reduce_range: bool) -> QConfigMapping:
    """Histogram-calibrated activations, min-max weights (per channel or per tensor). ``reduce_range`` keeps
    activations to 7 bits, which x86 CPUs without VNNI need against accumulator overflow; with VNNI (most x86 server
    CPUs since 2019) the full 8 bits are safe and much closer to float (cosine 0.997 against 0.989 on a trained
    YOLOv8n's P4/P5 here)."""
    activation = HistogramObserver.with_args(reduce_range=reduce_range)
    weight = default_per_channel_weight_observer if per_channel else default_weight_observer
    return QConfigMapping().set_global(QConfig(activation=activation, weight=weight))


def _quantize(module: torch.nn.Module, batches: list[torch.Tensor], per_channel: bool,
              reduce_range: bool = False) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the FX path's deprecation notice
        prepared = prepare_fx(module, _qconfig_mapping(per_channel, reduce_range), example_inputs=(batches[0],))
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        return convert_fx(prepared)


def quantize_backbone_int8(model: torch.nn.Module, calibration_images: torch.Tensor, per_channel: bool = True,
                           batch_size: int = 8, reduce_range: bool = False) -> tuple[torch.nn.Module, dict]:
    """A CPU copy of ``model`` whose backbone is int8, calibrated on ``calibration_images`` ((N, 3, H, W) in 0..1)."""
    torch.backends.quantized.engine = "x86"
    qmodel = copy.deepcopy(model).cpu().eval()
    batches = [qmodel.transform(list(calibration_images[i:i + batch_size].float()))[0].tensors
               for i in range(0, len(calibration_images), batch_size)]
    info = {"quant_path": QUANT_PATH, "per_channel": per_channel, "calibration_images": len(calibration_images),
            "reduce_range": reduce_range, "float_parts": "RPN head, RoI heads"}
    try:
        qmodel.backbone = _quantize(qmodel.backbone, batches, per_channel, reduce_range)
        info["int8_parts"] = "backbone body + FPN"
    except Exception as exc:  # FPN not traceable: quantize the body alone
        qmodel.backbone.body = _quantize(qmodel.backbone.body, batches, per_channel, reduce_range)
        info["int8_parts"] = "backbone body"
        info["float_parts"] += f", FPN ({type(exc).__name__})"
    return qmodel, info


class Int8YOLOModel(torch.nn.Module):
    """An int8 trunk followed by the float Detect head; ``model[-1]`` is the head, as in ultralytics' models."""

    def __init__(self, trunk: torch.nn.Module, detect: torch.nn.Module):
        super().__init__()
        self.trunk = trunk
        self.model = torch.nn.ModuleList([detect])

    def forward(self, x):
        return self.model[-1](self.trunk(x))


def quantize_yolo_int8(detector: torch.nn.Module, calibration_images: torch.Tensor, per_channel: bool = True,
                       batch_size: int = 8, reduce_range: bool = False) -> tuple[torch.nn.Module, dict]:
    """A CPU copy of a :class:`detectors.yolo.YOLODetector` whose backbone and neck are int8."""
    from detectors.yolo import YOLODetector, YOLOTrunk, split_c2f

    torch.backends.quantized.engine = "x86"
    source = copy.deepcopy(detector).cpu().eval()
    split_c2f(source.model)
    batches = [calibration_images[i:i + batch_size].float() for i in range(0, len(calibration_images), batch_size)]
    trunk = _quantize(YOLOTrunk(source.model).eval(), batches, per_channel, reduce_range)
    qmodel = YOLODetector(Int8YOLOModel(trunk, source.detect), source.hyp).eval()
    info = {"quant_path": QUANT_PATH, "per_channel": per_channel, "calibration_images": len(calibration_images),
            "reduce_range": reduce_range, "int8_parts": "backbone + neck", "float_parts": "Detect head (SiLU computed in float between int8 convs)"}
    return qmodel, info


def quantize_int8(model: torch.nn.Module, calibration_images: torch.Tensor, per_channel: bool = True,
                  reduce_range: bool = False) -> tuple[torch.nn.Module, dict]:
    """Int8 backbone (+ FPN or neck) of any supported detector."""
    if family_of(model) == "yolo":
        return quantize_yolo_int8(model, calibration_images, per_channel, reduce_range=reduce_range)
    return quantize_backbone_int8(model, calibration_images, per_channel, reduce_range=reduce_range)


def load_int8(float_model: torch.nn.Module, state_dict: dict, example_images: torch.Tensor,
              per_channel: bool = True, reduce_range: bool = False) -> torch.nn.Module:
    """Rebuild an int8 model saved as a state dict: quantize ``float_model`` (any weights, calibrated on
    ``example_images`` only to get the graph) and load the saved weights, scales and zero points into it."""
    qmodel, _ = quantize_int8(float_model, example_images, per_channel, reduce_range)
    qmodel.load_state_dict(state_dict)
    return qmodel


def fp16_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose floating-point weights are stored in half precision (the size baseline).

    On a GPU it runs in half precision; on the CPU use :func:`upcast` for inference.
    """
    return copy.deepcopy(model).half()


def upcast(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of a half-precision model (weights keep their fp16 rounding)."""
    return copy.deepcopy(model).float()
