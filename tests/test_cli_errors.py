"""Bad command-line inputs end in one line on stderr and a non-zero exit, before anything trains."""
from __future__ import annotations

import socket
import time

import pytest
import torch

from study.__main__ import main


def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    if torch.cuda.is_available():
        return  # nothing to refuse on a machine with a GPU
    assert main(["run", "--profile", "smoke", "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device cuda: this machine has no CUDA GPU that torch can use (use cpu)"]


@pytest.mark.parametrize("args, message", [
    (["--method", "hintn", "--n-trials", "1"], "method: unknown distillation method 'hintn' (parts: hinton, fitnets, "
     "at, nst, pkd, cwd, fgfi, ld, ls, joined by '+')"),  # was a ValueError's traceback
    (["--method", "hinton", "--n-trials", "0"], "n_trials must be a whole number >= 1, not 0"),  # trained a teacher
    (["--method", "hinton", "--budget-epochs", "-2"], "budget_epochs must be a whole number >= 1, not -2"),
])
def test_a_search_without_a_method_or_budget_to_run_is_one_line(capsys, tmp_path, args, message):
    assert main(["search", "--profile", "smoke", "--out", str(tmp_path), *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "runs.csv").exists()  # nothing trained


@pytest.mark.parametrize("args, message", [
    (["parity", "--epochs", "0"], "--epochs must be a whole number >= 1, not 0"),  # was a traceback after training
    (["parity", "--image-size", "7"], "--image-size must be a whole number >= 32, not 7"),  # trained at 7 px
    (["parity", "--seeds", "1", "1"], "--seeds must be distinct, not 1 1"),
    (["bench", "--train-images", "0"], "--train-images must be a whole number >= 1, not 0"),  # measured 96 instead
])
def test_a_benchmark_option_below_its_least_value_is_one_line(capsys, tmp_path, args, message):
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "--device tpu: not a device (cpu, cuda, cuda:N)"),  # was torch's RuntimeError traceback
    (["--out", "{tmp}/a-file/study"], "{tmp}/a-file/study: cannot create the study's output folder ({tmp}/a-file is "
     "a file)"),  # was a NotADirectoryError traceback
    (["--tuned", "--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open the search database (Can't load "
     "plugin: sqlalchemy.dialects:nosuchdb)"),  # was SQLAlchemy's traceback
])
def test_a_device_folder_or_storage_that_cannot_be_used_is_one_line(capsys, tmp_path, args, message):
    (tmp_path / "a-file").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["run", "--profile", "smoke", "--out", str(tmp_path / "out"), *args]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {message.replace('{tmp}', str(tmp_path))}"
    assert not (tmp_path / "out" / "runs.csv").exists()  # nothing trained


def test_a_ray_address_with_nothing_there_fails_fast(capsys, tmp_path):
    with socket.socket() as s:  # a free loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    code = main(["run", "--profile", "smoke", "--executor", "ray", "--address", f"127.0.0.1:{port}",
                 "--out", str(tmp_path)])
    assert code == 2 and time.monotonic() - started < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot join the Ray cluster at 127.0.0.1:{port}: nothing "
                                               "answers there")


def test_a_study_whose_runs_all_fail_exits_non_zero(capsys, tmp_path, monkeypatch):
    from study.runner import Study

    def fail(self, spec):
        raise RuntimeError("no")

    monkeypatch.setattr(Study, "execute", fail)
    profile = tmp_path / "p.yaml"
    profile.write_text("detectors: [faster_rcnn]\nimage_size: 64\nmax_train_images: 4\nmax_eval_images: 2\n"
                       "seeds: [0]\nteacher_seeds: [0]\nmethods: [baseline]\nexecution: {workers: 1}\n")
    assert main(["run", "--profile", str(profile), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "error: every run of the study failed (2)" in capsys.readouterr().err


def test_resuming_on_another_thread_count_is_refused(tmp_path, monkeypatch):
    """A run id gives other numbers on another thread count, so a plan whose finished runs trained on 2 threads
    is not continued on 1 (and the check reads each row's ``device``)."""
    import pytest

    from study.defaults import load_profile
    from study.errors import StudyError
    from study.runner import Study
    from study.store import upsert_run

    profile = tmp_path / "p.yaml"
    profile.write_text("detectors: [faster_rcnn]\nimage_size: 64\nmax_train_images: 4\nmax_eval_images: 2\n"
                       "seeds: [0, 1]\nteacher_seeds: [0]\nmethods: [baseline]\n"
                       "execution: {workers: 2, threads_per_worker: 1}\n")
    study = Study(load_profile(str(profile)), tmp_path / "out", progress=False, log=lambda *_: None)
    first = study.planned()[0]
    study.out_dir.mkdir(parents=True)
    upsert_run(study.runs_csv, study.row_of(first) | {"status": "ok", "device": "cpu: Some CPU (2 threads)"})
    monkeypatch.setattr(Study, "execute", lambda self, spec: pytest.fail("trained a run"))
    with pytest.raises(StudyError, match=r"1 finished run\(s\) of this plan trained on 2 thread\(s\) per run .* "
                                         r"this execution would train on 1"):
        study.run()


def test_a_runs_csv_of_another_run_id_scheme_is_refused_before_any_row_is_retired(tmp_path, monkeypatch):
    """Rows whose ids were made under another scheme would not match the plan's ids: the study says so instead of
    moving them to superseded.csv and training their runs again; rows without the column are scheme 1."""
    import pytest

    from study.defaults import load_profile
    from study.errors import StudyError
    from study.plan import ID_SCHEME
    from study.runner import Study
    from study.store import read_runs, upsert_run

    profile = tmp_path / "p.yaml"
    profile.write_text("detectors: [faster_rcnn]\nimage_size: 64\nmax_train_images: 4\nmax_eval_images: 2\n"
                       "seeds: [0]\nteacher_seeds: [0]\nmethods: [baseline]\nexecution: {workers: 1}\n")
    study = Study(load_profile(str(profile)), tmp_path / "out", progress=False, log=lambda *_: None)
    first = study.planned()[0]
    assert ID_SCHEME == 1 and study.row_of(first)["id_scheme"] == 1
    study.out_dir.mkdir(parents=True)
    upsert_run(study.runs_csv, study.row_of(first) | {"run_id": first.run_id[:-8] + "0" * 8, "id_scheme": 2,
                                                      "status": "ok"})
    before = study.runs_csv.read_text()
    monkeypatch.setattr(Study, "execute", lambda self, spec: pytest.fail("trained a run"))
    with pytest.raises(StudyError, match=r"runs.csv: 1 row\(s\) have run ids of scheme 2 .* this version makes "
                                         r"scheme 1 ids"):
        study.run()
    assert study.runs_csv.read_text() == before and not (study.out_dir / "superseded.csv").exists()
    upsert_run(study.runs_csv, read_runs(study.runs_csv)[0] | {"id_scheme": ""})  # a row from before the column
    study.check_id_scheme()


def test_a_failed_run_keeps_its_traceback_until_it_is_tried_again(tmp_path, monkeypatch):
    """A failed run's row says why and its folder keeps the traceback; once the run is tried again and succeeds,
    the earlier traceback is gone from its folder (it no longer describes the run)."""
    from study.defaults import load_profile
    from study.runner import Study

    profile = tmp_path / "p.yaml"
    profile.write_text("detectors: [faster_rcnn]\nimage_size: 64\nmax_train_images: 4\nmax_eval_images: 2\n"
                       "seeds: [0]\nteacher_seeds: [0]\nmethods: [baseline]\nexecution: {workers: 1}\n")
    study = Study(load_profile(str(profile)), tmp_path / "out", progress=False, log=lambda *_: None)
    spec = study.planned()[0]
    error_file = study.out_dir / "runs" / spec.run_id / "error.txt"

    def broken(self, spec):
        raise RuntimeError("the box head's guard failed")
    monkeypatch.setattr(Study, "execute", broken)
    row = study.run_one(spec)
    assert row["status"] == "failed" and row["error"] == "RuntimeError: the box head's guard failed"
    assert "the box head's guard failed" in error_file.read_text()
    monkeypatch.setattr(Study, "execute", lambda self, spec: {"map": 0.5, "map50": 0.8})
    assert study.run_one(spec)["status"] == "ok" and not error_file.exists()
