"""Ultralytics YOLO detectors built from ultralytics' own model YAMLs, behind torchvision's detection interface.

``build_yolo(name, num_classes)`` returns a :class:`YOLODetector` wrapping an ultralytics ``DetectionModel``
(randomly initialised: no weights are loaded or downloaded) so that the study's loop, evaluator, cost meter and
distiller treat it like a torchvision detector:

- ``model(images, targets)`` in train mode returns ultralytics' own loss (``v8DetectionLoss``: box IoU, BCE class,
  DFL, with its gains) as ``{"loss_box", "loss_cls", "loss_dfl"}``. Like ultralytics' trainer, the terms are summed
  over the batch (its criterion multiplies by the batch size), so the same learning rate, weight decay and gradient
  clipping mean what they mean in ultralytics;
- ``model(images)`` in eval mode returns ``[{"boxes" (xyxy canvas pixels), "scores", "labels"}]`` after
  ultralytics' own NMS with its validator's settings (conf 0.001, IoU 0.7, multi-label, 300 per image);
- labels are the study's 1-based labels (0 is background in torchvision); YOLO's classes are ``label - 1``.

Feature taps for distillation: ``p3, p4, p5`` are the neck maps the Detect head reads (strides 8, 16, 32), and
the dense classification logits are the Detect head's ``scores`` (one row per anchor point, sigmoid per class);
its ``boxes`` are the box edges' DFL bin logits. All of it is declared in :data:`FAMILY`, with what pruning needs
(:class:`SplitC2f`: C2f's output split in two convolutions so that torch-pruning can follow it) and what int8
quantization traces (:class:`YOLOTrunk`: the layers before the Detect head, as a plain module).

Ultralytics is kept offline and quiet: ``YOLO_OFFLINE=1`` (no online checks), ``YOLO_VERBOSE=False``, and
``YOLO_CONFIG_DIR`` (its settings file) set by :func:`configure_ultralytics` before ultralytics is first imported.
Nothing here calls ultralytics' trainer, AMP check, downloads or plotting (fonts).
"""
from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

# name -> (model YAML shipped with ultralytics, scale: a letter of its `scales` table or [depth, width, max_channels])
YOLO_MODELS: dict[str, tuple[str, str | list]] = {
    "yolov8n": ("yolov8.yaml", "n"),
    "yolov8s": ("yolov8.yaml", "s"),
    "yolov8m": ("yolov8.yaml", "m"),
    "yolo11n": ("yolo11.yaml", "n"),
    "yolo11s": ("yolo11.yaml", "s"),
    # truly small students: YOLOv8n's depth with half, a quarter (and an eighth) of its width
    "yolov8t": ("yolov8.yaml", [0.33, 0.125, 1024]),
    "yolov8p": ("yolov8.yaml", [0.33, 0.0625, 1024]),
    "yolov8f": ("yolov8.yaml", [0.33, 0.03125, 1024]),  # the smallest of a size grid: a 32nd of its width
}
# ultralytics' default loss gains and its validator's NMS settings
YOLO_DEFAULTS = {"box": 7.5, "cls": 0.5, "dfl": 1.5, "conf": 0.001, "iou": 0.7, "max_det": 300}


def configure_ultralytics(config_dir: Path | str | None = None) -> None:
    """Offline, quiet, and its settings file in ``config_dir`` (default: a folder in the temp dir).

    Takes effect before ultralytics is first imported and where ``YOLO_CONFIG_DIR`` is not set already; later calls
    only keep it offline.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    if "ultralytics" not in sys.modules and "YOLO_CONFIG_DIR" not in os.environ:
        target = Path(config_dir) if config_dir else Path(tempfile.gettempdir()) / f"ultralytics-{os.getuid()}"
        target.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(target)


def _ultralytics():
    configure_ultralytics()
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load
    from ultralytics.utils.loss import v8DetectionLoss
    from ultralytics.utils.nms import non_max_suppression
    return DetectionModel, yaml_model_load, v8DetectionLoss, non_max_suppression


def yolo_model_dict(name: str) -> dict:
    """The ultralytics model dict (from its YAML) for one of :data:`YOLO_MODELS`, scale applied."""
    if name not in YOLO_MODELS:
        raise ValueError(f"unknown YOLO model '{name}' (known: {', '.join(YOLO_MODELS)})")
    _, yaml_model_load, _, _ = _ultralytics()
    yaml_name, scale = YOLO_MODELS[name]
    cfg = yaml_model_load(yaml_name)
    if isinstance(scale, list):
        cfg["scales"], cfg["scale"] = {"custom": scale}, "custom"
    else:
        cfg["scale"] = scale
    return cfg


def targets_to_yolo(targets: list[dict], height: int, width: int, device) -> dict:
    """Torchvision targets (xyxy canvas pixels, 1-based labels) -> ultralytics' batch dict (normalised cxcywh)."""
    idx, cls, boxes = [], [], []
    for i, t in enumerate(targets):
        b = t["boxes"].float()
        idx.append(torch.full((len(b),), float(i), device=b.device))
        cls.append(t["labels"].float() - 1)
        cxcywh = torch.stack(((b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height,
                              (b[:, 2] - b[:, 0]) / width, (b[:, 3] - b[:, 1]) / height), 1)
        boxes.append(cxcywh)
    return {"batch_idx": torch.cat(idx).to(device), "cls": torch.cat(cls).to(device),
            "bboxes": torch.cat(boxes).to(device)}


class YOLODetector(nn.Module):
    """An ultralytics ``DetectionModel`` with torchvision's detection interface (see the module docstring)."""

    detector_family = "yolo"

    losses_summed_over_batch = True  # ultralytics' criterion returns loss x batch size; distillation terms follow

    def __init__(self, model: nn.Module, hyp: dict):
        super().__init__()
        self.model = model
        self.hyp = dict(hyp)
        self.model.args = SimpleNamespace(box=hyp["box"], cls=hyp["cls"], dfl=hyp["dfl"])
        self._criterion = None  # built lazily on the model's device; not a submodule (nothing to save)

    @property
    def detect(self) -> nn.Module:
        return self.model.model[-1]

    def criterion(self):
        device = next(self.model.parameters()).device
        if self._criterion is None or self._criterion.device != device:
            self._criterion = _ultralytics()[2](self.model)
        return self._criterion

    def __getstate__(self):  # torch.save(model) of a pruned detector: the criterion is rebuilt on use
        state = self.__dict__.copy()
        state["_criterion"] = None
        return state

    def forward(self, images, targets: list[dict] | None = None):
        x = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            preds = self.model(x)
            batch = targets_to_yolo(targets, x.shape[-2], x.shape[-1], x.device)
            loss, _ = self.criterion().loss(preds, batch)
            return {"loss_box": loss[0], "loss_cls": loss[1], "loss_dfl": loss[2]}
        inference, _ = self.model(x)
        return self.postprocess(inference)

    def postprocess(self, inference: torch.Tensor) -> list[dict]:
        nms = _ultralytics()[3]
        kept = nms(inference.float(), self.hyp["conf"], self.hyp["iou"], multi_label=True,
                   max_det=self.hyp["max_det"], nc=self.detect.nc, max_time_img=3600.0)
        return [{"boxes": k[:, :4], "scores": k[:, 4], "labels": k[:, 5].long() + 1} for k in kept]


def build_yolo(name: str, num_classes: int, **hyp) -> YOLODetector:
    """A randomly initialised ultralytics YOLO ``name`` (see :data:`YOLO_MODELS`) for ``num_classes`` classes."""
    DetectionModel = _ultralytics()[0]
    model = DetectionModel(yolo_model_dict(name), nc=num_classes, verbose=False)
    return YOLODetector(model, YOLO_DEFAULTS | hyp)


# ---------------------------------------------------------------- what pruning and quantization need
class SplitC2f(nn.Module):
    """C2f with ``cv1`` cut into two convolutions ``cv1a``/``cv1b`` (its output halves): the same function."""

    def __init__(self, block: nn.Module):
        super().__init__()
        half = block.cv1.conv.out_channels // 2
        self.cv1a, self.cv1b = copy.deepcopy(block.cv1), copy.deepcopy(block.cv1)
        for conv, part in ((self.cv1a, slice(0, half)), (self.cv1b, slice(half, 2 * half))):
            conv.conv.weight = nn.Parameter(block.cv1.conv.weight.data[part].clone())
            conv.conv.out_channels = half
            bn = conv.bn
            bn.num_features = half
            bn.weight = nn.Parameter(block.cv1.bn.weight.data[part].clone())
            bn.bias = nn.Parameter(block.cv1.bn.bias.data[part].clone())
            bn.running_mean = block.cv1.bn.running_mean[part].clone()
            bn.running_var = block.cv1.bn.running_var[part].clone()
        self.cv2, self.m = block.cv2, block.m
        for attr in ("f", "i", "type", "np"):  # ultralytics' routing attributes
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1a(x), self.cv1b(x)]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


def split_c2f(detection_model: nn.Module) -> int:
    """Replace every C2f-family block of an ultralytics model by :class:`SplitC2f`; returns how many."""
    from ultralytics.nn.modules.block import C2f

    layers = detection_model.model
    count = 0
    for i, layer in enumerate(layers):
        if isinstance(layer, C2f) and type(layer).forward is C2f.forward:
            layers[i] = SplitC2f(layer)
            count += 1
    return count


class YOLOTrunk(nn.Module):
    """The layers of an ultralytics model before its Detect head, routed as ultralytics routes them; returns the
    Detect head's inputs (P3-P5). A plain module that torch.export can export (int8: methods.quantize_pt2e)."""

    def __init__(self, detection_model: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(list(detection_model.model)[:-1])
        self.sources = [m.f for m in self.layers]
        self.outputs = list(detection_model.model[-1].f)

    def forward(self, x):
        y = []
        for layer, source in zip(self.layers, self.sources):
            if source != -1:
                x = y[source] if isinstance(source, int) else [x if j == -1 else y[j] for j in source]
            x = layer(x)
            y.append(x)
        return [y[j] for j in self.outputs]


def prune_setup(model: "YOLODetector", image: torch.Tensor):
    """(module to trace, example input, layers to keep, output transform) for torch-pruning: the backbone and neck
    with C2f split (:func:`split_c2f`); the Detect head keeps its widths (its first convolutions lose inputs only)."""
    from ultralytics.nn.modules.block import C2PSA

    split_c2f(model.model)
    ignored = [model.detect] + [m for m in model.model.modules() if isinstance(m, C2PSA)]
    for conv_list in (model.detect.cv2, model.detect.cv3):
        for branch in conv_list:
            ignored += list(branch)[1:]
    return model.model, image[None], ignored, (lambda out: out[0] if isinstance(out, tuple) else out)


# ---------------------------------------------------------------- what the family exposes (see detectors/__init__)
def point_anchors(offset: float):
    from detectors.fcos import point_anchors as anchors  # one definition for both anchor-free families
    return anchors(offset)


def yolo_tap_channels(model: "YOLODetector") -> dict[str, int]:
    """Channels of p3-p5: the inputs of the Detect head's box branches (after pruning too)."""
    return {f"p{i + 3}": getattr(branch, "in_channels", None) or branch[0].conv.in_channels  # (an int8 branch)
            for i, branch in enumerate(model.detect.cv2)}


def yolo_features(model: "YOLODetector", x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A frozen teacher's p3-p5, dense class logits and DFL box bins (one row per anchor point), one pass."""
    _, preds = model.model(x)
    return dict(zip(("p3", "p4", "p5"), preds["feats"])) | {"dense_logits": preds["scores"].transpose(1, 2),
                                                            "dense_boxes": preds["boxes"].transpose(1, 2)}


def _head_output(output) -> dict:
    return output if isinstance(output, dict) else output[1]  # train mode: the dict; eval: (inference, dict)


FAMILY = {
    "name": "yolo",
    "input": "model",  # the DetectionModel's input is the image batch (no normalisation)
    "taps": {f"p{i + 3}": {"module": "detect", "input": i, "stride": 2 ** (i + 3)} for i in range(3)},
    # int8 beside the trunk (methods.quantize_pt2e): the Detect head's box (cv2) and class (cv3) branches of the
    # three levels, each called on one level's maps, one row per image; the box decoding after them stays float
    "int8_heads": tuple(f"detect.{branch}.{level}" for branch in ("cv2", "cv3") for level in range(3)),
    "int8_head_rows": "images",
    # convolutions end quantized before SiLU (no int8 pattern for it), so that ONNX Runtime runs them as int8
    "int8_conv_outputs": True,
    "dense_logits": {"module": "detect", "pick": lambda output: _head_output(output)["scores"].transpose(1, 2)},
    "dense_boxes": {"module": "detect", "pick": lambda output: _head_output(output)["boxes"].transpose(1, 2)},
    "tap_channels": yolo_tap_channels,
    "teacher": yolo_features,
    "anchors": point_anchors(0.5),  # ultralytics puts its anchor points at (x + 0.5)·stride
    "prune_setup": prune_setup,
    "after_prune": lambda model, example: None,  # tap channels are read from the Detect head's convolutions
    "pruned_parts": "backbone + neck (Detect head's outputs kept)",
    "pruned_taps": ("p3", "p4", "p5"),
}
