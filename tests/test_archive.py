"""The archive's claim (results/archive/INDEX.md): each archived profile, rerun with the current code, plans exactly
runs its folder committed, so a rerun skips them all; the exceptions are listed there with their reasons."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from study.defaults import load_profile
from study.plan import plan_runs

ARCHIVE = Path(__file__).resolve().parent.parent / "results" / "archive"
# as INDEX.md lists them: a setting whose code is gone; rows never kept; rows planned by `study tuned`
EXCEPTIONS = {"rebalance/profile.yaml", "fixed24/compress.yaml", "tuned/profile.yaml"}
PROFILES = sorted(str(p.relative_to(ARCHIVE)) for p in ARCHIVE.glob("*/*.yaml"))


@pytest.mark.parametrize("name", [p for p in PROFILES if p not in EXCEPTIONS])
def test_an_archived_profile_plans_only_runs_its_folder_committed(name):
    planned = {s.run_id for s in plan_runs(load_profile(str(ARCHIVE / name)), "bccd")}
    with open(ARCHIVE / name.split("/")[0] / "runs.csv", newline="") as f:
        committed = {row["run_id"] for row in csv.DictReader(f)}
    assert planned and planned <= committed, sorted(planned - committed)


def test_every_exception_is_an_archived_profile():
    assert EXCEPTIONS <= set(PROFILES)
