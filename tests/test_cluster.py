"""The Ray executor on a real two-node Ray cluster on loopback: the same rows as the local executor, and a node
killed while it holds a run loses nothing (the run is retried once elsewhere, or recorded failed)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from study.defaults import _merge, load_profile
from study.plan import plan_runs
from study.runner import Study
from study.store import read_runs

ray = pytest.importorskip("ray", reason="ray is a test dependency (pyproject's test extra)")
RAY = str(Path(sys.executable).parent / "ray")
REPO = Path(__file__).resolve().parent.parent
METRICS = ("map", "map50", "val_map", "best_epoch", "params", "gflops")


def _profile(**execution) -> dict:
    return _merge(load_profile("smoke"), {"detectors": ["faster_rcnn"], "methods": ["baseline", "hinton"],
                                          "seeds": [0, 1], "execution": {"threads_per_worker": 1, **execution}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(temp: Path, *args: str) -> subprocess.Popen:
    """``ray start ... --block`` in its own process group (so that killing the group kills the node)."""
    # Explicit auth mode: Ray 2.60's `ray start` turns token auth on whenever ~/.ray/auth_token exists (any earlier
    # local ray.init() writes one), while a driver given an address does not, so the test would hang on a machine
    # that once ran Ray locally. On a loopback-only network namespace no one else can reach these nodes.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                             "--object-store-memory", str(80 * 2**20), "--temp-dir", str(temp),
                             "--disable-usage-stats", *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@pytest.fixture
def two_nodes(tmp_path):
    """A Ray head and a second node (1 CPU each) on loopback; every Ray process is stopped afterwards."""
    port, temp = _free_port(), Path("/tmp") / f"ray-test-{os.getpid()}"  # short: Ray's socket paths are limited
    nodes = []
    try:
        nodes.append(_ray_node(temp, "--head", "--port", str(port), "--include-dashboard", "false"))
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:  # the head is up once a driver can connect
            try:
                ray.init(address=address, logging_level="error", log_to_driver=False)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        nodes.append(_ray_node(temp, "--address", address))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.time() < deadline, "the second Ray node did not join"
            time.sleep(0.5)
        second = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"])
        yield address, nodes[1], second
    finally:
        ray.shutdown()
        for node in nodes:
            _kill(node)
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)  # whatever is left of them


def test_ray_executor_matches_local_and_survives_a_killed_node(tmp_path, two_nodes):
    address, second_node, second_id = two_nodes
    local_rows = {r["run_id"]: r for r in read_runs(
        Study(_profile(workers=2), tmp_path / "local", progress=False, log=lambda *_: None).run())}

    lines: list[str] = []
    profile = _profile(executor="ray", address=address, workers="auto")
    study = Study(profile, tmp_path / "ray", progress=False, log=lines.append)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (study.run(), done.set()), daemon=True)
    thread.start()
    deadline = time.time() + 300
    while not any(line.endswith(f"on node {second_id[:12]}") for line in list(lines)):  # kill it while it holds a run
        assert time.time() < deadline and not done.is_set(), f"no run was placed on the second node: {lines}"
        time.sleep(0.05)
    _kill(second_node)  # at once: a smoke run lasts seconds
    thread.join(timeout=600)
    assert done.is_set(), lines

    plan = plan_runs(profile, study.data().name)
    rows = {r["run_id"]: r for r in read_runs(tmp_path / "ray" / "runs.csv")}
    assert len(read_runs(tmp_path / "ray" / "runs.csv")) == len(plan) and set(rows) == {s.run_id for s in plan}
    [execution] = read_runs(tmp_path / "ray" / "executions.csv")
    assert execution["executor"] == "ray" and execution["workers"] == "2"
    died = [line.split()[1].rstrip(":") for line in lines if "worker died" in line]
    assert died and all(f"on node {second_id[:12]}" in line for line in lines if "worker died" in line), lines
    for run_id in died:  # retried once on the head's worker, or recorded failed
        if rows[run_id]["status"] == "ok":
            assert rows[run_id]["error"].startswith("ok on retry after: WorkerDied"), rows[run_id]["error"]
            assert run_id in execution["retried"].split()
        else:
            assert "WorkerDied" in rows[run_id]["error"]
    assert all(r["status"] == "ok" for r in rows.values() if r["run_id"] not in died)
    for r in rows.values():  # same seeds, one thread each: the same numbers as the local executor
        if r["status"] == "ok":
            for key in METRICS:
                assert float(r[key]) == pytest.approx(float(local_rows[r["run_id"]][key]), abs=1e-6), (r["run_id"], key)
