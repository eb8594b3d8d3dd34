"""The project's commands. `nox -s study` runs the default study; `nox -s tests` runs the tests.

Each session installs the project (and its pinned torch/torchvision) into its own virtualenv; the virtualenvs are
reused between calls, so only the first call pays for the install.
"""
import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# Nothing here may reach the network: ultralytics and matplotlib are told to stay offline and quiet.
OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


def install(session: nox.Session, extras: str = "") -> None:
    session.install("-e", f".{extras}")


def without_network() -> list[str]:
    """A command prefix that runs the rest in a fresh network namespace with only loopback up (root and
    util-linux's unshare needed); empty where that is not possible (the tests' own socket guard still applies)."""
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        return ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    return []


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Run the test suite (fast: tiny models, tiny images, the bundled data), with networking cut off: two pytest
    processes at once (scripts/test_shards.py), or one plain pytest with the arguments given (`nox -s tests -- -k x`)."""
    install(session, "[test]")
    command = [os.path.join(session.bin, "python"), "scripts/test_shards.py", *session.posargs]
    prefix = without_network()
    if prefix:
        session.log("tests run in a network namespace with only loopback: nothing can reach the network")
    session.run(*prefix, *command, env=OFFLINE_ENV, external=True)


@nox.session(python="3.11")
def study(session: nox.Session) -> None:
    """Run the default study on the bundled BCCD data into results/default (finished runs are skipped)."""
    install(session)
    profile = os.environ.get("STUDY_PROFILE", "default")
    session.run("python", "-m", "study", "run", "--profile", profile, "--out", f"results/{profile}",
                "--no-progress", *session.posargs, env=OFFLINE_ENV)


@nox.session(python="3.11")
def search(session: nox.Session) -> None:
    """Optuna search, e.g. `nox -s search -- --method hinton --n-trials 20` (arguments go to `study search`)."""
    install(session)
    session.run("python", "-m", "study", "search", *session.posargs, env=OFFLINE_ENV)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmark the harness against torchvision's stock loop and ultralytics' trainer: results/bench/bench.md.
    Profile `full`: every family and method the study has, trained as `default` (`default` itself has no YOLO)."""
    install(session)
    session.run("python", "-m", "study", "bench", "--profile", "full", "--out", "results/bench", *session.posargs,
                env=OFFLINE_ENV)


@nox.session(python="3.11")
def parity(session: nox.Session) -> None:
    """Plain YOLOv8n by this harness vs ultralytics' own trainer, same settings: results/parity/parity.md."""
    install(session)
    session.run("python", "-m", "study", "parity", "--out", "results/parity", *session.posargs, env=OFFLINE_ENV)
