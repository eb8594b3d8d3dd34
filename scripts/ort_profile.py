"""ONNX Runtime's profiler over exported detectors: each operator type's share of the time.

``python scripts/ort_profile.py FOLDER MODEL.onnx [MODEL.onnx ...]``: FOLDER is the study folder the models were
exported in (its test images are fed, at its profile's canvas; the `default` profile's settings); 1 intra-op
thread; 3 passes over 8 test images. docs/quantization-notes.md quotes its output.
"""
from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime
import torch

from study.defaults import load_profile
from study.workspace import Workspace


def op_shares(path: str, images: list) -> tuple[float, list]:
    """(ms per image, [(operator type, share of the time, nodes)] largest first) over ``images``."""
    options = onnxruntime.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads, options.inter_op_num_threads = True, 1, 1
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        runs = 0
        for _ in range(3):
            for image in images:
                session.run(None, {session.get_inputs()[0].name: image})
                runs += 1
        events = json.loads(Path(session.end_profiling()).read_text())
    time, nodes = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            time[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    total = sum(time.values())
    return total / runs / 1000, [(op, t / total, nodes[op] // runs) for op, t in time.most_common()]


def main(folder: str, models: list[str]) -> None:
    workspace = Workspace(load_profile("default"), Path(folder), "voc:data/bccd", torch.device("cpu"))
    test = workspace.image_set("test").images
    images = [test[i].float().div(255).numpy() for i in range(8)]
    for path in models:
        ms, shares = op_shares(path, images)
        print(f"{path}: {ms:.1f} ms an image")
        for op, share, count in shares[:12]:
            print(f"  {op:22s} {100 * share:5.1f}%  {count} nodes")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
