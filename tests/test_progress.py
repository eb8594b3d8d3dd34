"""Study progress: the time-left estimate from measured epoch times, against hand-worked sums."""
from __future__ import annotations

import json

import pytest

from study.plan import RunSpec
from study.progress import Progress, rates, seconds_left


def spec(backbone, epochs, teacher=False, detector="faster_rcnn", compress=None):
    hp = {"role": {"epochs": epochs}} | ({"teacher_run": "t"} if teacher else {}) | (
        {"compress": compress} if compress else {})
    return RunSpec(f"{backbone}-{epochs}-{teacher}-{compress}", "student", backbone, "m", 0, hp, detector)


def row(s: RunSpec, train_s: float) -> dict:
    return {"run_id": s.run_id, "status": "ok", "detector": s.detector, "backbone": s.backbone,
            "hparams": json.dumps(s.hparams), "train_s": str(train_s)}


def test_rates_and_time_left_by_hand():
    done = [row(spec("shallow", 10), 50.0), row(spec("shallow", 20), 120.0), row(spec("shallow", 10, True), 90.0)]
    measured = rates(done)
    assert measured == {("faster_rcnn", "shallow", False): pytest.approx((5 + 6) / 2),
                        ("faster_rcnn", "shallow", True): pytest.approx(9.0)}
    todo = [spec("shallow", 64), spec("shallow", 64, True), spec("resnet50", 8, True),
            spec("resnet50", 40, compress={"finetune_epochs": 4})]
    # 64 x 5.5 + 64 x 9 + 8 x 9 (a distilled kind not yet run: its detector's distilled rate) + 4 x 5.5 (plain)
    assert seconds_left(todo, measured, 2) == pytest.approx((352 + 576 + 72 + 22) / 2)
    assert seconds_left([spec("yolov8p", 30, detector="yolo")], measured, 1) is None  # no YOLO rate yet


def test_a_distilled_kind_not_yet_run_costs_its_plain_rate_times_the_distilled_ratio():
    from study.progress import DISTILLED_OVER_PLAIN
    hinton = spec("shallow", 64, True)
    measured = rates([row(spec("resnet50", 40), 1200.0), row(spec("shallow", 64), 320.0)])  # 30 and 5 s an epoch
    # no distilled run yet: 64 epochs x 5 s x the prior 2.0 (the teacher's 30 s an epoch is not averaged in)
    assert DISTILLED_OVER_PLAIN == 2.0 and seconds_left([hinton], measured, 1) == pytest.approx(640.0)
    measured |= rates([row(spec("shallow-s", 10), 20.0), row(spec("shallow-s", 10, True), 30.0)])  # 2 and 3 s
    assert seconds_left([hinton], measured, 1) == pytest.approx(64 * 5 * 1.5)  # the ratio measured on shallow-s


def test_progress_logs_one_line_per_finished_run():
    lines = []
    todo = [spec("shallow", 10), spec("shallow", 20)]
    p = Progress(todo, total=5, done_before=3, workers=1, log=lines.append)
    p.finished(row(todo[0], 50.0))
    p.finished(row(todo[1], 100.0))
    assert lines[0].startswith("progress: 4 of 5 runs, ") and lines[0].endswith(
        "about 2 min left (from the epoch times measured so far)")  # 20 epochs x 5 s = 100 s
    assert lines[1].startswith("progress: 5 of 5 runs, ") and lines[1].endswith(", done")


def test_a_resumed_study_estimates_from_the_rows_of_its_earlier_executions():
    """The teacher (resnet50, 30 s an epoch) finished in an earlier execution: after this execution's first
    student, the pruned teacher's fine-tune left costs the teacher's rate, not the student's."""
    teacher, student = spec("resnet50", 40), spec("shallow", 10)
    pruned = spec("resnet50", 0, compress={"finetune_epochs": 8})
    lines = []
    p = Progress([student, pruned], total=3, done_before=1, workers=1, log=lines.append,
                 earlier=[row(teacher, 1200.0), row(student, 999.0)])  # (a row still to do is not "earlier")
    p.finished(row(student, 50.0))
    assert lines[0].endswith("about 4 min left (from the epoch times measured so far)")  # 8 epochs x 30 s = 240 s
    alone = Progress([student, pruned], total=3, done_before=1, workers=1, log=lines.append)
    alone.finished(row(student, 50.0))
    assert lines[1].endswith("about 1 min left (from the epoch times measured so far)")  # 8 x 5 s: the old guess
