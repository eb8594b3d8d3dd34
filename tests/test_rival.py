"""Ultralytics' own trainer, plain and with its distill_model=, as rows of a study: on a tiny VOC set, one epoch."""
from __future__ import annotations

import json

from conftest import make_voc

from study.defaults import _merge, load_profile
from study.rival import rival_specs, run_rival
from study.runner import Study
from study.store import read_runs


def test_rival_rows_are_trained_scored_and_paired_with_their_own_baseline(tmp_path, ids):
    root = make_voc(tmp_path / "voc", {"train": ids[:6], "val": ids[6:8], "test": ids[8:]})
    profile = _merge(load_profile("smoke"), {"detectors": ["yolo"], "max_train_images": None, "image_size": 64,
                                             "seeds": [0], "teacher_seeds": [0], "max_eval_images": None,
                                             "yolo": {"teacher": {"model": "yolov8p", "epochs": 1},
                                                      "student": {"model": "yolov8p", "epochs": 1}}})
    study = Study(profile, tmp_path / "out", f"voc:{root}", progress=False, log=lambda *_: None)
    rows = {r["method"]: r for r in read_runs(run_rival(study))}
    assert set(rows) == {"teacher", "baseline", "distill_model"}
    assert all(r["status"] == "ok" for r in rows.values()), [r["error"] for r in rows.values()]
    teacher_id = rows["teacher"]["run_id"]
    kd = json.loads(rows["distill_model"]["hparams"])
    assert kd["teacher_run"] == teacher_id and kd["dis"] == 6.0 and kd["trainer"] == "ultralytics"
    assert rows["baseline"]["backbone"] == rows["distill_model"]["backbone"] == "yolov8p@ultralytics"
    for method in ("baseline", "distill_model"):
        assert 0 <= float(rows[method]["map"]) <= 1 and float(rows[method]["cpu_ms"]) > 0
    # ultralytics was really given the teacher: its checkpoint sits in the run's folder
    assert (tmp_path / "out" / "runs" / rows["distill_model"]["run_id"] / "teacher_ultralytics.pt").is_file()
    # a rerun trains nothing again
    before = {r["run_id"]: r["map"] for r in read_runs(study.runs_csv)}
    run_rival(Study(profile, tmp_path / "out", f"voc:{root}", progress=False, log=lambda *_: None))
    assert {r["run_id"]: r["map"] for r in read_runs(study.runs_csv)} == before
    assert [s.method for s in rival_specs(profile, "voc")] == ["baseline", "distill_model"]
