"""What a deployed detector costs: parameters, FLOPs, size on disk and measured latency.

- FLOPs: one eval forward pass of one canvas image, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matrix products; RoIAlign and NMS are not counted). It counts a multiply-add as 2 FLOPs, so
  GFLOPs = 2 x GMACs. The RoI head's share depends on how many proposals reach it: the count used is returned.
- Size: bytes of ``torch.save(state_dict)`` on disk, in MB (10^6 bytes).
- Latency: milliseconds per image, batch 1, with a fixed CPU thread count. A study times all its models together in
  interleaved rounds (:func:`interleaved_latency`): each round visits every model in a fresh random order and runs
  each of several test images once, so drift of the machine (clock, cache, other load) is spread over all models
  instead of landing on whichever was timed first; a model's latency is the median of its timings, its spread the
  interquartile range. CUDA latency (synchronised) where a GPU exists.
"""
from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from methods.measure import count_gflops, count_params  # noqa: F401 - part of this module's interface


def size_mb(model: torch.nn.Module, path: Path | None = None) -> float:
    if path is None:
        with tempfile.TemporaryDirectory() as tmp:
            return size_mb(model, Path(tmp) / "weights.pt")
    torch.save(model.state_dict(), path)
    return path.stat().st_size / 1e6


@torch.inference_mode()
def latency_ms(model: torch.nn.Module, image: torch.Tensor, device: torch.device, warmup: int = 3, runs: int = 20,
               threads: int | None = None) -> float:
    """Median ms per forward of one image on ``device``."""
    model.eval().to(device)
    image = image.to(device)
    previous = torch.get_num_threads()
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        times = []
        for i in range(warmup + runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model([image])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


def measure(model: torch.nn.Module, image: torch.Tensor, weights_path: Path | None = None,
            flops_model: torch.nn.Module | None = None) -> dict:
    """Parameters, FLOPs and size of ``model`` (moved to the CPU); latency is timed later, with every model of the
    study together (:func:`interleaved_latency`), when nothing else runs.

    ``flops_model`` counts FLOPs in place of ``model`` (an int8 model's quantized kernels are not counted by the
    FLOP counter, so its float original is counted: the same multiply-adds, in int8).
    """
    model = model.to("cpu").eval()
    gflops, proposals = count_gflops(flops_model.to("cpu") if flops_model is not None else model, image)
    return {"params": count_params(model), "gflops": gflops, "proposals_counted": proposals,
            "size_mb": size_mb(model, weights_path), "cpu_ms": None, "gpu_ms": None}


@torch.inference_mode()
def interleaved_latency(models: dict, images: list[torch.Tensor], cfg: dict, seed: int = 0) -> dict:
    """CPU latency of every model in ``models`` (key -> model) with ``cfg["threads"]`` threads: ``cfg["warmup"]``
    untimed passes per model, then ``cfg["rounds"]`` rounds, each visiting the models in a random order (from
    ``seed``) and timing one forward of each of ``images``. Returns key -> {"cpu_ms": median, "cpu_ms_iqr":
    75th - 25th percentile} over the model's rounds x images timings."""
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg["threads"])
    times: dict = {key: [] for key in models}
    try:
        for model in models.values():
            model.eval().to("cpu")
            for _ in range(cfg["warmup"]):
                model([images[0]])
        order = list(models)
        rng = random.Random(seed)
        for _ in range(cfg["rounds"]):
            rng.shuffle(order)
            for key in order:
                for image in images:
                    start = time.perf_counter()
                    models[key]([image])
                    times[key].append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
    out = {}
    for key, values in times.items():
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        out[key] = {"cpu_ms": statistics.median(values), "cpu_ms_iqr": q3 - q1}
    return out
