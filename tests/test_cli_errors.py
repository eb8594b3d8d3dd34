"""Bad command-line inputs end in one line on stderr and a non-zero exit, before anything trains."""
from __future__ import annotations

import socket
import time

import torch

from study.__main__ import main


def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    if torch.cuda.is_available():
        return  # nothing to refuse on a machine with a GPU
    assert main(["run", "--profile", "smoke", "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device cuda: this machine has no CUDA GPU that torch can use (use cpu)"]


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
