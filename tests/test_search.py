"""Optuna search: a 4-trial search on SQLite, two workers on one PostgreSQL study, a killed search resumed,
and the tuned settings fed back into a study run."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from study.defaults import load_profile
from study.plan import plan_runs
from study.runner import Study
from study.search import fail_orphans, load_tuned, open_storage, search
from study.store import read_runs

ROOT = Path(__file__).resolve().parent.parent
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture(scope="module")
def smoke_with_teacher(tmp_path_factory):
    """A results folder whose smoke teacher has finished, shared by the searches below."""
    out = tmp_path_factory.mktemp("search")
    profile_path = out / "profile.yaml"
    profile_path.write_text(yaml.safe_dump({"name": "smoke", **yaml.safe_load(
        (ROOT / "study" / "profiles" / "smoke.yaml").read_text()), "search": {"heartbeat_s": 1, "grace_s": 3}}))
    profile = load_profile(str(profile_path))
    Study(profile, out, progress=False, log=lambda *_: None).ensure_teacher()
    return profile, profile_path, out


def finished(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=FINISHED)


def test_four_trial_search_on_sqlite_and_tuned_rerun(smoke_with_teacher):
    profile, _, out = smoke_with_teacher
    study = search(profile, "hinton", 4, out, log=lambda *_: None)
    assert len(finished(study)) == 4
    first = min(study.trials, key=lambda t: t.number)
    assert first.user_attrs["distill"] == {"hinton": profile["distill"]["hinton"]}  # the default is tried first
    assert (out / "search.db").is_file()
    report = out / "search" / "smoke-faster_rcnn-hinton"
    assert (report / "trials.csv").is_file() and (report / "best.json").is_file()
    assert (report / "optimization_history.png").stat().st_size > 1000
    tuned = load_tuned(profile, out, None)
    assert set(tuned) == {"faster_rcnn"} and set(tuned["faster_rcnn"]) == {"hinton"}
    assert tuned["faster_rcnn"]["hinton"]["distill"] == study.best_trial.user_attrs["distill"]
    one = dict(profile, detectors=["faster_rcnn"], methods=["hinton"])
    specs = plan_runs(one, "bccd", tuned)
    assert specs[1].hparams["distill"] == tuned["faster_rcnn"]["hinton"]["distill"]
    assert specs[1].hparams["tuned"]["trial"] == study.best_trial.number
    rows = read_runs(Study(one, out, progress=False, log=lambda *_: None).run(tuned=tuned))
    tuned_rows = [r for r in rows if '"tuned"' in r["hparams"]]
    assert len(tuned_rows) == 1 and tuned_rows[0]["status"] == "ok"


def test_yolo_search_uses_its_own_taps_and_teacher(smoke_with_teacher):
    profile, _, out = smoke_with_teacher
    study = search(profile, "nst", 2, out, log=lambda *_: None, detector="yolo")
    assert study.study_name == "smoke-yolo-nst" and len(finished(study)) == 2
    assert all(set(t.user_attrs["distill"]["nst"]["taps"]) <= {"p3", "p4", "p5"} for t in finished(study))
    teachers = {r["detector"] for r in read_runs(out / "runs.csv") if r["method"] == "teacher"}
    assert {"faster_rcnn", "yolo"} <= teachers


def test_search_on_a_profile_without_students_is_a_clear_error(smoke_with_teacher):
    profile, _, out = smoke_with_teacher
    with pytest.raises(ValueError, match="trains no faster_rcnn student"):
        search(dict(profile, methods=[]), "hinton", 1, out, log=lambda *_: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A real PostgreSQL server on loopback, started and stopped here (.ci/run installs it if absent)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not bins:
        pytest.skip("PostgreSQL server is not installed (.ci/run installs it)")
    bindir = Path(bins[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    port = _free_port()
    server = subprocess.Popen(as_user + [str(bindir / "postgres"), "-D", str(data / "db"), "-p", str(port),
                                         "-c", "listen_addresses=127.0.0.1", "-k", str(data)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    time.sleep(0.5)
    yield url
    subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
                   capture_output=True, timeout=60)
    server.wait(timeout=60)
    shutil.rmtree(data, ignore_errors=True)


def _search_cmd(profile_path, out, method, n, storage):
    return [sys.executable, "-m", "study", "search", "--profile", str(profile_path), "--method", method,
            "--n-trials", str(n), "--out", str(out), "--storage", storage]


def test_two_workers_share_one_postgresql_study(smoke_with_teacher, postgres):
    profile, profile_path, out = smoke_with_teacher
    env = dict(os.environ, YOLO_OFFLINE="1")
    workers = [subprocess.Popen(_search_cmd(profile_path, out, "at", 4, postgres), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [w.communicate(timeout=900)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    study = optuna.load_study(study_name="smoke-faster_rcnn-at", storage=postgres)
    done = finished(study)
    assert len(done) == 4
    assert len({t.number for t in done}) == 4
    teacher_rows = [r for r in read_runs(out / "runs.csv") if r["method"] == "teacher" and r["detector"] == "faster_rcnn"]
    assert len(teacher_rows) == 1


def test_killed_search_resumes_without_losing_or_repeating_trials(smoke_with_teacher):
    profile, profile_path, out = smoke_with_teacher
    storage = f"sqlite:///{out / 'kill.db'}"
    cmd = _search_cmd(profile_path, out, "nst", 3, storage)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    state = []
    while time.time() < deadline:  # wait for one finished trial and a second one running, then SIGKILL
        if (out / "kill.db").is_file():
            try:
                with sqlite3.connect(out / "kill.db") as db:
                    state = db.execute("select number, state from trials order by number").fetchall()
            except sqlite3.Error:
                state = []
            if any(s in ("COMPLETE", "PRUNED") for _, s in state) and any(s == "RUNNING" for _, s in state):
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = optuna.load_study(study_name="smoke-faster_rcnn-nst", storage=storage)
    done_before = {t.number: t.params for t in finished(before)}
    killed = [t.number for t in before.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    assert killed, state
    time.sleep(4)  # past the heartbeat's grace period
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=900)
    after = optuna.load_study(study_name="smoke-faster_rcnn-nst", storage=storage)
    done_after = {t.number: t.params for t in finished(after)}
    assert len(done_after) == 3
    assert all(done_after[n] == p for n, p in done_before.items())  # finished trials are kept, not rerun
    states = {t.number: t.state for t in after.get_trials(deepcopy=False)}
    assert all(states[n] == optuna.trial.TrialState.FAIL for n in killed)  # the interrupted trial is marked failed
    retried = [t for t in after.get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") in killed]
    assert retried and all(t.state in FINISHED for t in retried)


def test_tuned_command_equal_budgets_fresh_seeds_and_side_by_side_report(smoke_with_teacher, tmp_path):
    from study.defaults import _merge
    from study.tuned import run_tuned

    profile, _, out = smoke_with_teacher
    p = _merge(profile, {"detectors": ["faster_rcnn"], "methods": ["baseline", "hinton"],
                         "tuning": {"budget_epochs": 3, "search_seed": 100, "pruner": "none"}})
    for name in ("runs.csv",):  # the smoke teacher of the shared folder, its checkpoint included
        (tmp_path / name).write_bytes((out / name).read_bytes())
    import shutil
    shutil.copytree(out / "runs", tmp_path / "runs")
    report = run_tuned(p, tmp_path, log=lambda *_: None).read_text()
    tuning = json.loads((tmp_path / "tuning.json").read_text())
    spent = tuning["budgets"]["faster_rcnn"]
    assert set(spent) == {"baseline", "hinton"}
    for b in spent.values():  # the same budget in epochs: reached, and overrun by at most one trial (2 epochs)
        assert 3 <= b["epochs"] <= 3 + 2
    rows = {r["method"]: r for r in read_runs(tmp_path / "runs.csv") if r["detector"] == "faster_rcnn"}
    # which trial wins on the smoke data is noise (it differs between 1 and 2 threads); what must hold either way:
    # where the default (trial 0) stays the best, no tuned row is trained (it would be the default row again);
    # where another trial beats it, the tuned row is trained with that trial's settings
    assert spent["hinton"]["default_best"] == (spent["hinton"]["best_trial"] == 0)
    if spent["hinton"]["default_best"]:
        assert "hinton@tuned" not in tuning["found"]["faster_rcnn"] and "hinton@tuned" not in rows
        assert "the default (trial 0) was the best trial" in report
    else:
        assert "hinton@tuned" in tuning["found"]["faster_rcnn"] and "hinton@tuned" in rows
        assert json.loads(rows["hinton@tuned"]["hparams"])["distill"] == tuning["found"]["faster_rcnn"][
            "hinton@tuned"]["distill"]
    assert {"baseline", "hinton"} <= set(rows)
    assert "| faster_rcnn | hinton |" in report
    shared = tuning["found"]["faster_rcnn"]["baseline"]
    for method in ("baseline", "hinton"):  # every final row trains with the searched shared settings
        hp = json.loads(rows[method]["hparams"])
        assert hp["train"]["lr"] == shared["train"]["lr"] and hp["role"]["epochs"] == shared["epochs"]
        assert int(rows[method]["seed"]) != 100 and hp["tuned_shared"]["study"] == "smoke-faster_rcnn-baseline"
    assert "## Tuning (equal budget per method, then fresh seeds)" in report
    assert "| faster_rcnn | hinton |" in report
    from study.__main__ import main  # `report` on a tuned folder rewrites the same REPORT.md, tuning section included
    (tmp_path / "REPORT.md").unlink()
    assert main(["report", "--runs", str(tmp_path / "runs.csv"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").read_text() == report
    with pytest.raises(ValueError, match="search_seed 0 is also a final seed"):
        run_tuned(_merge(p, {"tuning": {"search_seed": 0}}), tmp_path, log=lambda *_: None)


def test_tuned_searches_on_worker_processes_find_what_a_serial_run_finds(smoke_with_teacher, tmp_path):
    """The methods' searches go one per worker process; each is serial and seeded, so the settings found and the
    budgets spent are those of the same command run serially."""
    from study.defaults import _merge
    from study.tuned import run_tuned

    profile, _, _ = smoke_with_teacher
    found = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the serial run with the one thread each worker has (thread counts change float sums)
    try:
        # the teacher on the one thread its students train with (a study refuses to mix thread counts)
        Study(profile, tmp_path / "teacher", progress=False, log=lambda *_: None).ensure_teacher()
        for workers in (1, 2):
            folder = tmp_path / f"w{workers}"
            shutil.copytree(tmp_path / "teacher", folder)
            p = _merge(profile, {"detectors": ["faster_rcnn"], "methods": ["baseline", "hinton", "at"],
                                 "tuning": {"budget_epochs": 2, "search_seed": 100, "pruner": "none"},
                                 "execution": {"workers": workers, "threads_per_worker": 1}})
            run_tuned(p, folder, log=lambda *_: None)
            tuning = json.loads((folder / "tuning.json").read_text())
            found[workers] = (tuning["found"], tuning["budgets"]["faster_rcnn"])  # best trials and epochs spent
    finally:
        torch.set_num_threads(threads)
    assert found[1] == found[2]
    assert set(found[2][1]) == {"baseline", "hinton", "at"} and found[2][1]["at"]["epochs"] >= 2


def test_a_trial_killed_before_its_first_heartbeat_is_failed_and_retried(tmp_path):
    """Optuna's stale check skips a RUNNING trial without any heartbeat (its worker died right after creating it);
    left alone it would stay RUNNING and count against the budget for ever."""
    storage = open_storage(None, tmp_path, heartbeat_s=1, grace_s=1)
    study = optuna.create_study(study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    orphan = study.ask()  # RUNNING, and no heartbeat: the trial of a worker killed at once
    orphan.suggest_float("x", 0, 1)
    alive = study.ask()
    storage.record_heartbeat(alive._trial_id)  # a live worker's trial
    assert fail_orphans(study, storage, grace_s=60) == []  # too recent to judge
    time.sleep(1.2)
    assert fail_orphans(study, storage, grace_s=1) == [orphan.number]
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL and states[alive.number] == optuna.trial.TrialState.RUNNING
    [retry] = [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") == orphan.number]
    assert retry.state == optuna.trial.TrialState.WAITING and retry.params == orphan.params and "x" in retry.params


@pytest.mark.parametrize("method", ["hinton", "fitnets", "at", "nst", "pkd", "cwd", "fgfi", "hinton+at"])
def test_first_trial_of_a_search_is_the_methods_default(method):
    """The enqueued default is a point of the space: every searched parameter fixed, to the profile's values."""
    from study.defaults import load_profile
    from study.plan import detector_config
    from study.search import default_params, suggest
    distill = detector_config(load_profile("default"), "faster_rcnn")["distill"]
    study = optuna.create_study()
    study.enqueue_trial(default_params(method, distill))
    trial = study.ask()
    drawn = suggest(trial, method)
    assert set(trial.params) == set(default_params(method, distill))  # nothing sampled, nothing left over
    for part, values in drawn.items():
        expected = {k: v for k, v in distill[part].items() if k in values}
        assert values == expected  # e.g. hinton {T 4, weight 1}; pkd {balance 0.5, taps p3-p5}


def test_a_method_whose_default_stays_best_gets_no_second_row():
    """Where the search's best trial is the default it tried first, ``method@tuned`` would train the default row
    again (same settings, same seeds): no such row is planned."""
    from study.defaults import load_profile
    from study.tuned import tuned_profile
    profile = load_profile("tuned")
    every = {"faster_rcnn": {m + "@tuned": {} for m in ("hinton", "fitnets", "at", "pkd")}}
    assert tuned_profile(profile, every)["methods"][-4:] == ["hinton@tuned", "fitnets@tuned", "at@tuned",
                                                             "pkd@tuned"]
    found = {"faster_rcnn": {"baseline": {}, "at@tuned": {}}}  # hinton, fitnets and pkd: the default won
    assert tuned_profile(profile, found)["methods"] == ["baseline", "hinton", "fitnets", "at", "pkd", "at@tuned"]


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_no_trial_is_pruned_before_min_epochs(pruner):
    """Early epochs' validation mAP is noise near 0: a trial at 0.0 next to trials at 1.0 survives epochs 1-2 and is
    pruned from epoch 3 (``min_epochs``) on, at a rung of the pruner's (3 or 9 for Hyperband)."""
    from study.search import make_pruner
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner, 3),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        good = study.ask()
        for step in range(1, 10):
            good.report(1.0, step)
            assert not good.should_prune()  # (as training does each epoch: Hyperband records its rungs here)
        study.tell(good, 1.0)
    bad = study.ask()
    pruned_at = None
    for step in range(1, 10):
        bad.report(0.0, step)
        if bad.should_prune():
            pruned_at = step
            break
    assert pruned_at in ((3,) if pruner == "median" else (3, 9))


def test_a_tuned_plan_loads_its_teacher_and_a_search_worker_times_nothing(smoke_with_teacher, tmp_path, monkeypatch):
    """A tuned study's profile names ``method@tuned`` rows that only its searches can plan: a finished run (the
    teacher a distilled row reads) is rebuilt from the spec it ran with, not by re-planning. And a search's
    worker, which makes sure the teacher exists, does not time latency (the other workers are training)."""
    profile, _, out = smoke_with_teacher
    tuned_plan = dict(profile, detectors=["faster_rcnn"], methods=["baseline", "hinton", "hinton@tuned"])
    study = Study(tuned_plan, out, progress=False, log=lambda *_: None)
    teacher = next(r["run_id"] for r in read_runs(out / "runs.csv")
                   if r["method"] == "teacher" and r["detector"] == "faster_rcnn")
    with pytest.raises(ValueError, match="has no finished search"):  # what re-planning would have hit
        plan_runs(tuned_plan, "bccd")
    assert isinstance(study.load_finished(teacher), torch.nn.Module)
    monkeypatch.setattr(Study, "measure_deferred_latency", lambda self: pytest.fail("timed latency in a worker"))
    assert Study(profile, out, progress=False, log=lambda *_: None).ensure_teacher() == teacher
