"""The frontier's analyses (study.frontier) on rows built by hand: classes, paired differences with Holm, the
dose-response slope against a hand-worked regression, the best model at each budget, transfer verdicts."""
from __future__ import annotations

import json

import pytest

from study.frontier import (best_at_budgets, differences, dose_response, method_class, ols, points_of,
                            transfer_verdicts)


def row(backbone, method, seed, map_, val=0.5, params=1e6, teacher=None, source=None, detector="faster_rcnn",
        compress=None):
    hp = {k: v for k, v in (("teacher_run", teacher), ("source_run", source)) if v}
    if source:
        hp["compress"] = {"x": 1} if compress is None else compress
    return {"run_id": f"{detector}-{backbone}-{method}-s{seed}", "detector": detector, "backbone": backbone,
            "method": method, "seed": str(seed), "status": "ok", "map": str(map_), "val_map": str(val),
            "params": str(params), "gflops": "1", "size_mb": "1", "cpu_ms": "", "hparams": json.dumps(hp)}


@pytest.mark.parametrize("method, role, expected", [
    ("baseline", "student", "student alone"), ("hinton", "student", "Hinton KD"), ("pkd", "student",
     "feature KD (detection)"), ("ls", "student", "label smoothing (control)"), ("hinton@self", "student",
     "self-distillation (control)"), ("prune-50+kd", "compressed", "pruned teacher + KD"),
    ("prune-50", "compressed", "pruned teacher"), ("int8", "compressed", "int8"), ("teacher", "teacher", "teacher"),
    ("int8-qat", "compressed", "int8 QAT"), ("int8-qat+kd", "compressed", "int8 QAT + KD")])
def test_method_classes(method, role, expected):
    assert method_class(method, role) == expected


def test_ols_matches_a_hand_worked_regression():
    # y = 1 + 2x at x = 0, 1, 2 plus residuals (+1, -2, +1), so y = (2, 1, 6): x̄ = 1, ȳ = 3, Σ(x−x̄)² = 2,
    # slope = ((-1)(2-3) + 0 + (1)(6-3))/2 = 2, intercept = 3 − 2 = 1; RSS = 1 + 4 + 1 = 6,
    # se = √(6 / 1 / 2) = √3; t(0.975, 1 df) = 12.706
    fit = ols([{"gap": 0, "gain": 2}, {"gap": 1, "gain": 1}, {"gap": 2, "gain": 6}])
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0)
    assert fit["high"] - fit["slope"] == pytest.approx(12.7062 * 3 ** 0.5, rel=1e-4)
    assert ols([{"gap": 1, "gain": 1}] * 3) is None  # one gap: no slope


def study_rows():
    t = {s: row("resnet50", "teacher", s, 0.50, val=v, params=28e6) for s, v in ((0, 0.55), (1, 0.57))}
    rows = list(t.values())
    for backbone, base_val, base, gain in (("small", 0.45, 0.40, 0.03), ("mid", 0.52, 0.48, 0.01)):
        for s in range(3):
            rows.append(row(backbone, "baseline", s, base + 0.001 * s, val=base_val, params=1e5 if backbone ==
                            "small" else 1e6))
            rows.append(row(backbone, "hinton", s, base + gain + 0.002 * s, teacher=t[s % 2]["run_id"],
                            params=1e5 if backbone == "small" else 1e6))
    rows += [row("mid", "ls", s, 0.485 + 0.001 * s, params=1e6) for s in range(3)]
    rows += [row("resnet50", "prune-50", s, 0.47 + 0.01 * s, params=1e7, source=t[0]["run_id"]) for s in range(2)]
    return rows


def test_differences_pair_by_seed_and_compressed_models_against_their_source():
    rows = study_rows()
    points = {(p.group.backbone, p.group.method): p for p in points_of(rows)}
    differences(list(points.values()), rows)
    small = points[("small", "hinton")].diffs["baseline"]
    assert small["n"] == 3 and small["mean"] == pytest.approx(0.03 + 0.001)  # (0.002 s − 0.001 s) averages 0.001
    assert set(points[("mid", "hinton")].diffs) == {"baseline", "ls"}
    assert points[("mid", "hinton")].diffs["ls"]["mean"] == pytest.approx(0.48 + 0.01 - 0.485 + 0.001)
    pruned = points[("resnet50", "prune-50")].diffs["source"]
    assert pruned["mean"] == pytest.approx((0.47 + 0.48) / 2 - 0.50) and pruned["n"] == 2
    # Holm ran over the student comparisons of the detector: 2 sizes x hinton + ls + hinton-vs-ls
    assert small["holm_family"] == 4


def test_fp16_of_a_student_is_compared_with_its_source_not_counted_as_a_student_method():
    rows = study_rows()
    source = next(r for r in rows if r["backbone"] == "mid" and r["method"] == "hinton" and r["seed"] == "0")
    rows.append(row("mid", "fp16", 0, float(source["map"]) - 0.002, source=source["run_id"], compress={}))
    points = {(p.group.backbone, p.group.method): p for p in points_of(rows)}
    differences(list(points.values()), rows)
    half = points[("mid", "fp16")]
    assert half.role == "compressed" and set(half.diffs) == {"source"}
    assert half.diffs["source"]["mean"] == pytest.approx(-0.002)
    assert points[("small", "hinton")].diffs["baseline"]["holm_family"] == 4  # fp16 is not in the student family


def test_quantization_aware_rows_against_post_training_int8_and_plain_qat_of_the_same_source_and_seed():
    teacher = row("resnet50", "teacher", 0, 0.500, params=28e6)
    source = teacher["run_id"]
    rows = [teacher, row("resnet50", "int8", 0, 0.490, params=28e6, source=source)]
    rows += [row("resnet50", "int8-qat", s, m, params=28e6, source=source) for s, m in ((0, 0.494), (1, 0.496))]
    rows += [row("resnet50", "int8-qat+kd", s, m, params=28e6, source=source) for s, m in ((0, 0.499), (1, 0.497))]
    points = {p.group.method: p for p in points_of(rows)}
    differences(list(points.values()), rows)
    kd = points["int8-qat+kd"].diffs
    assert set(kd) == {"source", "int8", "int8-qat"} and set(points["int8-qat"].diffs) == {"source", "int8"}
    assert kd["source"]["mean"] == pytest.approx((-0.001 - 0.003) / 2)  # 0.499 − 0.500, 0.497 − 0.500
    assert kd["int8"]["mean"] == pytest.approx((0.009 + 0.007) / 2) and kd["int8"]["n"] == 2  # both against 0.490
    assert kd["int8-qat"]["mean"] == pytest.approx((0.005 + 0.001) / 2)  # seed 0: 0.499 − 0.494; seed 1: 0.497 − 0.496
    assert kd["int8-qat"]["pairs"] == [(rows[4]["run_id"], rows[2]["run_id"]), (rows[5]["run_id"], rows[3]["run_id"])]


def test_dose_response_uses_the_validation_gap_and_the_test_gain_of_each_cell():
    rows = study_rows()
    points = points_of(rows)
    differences(points, rows)
    dose = dose_response(points, rows)
    cells = {(c["backbone"], c["seed"]): c for c in dose["cells"]}
    assert cells[("small", 0)]["gap"] == pytest.approx((0.55 - 0.45) * 100)  # teacher 0's val − small's base val
    assert cells[("small", 1)]["gap"] == pytest.approx((0.57 - 0.45) * 100)
    assert cells[("mid", 2)]["gain"] == pytest.approx((0.01 + 0.002) * 100)
    assert dose["n"] == 6 and dose["slope"] > 0  # the larger gap carries the larger gain


def test_best_at_each_budget_and_transfer_calls():
    rows = study_rows()
    points = points_of(rows)
    differences(points, rows)
    best = {round(b["budget"], 2): b["best"].label for b in best_at_budgets(points)}
    assert best == {0.1: "small hinton", 1.0: "mid hinton", 10.0: "mid hinton", 28.0: "resnet50 teacher"}
    calls = {t["point"].label: t["call"] for t in transfer_verdicts(points)}
    # mid hinton beats baseline (+1.0 to +1.2 pts) and ls (+0.5 to +0.7) on every seed; self-distillation is absent
    assert calls == {"mid hinton": "beats ls; hinton@self not measured here"}


def test_best_table_says_n_where_a_row_has_no_interval():
    from study.frontier_report import best_table

    rows = [row("mid", "baseline", s, 0.48 + 0.01 * s) for s in range(3)] + [row("mid", "hinton", 0, 0.52)]
    points = points_of(rows)
    table = best_table(points, "params")
    # the best (hinton, one run) carries its n; the runner-up (baseline, 3 runs: mean 0.49) its t-interval
    assert "| mid hinton | 0.520 (n = 1) | mid baseline | 0.490 [" in table


def test_best_table_merges_budgets_where_nothing_changes():
    from study.frontier_report import best_table

    rows = study_rows()
    points = points_of(rows)
    differences(points, rows)
    table = best_table(points, "params")
    # budgets 1 and 10 M have the same best (mid hinton) and runner-up (mid ls): one row; 0.1 and 28 their own
    assert "| faster_rcnn | ≤ 1 to ≤ 10 | mid hinton | 0.492 [" in table
    assert table.count("| mid hinton | 0.492 [0.487, 0.497] | mid ls") == 1 and "| ≤ 0.1 | small hinton |" in table and "| ≤ 28 |" in table


def test_onnx_file_size_is_a_budget_axis_where_the_latency_pass_ran_in_onnx_runtime(tmp_path):
    """int8 moves on the ONNX file's axis (a compact graph) more than on the saved programs' (each carries its
    serialized graph): the best within 0.5 MB of ONNX file is the int8 model, on disk it is not."""
    from study.frontier_report import best_table, write_frontier

    source = row("mid", "hinton", 0, 0.50) | {"size_mb": "1.5", "onnx_mb": "1.5"}
    int8 = row("mid", "int8", 0, 0.49, source=source["run_id"]) | {"size_mb": "1.4", "onnx_mb": "0.5"}
    base = [row("tiny", "baseline", s, 0.40 + 0.01 * s) | {"size_mb": "0.5", "onnx_mb": "0.5"} for s in range(2)]
    points = points_of([source, int8, *base])
    by_onnx = {round(b["budget"], 2): b["best"].label for b in best_at_budgets(points, "onnx_mb")}
    by_disk = {round(b["budget"], 2): b["best"].label for b in best_at_budgets(points, "size_mb")}
    assert by_onnx[0.5] == "mid int8" and by_disk[0.5] == "tiny baseline"
    assert "| ≤ 0.5 | mid int8 | 0.490 (n = 1) | tiny baseline | 0.405 [" in best_table(points, "onnx_mb")
    import csv
    with open(tmp_path / "runs.csv", "w", newline="") as f:
        keys = sorted({k for r in (source, int8, *base) for k in r})
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows([source, int8, *base])
    text = write_frontier(tmp_path / "runs.csv", tmp_path, n_boot=10).read_text()
    assert "By the size of the ONNX file that ONNX Runtime loads" in text and (tmp_path / "frontier_onnx_size.png").is_file()
