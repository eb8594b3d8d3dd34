"""The compression pipeline: a finished model pruned (and fine-tuned), quantized to int8 (post-training, or by
quantization-aware training, plain or distilled from the float model), or stored in fp16.

Each method is one function returning what it made (:class:`Compressed`); :func:`execute_compression` evaluates and
measures it the same way for all three. Seeded before anything is drawn (calibration and pruning; fine-tuning
re-seeds in :func:`study.run_kinds.train_run`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from methods.prune import prune_backbone
from methods.quantize import fp16_weights, upcast
from methods.quantize_pt2e import convert_qat, prepare_qat, quantize_int8_pt2e, save_int8
from study.cost import count_params, measure
from study.evaluate import evaluate, evaluate_map
from study.train import seed_everything


@dataclass
class Compressed:
    model: torch.nn.Module  # as evaluated and timed
    details: dict
    weights_path: Path | None  # the file whose size is reported (None: saved by measure)
    device: torch.device | None = None  # where it is evaluated (None: the study's device)
    flops_model: torch.nn.Module | None = None  # counted for FLOPs and parameters in its place (int8)
    results: dict = field(default_factory=dict)  # training results of a fine-tuned model


def prune(study, spec, model: torch.nn.Module, run_dir: Path, image: torch.Tensor) -> Compressed:
    """Structured pruning of the backbone to the FLOPs target, fine-tuned (plainly or distilled from the unpruned
    teacher); ``iterative_steps`` > 1 prunes a share, fine-tunes, and repeats."""
    cfg = spec.hparams["compress"]
    classes = study.data().class_names
    train_set = study.image_set("train")
    batch = train_set.images[:spec.hparams["train"]["batch_size"]].float().div(255)
    targets = [{"boxes": train_set.boxes[i], "labels": train_set.labels[i]} for i in range(len(batch))]
    loss_fn = lambda: sum(model(list(batch), targets).values())  # noqa: E731 - Taylor's gradients
    finetune = dict(spec.hparams["train"], lr=cfg["finetune_lr"])
    steps = cfg.get("iterative_steps", 1)  # prune a share, fine-tune, repeat (one-shot: 1)
    if steps > 1 and cfg.get("flops_reduction") is None:
        raise ValueError("iterative pruning needs a flops_reduction target")
    per_step, train_s, results = [], 0.0, {}
    for k in range(1, steps + 1):
        reduction = cfg.get("flops_reduction")
        if reduction is not None:  # this step's share of the target, relative to the FLOPs left now
            reduction = 1 - (1 - reduction * k / steps) / (1 - reduction * (k - 1) / steps)
        torch.manual_seed(spec.seed + k - 1)  # the random criterion
        step = prune_backbone(model, image, cfg["criterion"], reduction, cfg.get("channel_ratio"), cfg["global"],
                              loss_fn=loss_fn, round_to=cfg.get("round_to"))
        # a design pilot never touches the test split
        key, split = ("val_map_before_finetune", "val") if study.val_only else ("map_before_finetune", "test")
        step[key] = evaluate_map(model.to(study.device), study.image_set(split), classes, study.device)
        epochs = max(1, cfg["finetune_epochs"] // steps + (k <= cfg["finetune_epochs"] % steps))
        model, results["adapter_params"], result = study.train_run(spec, run_dir, model=model, epochs=epochs,
                                                                   train_cfg=finetune)
        per_step.append(step)
        train_s += result["train_s"]
    details = per_step[0] if steps == 1 else {
        "steps": per_step, "gflops_before": per_step[0]["gflops_before"],
        "gflops_after": per_step[-1]["gflops_after"], "params_before": per_step[0]["params_before"],
        "params_after": per_step[-1]["params_after"],
        "map_before_finetune": per_step[0].get("map_before_finetune")}
    results |= {"val_map": result["best_val_map"], "best_epoch": result["best_epoch"], "train_s": train_s}
    torch.save(model, run_dir / "model.pt")  # the pruned architecture with its weights
    return Compressed(model, details, run_dir / "best.pt", results=results)


def _calibration(study, spec) -> torch.Tensor:
    return study.image_set("train").images[:spec.hparams["compress"]["calibration_images"]].float().div(255)


def _int8_made(qmodel: torch.nn.Module, details: dict, run_dir: Path, calibration: torch.Tensor, source,
               results: dict | None = None) -> Compressed:
    """An int8 model saved in ``run_dir`` (:func:`methods.quantize_pt2e.save_int8`), its size the saved files'."""
    files = save_int8(qmodel, run_dir, calibration)
    size = sum(f.stat().st_size for f in files) / 1e6
    return Compressed(qmodel, details, None, device=torch.device("cpu"), flops_model=source,
                      results=(results or {}) | {"size_mb": size})


def _scope(cfg: dict) -> dict:
    """What int8 covers beyond the backbone: the family's int8 heads (``heads``), the inputs of residual adds
    (``residual_inputs``), SiLU's sigmoid (``sigmoid_outputs``); absent in rows made before they existed."""
    return {"heads": cfg.get("heads", False), "residual_inputs": cfg.get("residual_inputs", False),
            "sigmoid_outputs": cfg.get("sigmoid_outputs", False)}


def int8(study, spec, model: torch.nn.Module, run_dir: Path, image: torch.Tensor) -> Compressed:
    """Post-training static int8 (torchao PT2E) of the backbone (+ FPN or neck) and, with ``heads``, the family's
    int8 heads, calibrated on training images; evaluated as the converted graph on the CPU."""
    calibration = _calibration(study, spec)
    cfg = spec.hparams["compress"]
    qmodel, details = quantize_int8_pt2e(model, calibration, reduce_range=cfg.get("reduce_range", False),
                                         **_scope(cfg))
    return _int8_made(qmodel, details, run_dir, calibration, model)


def int8_qat(study, spec, model: torch.nn.Module, run_dir: Path, image: torch.Tensor) -> Compressed:
    """Quantization-aware training (torchao PT2E): the backbone (+ FPN or neck), and with ``heads`` the family's
    int8 heads, fake-quantized (its BatchNorm
    statistics frozen unless ``freeze_bn_stats`` is false), the whole detector fine-tuned ``finetune_epochs`` at
    ``finetune_lr`` (fp32 steps: no bf16 autocast, contiguous layout), distilled
    from its teacher run where the spec has ``distill`` (``int8-qat+kd``: the float model itself), then converted.
    The best validation epoch of the fake-quantized model is the one converted."""
    cfg = spec.hparams["compress"]
    calibration = _calibration(study, spec)
    qat_model, details = prepare_qat(model.to(study.device), calibration[:spec.hparams["train"]["batch_size"]],
                                     reduce_range=cfg.get("reduce_range", False),
                                     freeze_bn_stats=cfg.get("freeze_bn_stats", True), **_scope(cfg))
    finetune = dict(spec.hparams["train"], lr=cfg["finetune_lr"], bf16_on_cpu=False, channels_last=False)
    qat_model, adapter_params, result = study.train_run(spec, run_dir, model=qat_model,
                                                        epochs=cfg["finetune_epochs"], train_cfg=finetune)
    results = {"adapter_params": adapter_params, "val_map": result["best_val_map"],
               "best_epoch": result["best_epoch"], "train_s": result["train_s"]}
    return _int8_made(convert_qat(qat_model), details, run_dir, calibration, model, results)


def fp16(study, spec, model: torch.nn.Module, run_dir: Path, image: torch.Tensor) -> Compressed:
    """Weights stored in half precision (the size baseline); on the CPU they are upcast to run."""
    half = fp16_weights(model)
    torch.save(half.state_dict(), run_dir / "best.pt")
    details = {"stored": "float16 weights", "cpu_inference": "upcast to float32"}
    return Compressed(upcast(half), details, None, results={"size_mb": (run_dir / "best.pt").stat().st_size / 1e6})


METHODS = {"prune": prune, "int8": int8, "int8-qat": int8_qat, "fp16": fp16}


def method_of(name: str) -> str:
    """The :data:`METHODS` key of a compression row: ``prune-50+kd`` and ``prune-iterative`` are prunes,
    ``int8-qat+kd`` is ``int8-qat`` with distillation."""
    base = name.split("+")[0]
    return "prune" if base.startswith("prune") else base


def execute_compression(study, spec) -> dict:
    """Compress the finished source run's model by ``spec``'s method, evaluate and measure what came out."""
    run_dir = study.out_dir / "runs" / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    model = study.load_finished(spec.hparams["source_run"])
    seed_everything(spec.seed)
    test_set = study.image_set("test")
    image = test_set.images[0].float().div(255)
    made = METHODS[method_of(spec.method)](study, spec, model, run_dir, image)
    device = made.device or study.device
    if study.val_only:  # a design pilot: the validation mAP of the model as made (int8: converted), never test
        val_map = evaluate_map(made.model.to(device), study.image_set("val"), study.data().class_names, device)
        details = made.details | ({"best_val_map_in_training": made.results["val_map"]}
                                  if "val_map" in made.results else {})
        study.keep_spec(spec)
        return {k: v for k, v in made.results.items() if k != "size_mb"} | {"val_map": val_map,
                                                                            "details": json.dumps(details)}
    metrics = evaluate(made.model.to(device), test_set, study.data().class_names, device,
                       save_to=study.detections_file(spec))
    costs = measure(made.model, image, made.weights_path, made.flops_model)
    if made.flops_model is not None:  # int8 weights are packed buffers, not parameters: count the float original's
        costs["params"] = count_params(made.flops_model)
    study.keep_spec(spec)
    return costs | metrics | made.results | {"details": json.dumps(made.details)}
