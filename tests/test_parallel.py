"""Runs on worker processes: every row as a serial study writes it, dependencies respected, latency timed alone
afterwards, a failed run or a killed worker recorded while the rest goes on, a killed study's latency resumed."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time

import pytest
import torch

from study.defaults import _merge, load_profile
from study.parallel import worker_count, worker_devices
from study.plan import plan_runs
from study.runner import Study, cpu_identity
from study.store import read_runs


def small(**override) -> dict:
    profile = load_profile("smoke")
    return _merge(profile, {"execution": {"workers": 2}, **override})


def test_worker_count():
    cpu = torch.device("cpu")
    assert worker_count({"workers": 3, "threads_per_worker": 1}, cpu) == 3
    assert worker_count({"workers": "auto", "threads_per_worker": 1}, torch.device("cuda")) == 1
    cores = len(os.sched_getaffinity(0))
    auto = worker_count({"workers": "auto", "threads_per_worker": 1}, cpu)
    assert 1 <= auto <= cores
    assert worker_count({"workers": "auto", "threads_per_worker": 10**6}, cpu) == 1
    with pytest.raises(ValueError, match="execution.workers"):
        worker_count({"workers": 0, "threads_per_worker": 1}, cpu)


def test_one_worker_per_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_count({"workers": "auto", "threads_per_worker": 1}, torch.device("cuda")) == 2
    assert worker_count({"workers": "auto", "threads_per_worker": 1}, torch.device("cuda:1")) == 1
    assert worker_devices(3, torch.device("cuda")) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices(2, torch.device("cuda:1")) == ["cuda:1", "cuda:1"]
    assert worker_devices(2, torch.device("cpu")) == ["cpu", "cpu"]


def test_parallel_study_rows_dependencies_and_deferred_latency(tmp_path):
    profile = small(detectors=["faster_rcnn", "yolo"], methods=["baseline", "hinton", "fitnets"],
                    distill={"fitnets": {"taps": ["c9"]}},  # Faster R-CNN's FitNets run fails: no such tap
                    yolo={"compress": ["prune", "int8-qat+kd", "fp16"], "compress_seeds": [0]},
                    faster_rcnn={"compress": ["int8"]},
                    compression={"prune": {"finetune_epochs": 1}, "int8-qat+kd": {"finetune_epochs": 1}})
    study = Study(profile, tmp_path, progress=False, log=lambda *_: None)
    plan = plan_runs(profile, study.data().name)
    rows = read_runs(study.run())
    assert len(rows) == len(plan) and {r["run_id"] for r in rows} == {s.run_id for s in plan}
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["detector"], r["method"]) for r in failed] == [("faster_rcnn", "fitnets")]
    assert "c9" in failed[0]["error"]
    order = [r["run_id"] for r in rows]  # rows are written as runs end
    for spec in plan:
        for needed in (spec.hparams.get("teacher_run"), spec.hparams.get("source_run")):
            if needed:
                assert order.index(needed) < order.index(spec.run_id), spec.run_id
    for r in rows:
        if r["status"] == "ok":
            assert float(r["cpu_ms"]) > 0, r["run_id"]  # timed afterwards, alone
            assert "(1 threads)" in r["device"]  # trained by a 1-thread worker
            assert float(r["cpu_ms_iqr"]) >= 0
            assert (tmp_path / "runs" / r["run_id"] / "spec.json").is_file()  # how the latency pass rebuilt it
    [execution] = read_runs(tmp_path / "executions.csv")
    assert (execution["runs_executed"], execution["workers"], execution["threads_per_run"]) == (str(len(plan)), "2", "1")
    assert float(execution["wall_s"]) > 0
    assert execution["cpu_id"] == cpu_identity()  # which CPU generation ran it ('' off Linux)
    qat = next(r for r in rows if r["method"] == "int8-qat+kd")  # YOLO QAT with KD (and ultralytics' EMA)
    assert qat["status"] == "ok" and set(json.loads(qat["hparams"])["distill"]) == {"hinton", "cwd"}
    for int8 in (qat, next(r for r in rows if r["method"] == "int8")):  # rebuilt from their saved int8 graphs
        assert json.loads(int8["details"])["int8_parts"] and float(int8["cpu_ms"]) > 0


def test_killed_worker_is_replaced_and_its_run_retried(tmp_path):
    profile = small(detectors=["yolo"], methods=["baseline"], seeds=[0, 1, 2])
    study = Study(profile, tmp_path, progress=False, log=lambda *_: None)
    plan = plan_runs(profile, study.data().name)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (study.run(), done.set()))
    thread.start()
    victim = None
    deadline = time.time() + 120
    while victim is None and time.time() < deadline:  # kill a worker once a run has started in it
        if list(tmp_path.glob("runs/*/hparams.json")):
            victim = multiprocessing.active_children()[0]
            os.kill(victim.pid, signal.SIGKILL)
        time.sleep(0.2)
    thread.join(timeout=600)
    assert victim is not None and done.is_set()
    rows = read_runs(tmp_path / "runs.csv")
    assert {r["run_id"] for r in rows} == {s.run_id for s in plan}
    assert all(r["status"] == "ok" for r in rows)  # the killed run retried once (study.schedule), on a live worker
    retried = [r for r in rows if r["error"]]
    assert len(retried) == 1 and retried[0]["error"].startswith("ok on retry after: WorkerDied")
    assert "exit code -9" in retried[0]["error"]
    [execution] = read_runs(tmp_path / "executions.csv")
    assert execution["retried"] == retried[0]["run_id"] and execution["executor"] == "local"


def test_latency_left_by_a_killed_study_is_measured_on_resume(tmp_path, monkeypatch):
    profile = _merge(load_profile("smoke"), {"detectors": ["yolo"], "methods": ["baseline"]})
    study = Study(profile, tmp_path, progress=False, log=lambda *_: None)
    monkeypatch.setattr(Study, "measure_deferred_latency", lambda self: 0)  # killed before the latency pass
    rows = read_runs(study.run())
    assert all(r["status"] == "ok" and r["cpu_ms"] == "" for r in rows)
    monkeypatch.undo()
    rows = read_runs(Study(profile, tmp_path, progress=False, log=lambda *_: None).run())
    assert all(float(r["cpu_ms"]) > 0 for r in rows)


def test_cpu_identity_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nstepping\t: 1\n\nprocessor\t: 1\ncpu family\t: 26\n")
    assert cpu_identity(str(info)) == "family 25 model 17 stepping 1"
    info.write_text("processor\t: 0\nmodel name\t: ARMv8\n")  # no family: nothing said
    assert cpu_identity(str(info)) == ""
    assert cpu_identity(str(tmp_path / "missing")) == ""


def test_a_study_resumed_on_another_cpu_says_so(tmp_path, monkeypatch):
    profile = _merge(load_profile("smoke"), {"detectors": ["yolo"], "methods": ["baseline"], "seeds": [0]})
    lines = []
    study = Study(profile, tmp_path, progress=False, log=lines.append)
    (tmp_path / "executions.csv").write_text("started,profile,cpu_id\n2026-12-06T08:08:00,smoke,family 26 model 2\n")
    monkeypatch.setattr("study.runner.cpu_identity", lambda: "family 25 model 17 stepping 1")
    study.warn_other_cpu()
    assert lines == [f"warning: {tmp_path / 'executions.csv'}: earlier executions ran on family 26 model 2 and this "
                     "one runs on family 25 model 17 stepping 1: rows from the two CPUs differ in speed and to the "
                     "digit (docs/decisions.md, 'The machine')"]
    (tmp_path / "executions.csv").write_text("started,profile,cpu_id\n"
                                             "2026-12-06T08:08:00,smoke,family 25 model 17 stepping 1\n")
    study.warn_other_cpu()
    assert len(lines) == 1  # the same CPU: nothing said
