"""Post-training static int8 quantization of a Faster R-CNN backbone, and a half-precision weights baseline.

Path: ``torch.ao`` FX graph mode with the x86 engine (``prepare_fx`` / calibrate / ``convert_fx``). It is
deprecated in torch 2.14 but works; the maintained path, torchao's PT2E ``X86InductorQuantizer``, failed on a
plain exported ResNet-18 here ("Input partition has more than one output node"), so it is not used. What is
quantized: the backbone body and the FPN (BatchNorm folded into the convolutions); if the FPN does not trace, the
body alone. What stays float, and why: the RPN and RoI heads (they run on variable-size proposal lists through
torchvision ops). Quantized models run on the CPU.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch.ao.quantization import QConfig, QConfigMapping, default_per_channel_weight_observer, \
    default_weight_observer, get_default_qconfig
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

QUANT_PATH = "torch.ao FX graph mode, x86 engine"


def _qconfig_mapping(per_channel: bool) -> QConfigMapping:
    activation = get_default_qconfig("x86").activation
    weight = default_per_channel_weight_observer if per_channel else default_weight_observer
    return QConfigMapping().set_global(QConfig(activation=activation, weight=weight))


def _quantize(module: torch.nn.Module, batches: list[torch.Tensor], per_channel: bool) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the FX path's deprecation notice
        prepared = prepare_fx(module, _qconfig_mapping(per_channel), example_inputs=(batches[0],))
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        return convert_fx(prepared)


def quantize_backbone_int8(model: torch.nn.Module, calibration_images: torch.Tensor, per_channel: bool = True,
                           batch_size: int = 8) -> tuple[torch.nn.Module, dict]:
    """A CPU copy of ``model`` whose backbone is int8, calibrated on ``calibration_images`` ((N, 3, H, W) in 0..1)."""
    torch.backends.quantized.engine = "x86"
    qmodel = copy.deepcopy(model).cpu().eval()
    batches = [qmodel.transform(list(calibration_images[i:i + batch_size].float()))[0].tensors
               for i in range(0, len(calibration_images), batch_size)]
    info = {"quant_path": QUANT_PATH, "per_channel": per_channel, "calibration_images": len(calibration_images),
            "float_parts": "RPN head, RoI heads"}
    try:
        qmodel.backbone = _quantize(qmodel.backbone, batches, per_channel)
        info["int8_parts"] = "backbone body + FPN"
    except Exception as exc:  # FPN not traceable: quantize the body alone
        qmodel.backbone.body = _quantize(qmodel.backbone.body, batches, per_channel)
        info["int8_parts"] = "backbone body"
        info["float_parts"] += f", FPN ({type(exc).__name__})"
    return qmodel, info


def load_int8(float_model: torch.nn.Module, state_dict: dict, example_images: torch.Tensor,
              per_channel: bool = True) -> torch.nn.Module:
    """Rebuild an int8 model saved as a state dict: quantize ``float_model`` (any weights, calibrated on
    ``example_images`` only to get the graph) and load the saved weights, scales and zero points into it."""
    qmodel, _ = quantize_backbone_int8(float_model, example_images, per_channel)
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
