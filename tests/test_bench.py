"""The benchmark's code paths on the smoke profile (it prints figures; nothing here checks a speed)."""
from __future__ import annotations

import json
import tempfile

import torch

from study.bench.benchmarks import bench_scaling, run_bench
from study.defaults import load_profile
from study.train import trains_bf16


def test_bench_writes_every_section(tmp_path, monkeypatch):
    profile = load_profile("smoke")
    settings = {"train_images": 8, "val_images": 4, "eval_images": 4, "epochs": 2, "reference_epochs": 2,
                "scaling_base": None}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out"
    report = run_bench(profile, out, settings=settings, log=lambda *_: None)
    assert not list(scratch.glob("bench-*"))  # its checkpoints are gone with the temporary folder
    saved = json.loads((out / "bench.json").read_text())
    assert saved["machine"] == report["machine"] and saved["data"]["decode_img_s"] > 0
    trained = {(t["detector"], t["role"], t["method"]) for t in saved["training"]}
    for detector in profile["detectors"]:
        assert (detector, "teacher", "plain") in trained
        # baseline-long trains at the baseline's speed, for longer: not measured apart
        assert {(detector, "student", m) for m in profile["methods"] if m != "baseline-long"} <= trained
    assert any("teacher yolov8n" in m for _, _, m in trained)  # the 3-4x FLOPs pair
    for t in saved["training"]:
        speeds = [t["img_s"]] if t["method"] in ("plain", "baseline") else [t["img_s_cache_off"], t["img_s_cache_warm"]]
        assert min(speeds) > 0, t
    tools = {(r["detector"], r["model"]) for r in saved["reference"]}
    assert ("faster_rcnn", "resnet50") in tools and ("yolo", "yolov8n") in tools
    assert all(r["ours_img_s"] > 0 and (r["theirs_img_s"] is None or r["theirs_img_s"] > 0) for r in saved["reference"])
    # every ratio compares the loops at one precision: torchvision's loop fp32 and bf16, ultralytics' fp32 only
    precisions = {(r["detector"], r["model"], r["precision"]) for r in saved["reference"] if r["theirs_img_s"]}
    bf16 = trains_bf16(torch.device("cpu"), {"bf16_on_cpu": True})
    assert {("faster_rcnn", "resnet50", p) for p in (("fp32", "bf16") if bf16 else ("fp32",))} <= precisions
    assert not any(d == "yolo" and p == "bf16" for d, _, p in precisions)
    assert len(saved["eval"]) == len(saved["latency_ms"]) == 2 * len(profile["detectors"])
    layout = [t for t in saved["training"] if t["method"] in ("plain", "baseline")]
    assert layout and all(t["img_s_nchw"] > 0 for t in layout)  # before / after channels-last
    text = (out / "bench.md").read_text()
    assert "faster_rcnn" in saved["default_study"]  # the committed results/default, found from the package
    assert saved["training_precision"] == ("bf16 autocast" if profile["train"]["bf16_on_cpu"] else "fp32")
    assert "| faster_rcnn | resnet50 | fp32 | torchvision stock loop" in text
    assert ("bf16's own gain in this project's loop" in text) == bf16
    for heading in ("## Data pipeline", "## Training throughput", "## Against the tools", "## Evaluation and latency",
                    "Training memory layout"):
        assert heading in text


def test_bench_scaling_compares_serial_and_worker_processes(tmp_path):
    profile = dict(load_profile("smoke"), detectors=["yolo"], execution={"workers": 2, "threads_per_worker": 1})
    rows = bench_scaling(profile, {"max_train_images": 4, "epochs": 1, "seeds": [0]}, tmp_path, None)
    by_size = {r["size"]: r for r in rows}
    assert set(by_size) == {"base", "base, serial", "2x images", "2x epochs", "2x seeds"}
    assert by_size["base"]["workers"] == 2 and by_size["base, serial"]["workers"] == 1
    assert by_size["2x seeds"]["runs"] == by_size["base"]["runs"] + 2  # one more baseline and Hinton seed
    assert all(r["failed"] == 0 and r["wall_s"] > 0 for r in rows)
