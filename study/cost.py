"""What a deployed detector costs: parameters, FLOPs, size on disk and measured latency.

- FLOPs: one eval forward pass of one canvas image, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matrix products; RoIAlign and NMS are not counted). It counts a multiply-add as 2 FLOPs, so
  GFLOPs = 2 x GMACs. The RoI head's share depends on how many proposals reach it: the count used is returned.
- Size: bytes of ``torch.save(state_dict)`` on disk, in MB (10^6 bytes).
- Latency: median milliseconds per image, batch 1, after warm-up, with a fixed CPU thread count; CUDA latency
  (synchronised) where a GPU exists.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gflops(model: torch.nn.Module, image: torch.Tensor) -> tuple[float, int | None]:
    """(GFLOPs of one eval forward of ``image`` (3, H, W float), proposals that reached the RoI head)."""
    model.eval()
    seen: dict[str, int] = {}
    hook = None
    roi_pool = getattr(getattr(model, "roi_heads", None), "box_roi_pool", None)
    if roi_pool is not None:
        hook = roi_pool.register_forward_hook(lambda m, args, out: seen.__setitem__("n", sum(len(p) for p in args[1])))
    counter = FlopCounterMode(display=False)
    with counter:
        model([image])
    if hook is not None:
        hook.remove()
    return counter.get_total_flops() / 1e9, seen.get("n")


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


def measure(model: torch.nn.Module, image: torch.Tensor, cfg: dict, weights_path: Path | None = None,
            flops_model: torch.nn.Module | None = None, cuda: bool = True, latency: bool = True) -> dict:
    """All costs of ``model`` (moved to the CPU for CPU latency; CUDA latency where available and ``cuda``).

    ``flops_model`` counts FLOPs in place of ``model`` (an int8 model's quantized kernels are not counted by the
    FLOP counter, so its float original is counted: the same multiply-adds, in int8). ``latency=False`` leaves
    ``cpu_ms``/``gpu_ms`` empty, for :func:`measure_latency` later (when other runs share the machine now).
    """
    model = model.to("cpu").eval()
    gflops, proposals = count_gflops(flops_model.to("cpu") if flops_model is not None else model, image)
    out = {"params": count_params(model), "gflops": gflops, "proposals_counted": proposals,
           "size_mb": size_mb(model, weights_path), "cpu_ms": None, "gpu_ms": None}
    if latency:
        out |= measure_latency(model, image, cfg, cuda)
    return out


def measure_latency(model: torch.nn.Module, image: torch.Tensor, cfg: dict, cuda: bool = True) -> dict:
    """``cpu_ms`` (with ``cfg["threads"]`` threads) and ``gpu_ms`` (where a GPU exists and ``cuda``) of ``model``."""
    out = {"cpu_ms": latency_ms(model, image, torch.device("cpu"), cfg["warmup"], cfg["runs"], cfg["threads"]),
           "gpu_ms": None}
    if cuda and torch.cuda.is_available():
        out["gpu_ms"] = latency_ms(model, image, torch.device("cuda"), cfg["warmup"], cfg["runs"])
        model.to("cpu")
    return out
