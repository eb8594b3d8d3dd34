"""The smoke study end to end: runs.csv, resume without recomputation, a failed run recorded, the report."""
from __future__ import annotations

import json

import pytest

from study.defaults import load_profile
from study.plan import plan_runs
from study.runner import Study
from study.store import COLUMNS, read_runs


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    profile = load_profile("smoke")
    study = Study(profile, out, progress=False, log=lambda *_: None)
    runs_csv = study.run()
    return profile, out, runs_csv


def test_smoke_study_writes_every_row_filled(smoke):
    profile, out, runs_csv = smoke
    all_rows = read_runs(runs_csv)
    assert list(all_rows[0]) == COLUMNS
    assert len(all_rows) == len(profile["detectors"]) * (1 + len(profile["methods"]) * len(profile["seeds"]))
    assert all(r["status"] == "ok" for r in all_rows), [r["error"] for r in all_rows]
    assert {r["detector"] for r in all_rows} == {"faster_rcnn", "yolo", "fcos"}
    for detector in profile["detectors"]:
        rows = [r for r in all_rows if r["detector"] == detector]
        teacher = [r for r in rows if r["method"] == "teacher"]
        students = [r for r in rows if r["method"] != "teacher"]
        assert len(teacher) == 1 and {r["method"] for r in students} == set(profile["methods"])
        assert all(int(teacher[0]["params"]) > int(r["params"]) for r in students)
        assert all(int(r["adapter_params"]) > 0 for r in students if r["method"] == "fitnets")
    for r in all_rows:
        for col in ("run_id", "profile", "dataset", "detector", "backbone", "method", "hparams", "seed", "params",
                    "gflops", "size_mb", "cpu_ms", "map", "map50", "map75", "per_class_ap", "train_s", "status"):
            assert r[col] != "", (r["run_id"], col)
        assert 0 <= float(r["map"]) <= float(r["map50"]) <= 1
        assert set(json.loads(r["per_class_ap"])) == {"Platelets", "RBC", "WBC"}
        assert (out / "runs" / r["run_id"] / "best.pt").is_file()
    fitnets = {r["detector"]: json.loads(r["hparams"])["distill"]["fitnets"] for r in all_rows
               if r["method"] == "fitnets"}
    assert fitnets["faster_rcnn"] == {"weight": 100.0, "taps": ["c3", "c4", "c5"]}
    assert fitnets["yolo"] == {"weight": 100.0, "taps": ["p3", "p4", "p5"]}  # YOLO's own taps, shared weight


def test_rerun_skips_finished_runs(smoke):
    profile, out, runs_csv = smoke
    before = read_runs(runs_csv)
    calls = []
    study = Study(profile, out, progress=False, log=lambda *_: None)
    study.execute = lambda spec: calls.append(spec)  # nothing should execute
    study.run()
    assert calls == [] and read_runs(runs_csv) == before


def test_failed_run_is_recorded_and_the_study_goes_on(smoke, tmp_path):
    profile, out, _ = smoke
    profile = dict(profile, detectors=["faster_rcnn"], methods=["baseline", "at"], seeds=[0])
    specs = plan_runs(profile, "bccd")

    def failing(spec):
        if spec.method == "at":
            raise RuntimeError("simulated\nfailure")
        return Study.execute(study, spec)

    study = Study(profile, tmp_path, progress=False, log=lambda *_: None)
    study.execute = failing
    # reuse the finished teacher: copy its row and checkpoint
    teacher_id = specs[0].run_id
    for row in read_runs(out / "runs.csv"):
        if row["run_id"] == teacher_id:
            from study.store import upsert_run
            upsert_run(tmp_path / "runs.csv", row)
    (tmp_path / "runs" / teacher_id).mkdir(parents=True)
    (tmp_path / "runs" / teacher_id / "best.pt").write_bytes((out / "runs" / teacher_id / "best.pt").read_bytes())
    rows = {r["method"]: r for r in read_runs(study.run())}
    assert rows["at"]["status"] == "failed" and rows["at"]["error"] == "RuntimeError: simulated failure"
    assert rows["baseline"]["status"] == "ok"


def test_report_is_written(smoke):
    from study.report import write_report
    _, out, runs_csv = smoke
    report = write_report(runs_csv, out)
    text = report.read_text()
    assert "## Main table" in text and "baseline" in text
    table = (out / "table.md").read_text()
    smoke = load_profile("smoke")
    assert table.count("\n") == 2 + len(smoke["detectors"]) * (1 + len(smoke["methods"]))
    for name in ("map_vs_params", "map_vs_gflops", "per_class_ap", "training_curves"):
        assert (out / f"{name}.png").stat().st_size > 1000 and (out / f"{name}.pdf").is_file()


def test_killed_study_resumes_where_it_stopped(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from study.defaults import PROFILE_DIR

    small = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text()) | {"detectors": ["faster_rcnn"],
                                                                         "methods": ["baseline", "hinton"]}
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small))  # the smoke study's Faster R-CNN: three runs
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "study", "run", "--profile", str(tmp_path / "small.yaml"), "--out", str(out),
           "--no-progress"]
    env = dict(os.environ, YOLO_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_runs(out / "runs.csv")) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # in the middle of the third run
    proc.wait()
    before = {r["run_id"]: r for r in read_runs(out / "runs.csv")}
    n_runs = len(plan_runs(load_profile(str(tmp_path / "small.yaml")), "bccd"))
    assert 2 <= len(before) < n_runs
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=600)
    after = read_runs(out / "runs.csv")
    ids = [r["run_id"] for r in after]
    assert len(ids) == len(set(ids)) == n_runs
    assert all(r["status"] == "ok" for r in after)
    # filled by the latency pass at the end, over every model at once
    timing = {"cpu_ms", "cpu_ms_iqr", "gpu_ms", "runtime", "eager_ms", "onnx_mb", "onnx_map"}
    same = lambda a, b: {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert all(same(r, before[r["run_id"]]) for r in after if r["run_id"] in before)  # not recomputed
    assert all(float(r["cpu_ms"]) > 0 for r in after)


def test_compression_rows_reuse_the_teacher(smoke, tmp_path):
    import shutil

    from study.store import upsert_run

    profile, out, runs_csv = smoke
    # the smoke study's Faster R-CNN teacher and baseline, copied
    for row in read_runs(runs_csv):
        if row["detector"] == "faster_rcnn" and row["method"] in ("teacher", "baseline"):
            upsert_run(tmp_path / "runs.csv", row)
            shutil.copytree(out / "runs" / row["run_id"], tmp_path / "runs" / row["run_id"])
    compress = dict(profile, detectors=["faster_rcnn"], methods=["baseline"],
                    faster_rcnn=dict(profile["faster_rcnn"],
                                     compress=["prune", "prune+kd", "prune-iterative", "int8", "fp16"]),
                    compression=dict(profile["compression"],
                                     **{"prune": dict(profile["compression"]["prune"], finetune_epochs=1),
                                        "prune+kd": dict(profile["compression"]["prune+kd"], finetune_epochs=1),
                                        "prune-iterative": dict(profile["compression"]["prune-iterative"],
                                                                finetune_epochs=2)}))
    trained = []
    study = Study(compress, tmp_path, progress=False, log=lambda *_: None)
    execute = study.execute
    study.execute = lambda spec: trained.append(spec.method) or execute(spec)
    rows = read_runs(study.run(time_latency=False))  # the latency pass rebuilds them: tests/test_parallel.py
    assert sorted(trained) == sorted(["prune", "prune+kd", "prune-iterative", "int8", "fp16"])
    by_method = {r["method"]: r for r in rows}
    teacher = by_method["teacher"]
    assert len([r for r in rows if r["method"] == "teacher"]) == 1  # reused, not retrained
    for method in ("prune", "prune+kd", "prune-iterative", "int8", "fp16"):
        assert by_method[method]["status"] == "ok", by_method[method]["error"]
        assert 0 <= float(by_method[method]["map"]) <= 1
    for method in ("prune", "prune+kd", "prune-iterative"):
        details = json.loads(by_method[method]["details"])
        assert float(by_method[method]["gflops"]) <= 0.5 * float(teacher["gflops"]) * 1.001
        assert int(by_method[method]["params"]) < int(teacher["params"])
        assert "map_before_finetune" in details
    steps = json.loads(by_method["prune-iterative"]["details"])["steps"]
    assert len(steps) == 2 and steps[1]["gflops_after"] < steps[0]["gflops_after"] < steps[0]["gflops_before"]
    assert json.loads(by_method["prune+kd"]["hparams"])["distill"] == {"hinton": {"weight": 1.0, "temperature": 4.0}}
    assert float(by_method["int8"]["size_mb"]) < 0.5 * float(teacher["size_mb"])
    assert float(by_method["int8"]["gflops"]) == pytest.approx(float(teacher["gflops"]), rel=1e-6)
    assert by_method["int8"]["params"] == teacher["params"]  # the same weights, stored in int8
    assert json.loads(by_method["int8"]["details"])["int8_parts"] == "backbone (body + FPN), roi_heads.box_head"
    assert float(by_method["fp16"]["size_mb"]) == pytest.approx(float(teacher["size_mb"]) / 2, rel=0.05)


def test_fresh_clone_retrains_only_the_teachers_the_plan_reads(smoke, tmp_path):
    profile, out, runs_csv = smoke
    from study.store import upsert_run
    for row in read_runs(runs_csv):  # a fresh clone: the committed runs.csv, no checkpoints
        upsert_run(tmp_path / "runs.csv", row)
    calls = []
    stub = {"per_class_ap": {}, "map": 0.0, "map50": 0.0}
    study = Study(dict(profile, detectors=["faster_rcnn"], methods=["baseline", "hinton"]), tmp_path,
                  progress=False, log=lambda *_: None)
    study.execute = lambda spec: calls.append(spec.method) or dict(stub)
    study.run()
    assert calls == ["teacher"]  # hinton reads it; the committed student rows (leaves) are kept
    rows = {r["method"]: r for r in read_runs(tmp_path / "runs.csv") if r["detector"] == "faster_rcnn"}
    assert rows["teacher"]["status"] == "ok" and rows["teacher"]["map"] == "0.0"  # the stub's row, recorded
    assert rows["baseline"]["map"] == next(r["map"] for r in read_runs(runs_csv)
                                           if r["detector"] == "faster_rcnn" and r["method"] == "baseline")
    calls.clear()
    for row in read_runs(runs_csv):  # the committed rows again, and a plan in which nothing reads the teacher
        upsert_run(tmp_path / "runs.csv", row)
    (tmp_path / "runs" / rows["teacher"]["run_id"] / "best.pt").unlink(missing_ok=True)
    study = Study(dict(profile, detectors=["faster_rcnn"], methods=["baseline"]), tmp_path, progress=False,
                  log=lambda *_: None)
    study.execute = lambda spec: calls.append(spec.method) or dict(stub)
    study.run()
    assert calls == []


def test_reused_runs_are_not_retrained_and_only_planned_ones_are_copied(smoke, tmp_path):
    profile, out, runs_csv = smoke
    from study.store import reuse_runs
    sub = dict(profile, detectors=["faster_rcnn"], methods=["baseline", "hinton"])
    study = Study(sub, tmp_path, progress=False, log=lambda *_: None)
    planned = {s.run_id for s in plan_runs(sub, study.data().name)}
    source = {r["run_id"]: r for r in read_runs(runs_csv)}
    assert study.reuse([out]) and reuse_runs(out, tmp_path, planned) == []  # a second copy adds nothing
    copied = {r["run_id"]: r for r in read_runs(tmp_path / "runs.csv")}
    assert set(copied) == planned and all(copied[k] == source[k] for k in copied)  # rows as they were
    teacher = next(k for k in copied if "-teacher-" in k)
    assert (tmp_path / "runs" / teacher / "best.pt").is_file() and not (tmp_path / "runs" / teacher / "last.pt").exists()
    calls = []
    study.execute = lambda spec: calls.append(spec)
    study.run()
    assert calls == []  # the hinton rows read the copied teacher: nothing retrained
    with pytest.raises(FileNotFoundError, match="no runs to reuse"):
        reuse_runs(tmp_path / "nowhere", tmp_path, planned)


def test_changed_settings_retire_the_old_rows_of_their_cells(smoke, tmp_path):
    profile, out, runs_csv = smoke
    from study.store import upsert_run
    committed = read_runs(runs_csv)
    for row in committed:
        upsert_run(tmp_path / "runs.csv", row)
    other = dict(committed[0], run_id="another-profile-row", method="prune")  # a cell this plan does not fill
    upsert_run(tmp_path / "runs.csv", other)
    calls = []
    stub = {"per_class_ap": {}, "map": 0.0, "map50": 0.0}
    changed = dict(profile, detectors=["faster_rcnn"], methods=["baseline", "baseline-long"],
                   long_factor=profile["long_factor"] + 1)
    study = Study(changed, tmp_path, progress=False, log=lambda *_: None)
    study.execute = lambda spec: calls.append(spec) or dict(stub)
    study.run(time_latency=False)
    assert [s.method for s in calls] == ["baseline-long"]  # only the cell whose settings changed is trained
    old = [r for r in committed if r["detector"] == "faster_rcnn" and r["method"] == "baseline-long"]
    assert len(old) == 1 and read_runs(tmp_path / "superseded.csv") == old  # kept, not lost
    now = read_runs(tmp_path / "runs.csv")
    assert calls[0].run_id in {r["run_id"] for r in now} and old[0]["run_id"] not in {r["run_id"] for r in now}
    assert len(now) == len(committed) + 1  # one row swapped; every other row, the other profile's too, stays
    assert "another-profile-row" in {r["run_id"] for r in now}
