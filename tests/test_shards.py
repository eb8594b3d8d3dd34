"""The test runner's split of the test files into two processes (scripts/test_shards.py)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("test_shards", ROOT / "scripts" / "test_shards.py")
shards = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shards)


def test_longest_file_first_to_the_lighter_process():
    seconds = {"a": 10.0, "b": 7.0, "c": 5.0, "d": 3.0}
    # a -> 1 (10); b -> 2 (7); c -> 2 (12); d -> 1 (13)
    assert shards.split(["d", "c", "b", "a"], seconds, 2) == [["a", "d"], ["b", "c"]]
    # an unmeasured file counts UNMEASURED_S (5): a -> 1, e -> 2 (5), b -> 2 (12)
    assert shards.split(["a", "b", "e"], seconds, 2) == [["a"], ["b", "e"]]
    assert shards.split(["a"], seconds, 2) == [["a"]]  # no empty process


def test_every_measured_duration_names_a_test_file():
    names = json.loads((ROOT / "tests" / "durations.json").read_text())
    assert names and all((ROOT / name).is_file() for name in names)
