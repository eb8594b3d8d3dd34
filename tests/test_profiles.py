"""Profiles: every shipped one loads, and an unknown key at any depth is a one-line error naming its path."""
from __future__ import annotations

import pytest

from study.defaults import PROFILE_DIR, load_profile


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
def test_shipped_profiles_load(name):
    assert load_profile(name)["name"] == name


@pytest.mark.parametrize("text, path", [("trian: {lr: 0.1}\n", "trian"),
                                        ("train: {val_evry: 2}\n", "train.val_evry"),
                                        ("yolo: {train: {lr: 0.02}, studnt: {epochs: 3}}\n", "yolo.studnt"),
                                        ("execution: {workers: 2, thread_per_worker: 1}\n",
                                         "execution.thread_per_worker")])
def test_unknown_key_at_any_depth_is_named(tmp_path, text, path):
    profile = tmp_path / "p.yaml"
    profile.write_text(text)
    with pytest.raises(ValueError, match=f"p.yaml: unknown key '{path}'"):
        load_profile(str(profile))


def test_open_sections_take_their_own_keys(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("distill: {pkd: {balance: 1.0, taps: [p4]}}\nteacher: {backbone: resnet18, epochs: 3}\n")
    assert load_profile(str(profile))["distill"]["pkd"]["balance"] == 1.0
