"""Run the test suite as two pytest processes at once, each on half the cores, the test files split between them by
their measured durations (tests/durations.json): the suite is mostly one-core work, so two processes use a 2-core
machine's second core (docs/decisions.md, "test suite in two processes").

Not pytest-xdist: its workers are threaded, and a DataLoader worker forked from one hung (the benchmark's
torchvision loop). Each process here is a plain pytest. With arguments (a file, ``-k ...``) it is one plain pytest.

    python scripts/test_shards.py            # the whole suite, two processes
    python scripts/test_shards.py -k bench   # one pytest, as given
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / "tests" / "durations.json"
UNMEASURED_S = 5.0  # a test file not yet in durations.json


def split(files: list[str], seconds: dict[str, float], shards: int) -> list[list[str]]:
    """``files`` in ``shards`` groups of near-equal total duration: longest first, each to the lightest group."""
    groups, load = [[] for _ in range(shards)], [0.0] * shards
    for name in sorted(files, key=lambda f: (-seconds.get(f, UNMEASURED_S), f)):
        lightest = load.index(min(load))
        groups[lightest].append(name)
        load[lightest] += seconds.get(name, UNMEASURED_S)
    return [sorted(g) for g in groups if g]


def _relay(index: int, stream) -> None:
    for line in stream:
        sys.stdout.write(f"[{index}] {line}")
        sys.stdout.flush()


def main(args: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args or cores < 2:
        return subprocess.call(pytest + args, cwd=ROOT)
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))
    groups = split(files, json.loads(DURATIONS.read_text()), 2)
    env = dict(os.environ, OMP_NUM_THREADS=str(cores // len(groups)))
    procs, relays = [], []
    for i, group in enumerate(groups, 1):
        print(f"[{i}] pytest {' '.join(group)}", flush=True)
        # no cache plugin: two processes would write .pytest_cache at once
        proc = subprocess.Popen(pytest + ["-p", "no:cacheprovider", *group], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        relay = threading.Thread(target=_relay, args=(i, proc.stdout))
        relay.start()
        procs.append(proc)
        relays.append(relay)
    codes = [proc.wait() for proc in procs]
    for relay in relays:
        relay.join()
    print(f"pytest exit codes: {codes}", flush=True)
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
