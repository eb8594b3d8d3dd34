"""Size-grid planning: student sizes, their rows and seeds, self-distillation teachers, label smoothing without a
teacher, pruning levels and compressed students (study.plan), checked against hand-listed plans."""
from __future__ import annotations

import pytest

from study.defaults import _merge, DEFAULTS
from study.plan import plan_runs, student_sizes


def profile(**override) -> dict:
    return _merge(DEFAULTS, override) | {"name": "grid"}


GRID = profile(seeds=[0, 1, 2, 3, 4], teacher_seeds=[0, 1], methods=["baseline", "hinton", "ls", "hinton@self"],
               faster_rcnn={"sizes": [{"student": {"backbone": "shallow-s", "fpn_channels": 32, "roi_dim": 64},
                                       "methods": ["baseline", "hinton"], "seeds": [0, 1, 2]}],
                            "compress": ["prune-30", "prune-30+kd", "int8"],
                            "compress_students": {"methods": ["int8", "fp16"], "source": "hinton"},
                            "compress_seeds": [0, 1]},
               compression={"prune-30": {"criterion": "l1", "flops_reduction": 0.3, "global": False,
                                         "finetune_epochs": 2, "finetune_lr": 0.005},
                            "prune-30+kd": {"criterion": "l1", "flops_reduction": 0.3, "global": False,
                                            "finetune_epochs": 2, "finetune_lr": 0.005,
                                            "kd": {"hinton": {"weight": 1.0, "temperature": 4.0}}},
                            "int8": DEFAULTS["compression"]["int8"], "fp16": {}})


def rows(plan):
    return [(s.role, s.backbone, s.method, s.seed) for s in plan]


def test_sizes_inherit_the_first_student_and_override_its_keys():
    sizes = student_sizes(GRID, "faster_rcnn")
    assert [s["student"]["backbone"] for s in sizes] == ["shallow", "shallow-s"]
    assert sizes[1]["student"] == DEFAULTS["faster_rcnn"]["student"] | {"backbone": "shallow-s", "fpn_channels": 32,
                                                                         "roi_dim": 64}
    assert sizes[1]["seeds"] == [0, 1, 2] and sizes[0]["seeds"] == [0, 1, 2, 3, 4]


def test_the_grid_plans_every_row_once_in_order():
    plan = plan_runs(GRID, "bccd")
    expected = ([("teacher", "resnet50", "teacher", t) for t in (0, 1)] +
                [("teacher", "shallow", "self-teacher", s) for s in (100, 101)] +
                [("student", "shallow", m, s) for m in ("baseline", "hinton", "ls", "hinton@self") for s in range(5)] +
                [("student", "shallow-s", m, s) for m in ("baseline", "hinton") for s in range(3)] +
                [("compressed", "resnet50", "prune-30", s) for s in (0, 1)] +
                [("compressed", "resnet50", "prune-30+kd", s) for s in (0, 1)] +
                [("compressed", "resnet50", "int8", 0)] +
                [("compressed", b, m, 0) for b in ("shallow", "shallow-s") for m in ("int8", "fp16")])
    assert rows(plan) == expected
    assert len({s.run_id for s in plan}) == len(plan)


def test_teachers_alternate_over_each_sizes_own_seeds_and_self_distillation_reads_its_own_size():
    plan = {(s.backbone, s.method, s.seed): s for s in plan_runs(GRID, "bccd")}
    teacher = {t: plan[("resnet50", "teacher", t)].run_id for t in (0, 1)}
    selfs = {t: plan[("shallow", "self-teacher", t)].run_id for t in (100, 101)}
    assert [plan[("shallow-s", "hinton", s)].hparams["teacher_run"] for s in range(3)] == \
        [teacher[0], teacher[1], teacher[0]]
    assert [plan[("shallow", "hinton@self", s)].hparams["teacher_run"] for s in range(5)] == \
        [selfs[100], selfs[101], selfs[100], selfs[101], selfs[100]]
    # a self-teacher is the student of its size trained alone: same hparams as that size's baseline
    assert plan[("shallow", "self-teacher", 100)].hparams == plan[("shallow", "baseline", 0)].hparams
    assert plan[("shallow", "hinton@self", 0)].hparams["distill"] == {"hinton": DEFAULTS["distill"]["hinton"]}


def test_label_smoothing_reads_no_teacher():
    plan = {(s.backbone, s.method, s.seed): s for s in plan_runs(GRID, "bccd")}
    ls = plan[("shallow", "ls", 0)]
    assert "teacher_run" not in ls.hparams and ls.hparams["distill"] == {"ls": DEFAULTS["distill"]["ls"]}
    assert ls.reads() == []


def test_compressed_students_read_their_sizes_first_seed_of_the_source_row():
    plan = {(s.backbone, s.method, s.seed): s for s in plan_runs(GRID, "bccd")}
    for backbone in ("shallow", "shallow-s"):
        assert plan[(backbone, "int8", 0)].hparams["source_run"] == plan[(backbone, "hinton", 0)].run_id
        assert plan[(backbone, "int8", 0)].hparams["role"]["backbone"] == backbone
    assert plan[("resnet50", "prune-30+kd", 1)].hparams["teacher_run"] == plan[("resnet50", "teacher", 0)].run_id


def test_a_grid_without_sizes_plans_what_it_planned_before():
    plain = profile()
    assert rows(plan_runs(plain, "bccd")) == (
        [("teacher", "resnet50", "teacher", t) for t in (0, 1)] +
        [("student", "shallow", m, s) for m in ("baseline", "baseline-long", "hinton") for s in range(5)])


@pytest.mark.parametrize("sizes, message", [
    ([{"student": {"backbone": "shallow"}}], "share the name"),
    ([{"studnt": {"backbone": "shallow-s"}}], "unknown key 'studnt'")])
def test_bad_sizes_are_named(sizes, message):
    with pytest.raises(ValueError, match=message):
        plan_runs(profile(faster_rcnn={"sizes": sizes}), "bccd")
