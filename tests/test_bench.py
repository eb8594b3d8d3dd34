"""The benchmark's code paths on the smoke profile (it prints figures; nothing here checks a speed)."""
from __future__ import annotations

import json

from study.bench import run_bench
from study.defaults import load_profile


def test_bench_writes_every_section(tmp_path):
    profile = load_profile("smoke")
    settings = {"train_images": 8, "val_images": 4, "eval_images": 4, "epochs": 2, "reference_epochs": 2,
                "scaling_base": None}
    report = run_bench(profile, tmp_path, settings=settings, log=lambda *_: None)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["machine"] == report["machine"] and saved["data"]["decode_img_s"] > 0
    trained = {(t["detector"], t["role"], t["method"]) for t in saved["training"]}
    for detector in profile["detectors"]:
        assert (detector, "teacher", "plain") in trained
        assert {(detector, "student", m) for m in profile["methods"]} <= trained
    assert any("teacher yolov8n" in m for _, _, m in trained)  # the 3-4x FLOPs pair
    for t in saved["training"]:
        speeds = [t["img_s"]] if t["method"] in ("plain", "baseline") else [t["img_s_cache_off"], t["img_s_cache_warm"]]
        assert min(speeds) > 0, t
    tools = {(r["detector"], r["model"]) for r in saved["reference"]}
    assert ("faster_rcnn", "resnet50") in tools and ("yolo", "yolov8n") in tools
    assert all(r["theirs_img_s"] > 0 and r["ours_img_s"] > 0 for r in saved["reference"])
    assert len(saved["eval"]) == len(saved["latency_ms"]) == 2 * len(profile["detectors"])
    text = (tmp_path / "bench.md").read_text()
    for heading in ("## Data pipeline", "## Training throughput", "## Against the tools", "## Evaluation and latency"):
        assert heading in text
