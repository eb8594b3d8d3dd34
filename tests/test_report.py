"""Report numbers against hand calculations on a runs.csv written by hand (several methods, seeds, a failed run)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from study.groups import group_runs, pareto_front
from study.report import table_rows, write_report
from study.store import upsert_run

ROOT = Path(__file__).resolve().parent.parent
MAPS = {("resnet50", "teacher"): [0.50], ("shallow", "baseline"): [0.40, 0.42, 0.44],
        ("shallow", "hinton"): [0.43, 0.44, 0.48], ("shallow", "at"): [0.41, 0.40, None]}


@pytest.fixture
def runs_csv(tmp_path):
    path = tmp_path / "runs.csv"
    for (backbone, method), maps in MAPS.items():
        for seed, m in enumerate(maps):
            row = {"run_id": f"{backbone}-{method}-{seed}", "profile": "hand", "dataset": "toy",
                   "detector": "faster_rcnn", "backbone": backbone, "method": method, "hparams": "{}",
                   "seed": seed, "device": "cpu", "train_s": 60}
            if m is None:
                row |= {"status": "failed", "error": "TrainingDiverged: non-finite loss"}
            else:
                params = 28_000_000 if backbone == "resnet50" else 900_000
                row |= {"status": "ok", "error": "", "map": m, "map50": m + 0.3, "params": params,
                        "gflops": params / 1e6 / 3, "size_mb": params * 4 / 1e6, "cpu_ms": params / 1e6 * 2,
                        "per_class_ap": json.dumps({"a": m, "b": m / 2})}
            upsert_run(path, row)
    return path


def rows_by_method(runs_csv):
    from study.store import read_runs
    return {r["method"]: r for r in table_rows(group_runs(read_runs(runs_csv)))}


def test_means_stds_and_deltas_match_hand_calculation(runs_csv):
    rows = rows_by_method(runs_csv)
    assert rows["baseline"]["map"] == pytest.approx(0.42) and rows["baseline"]["map_std"] == pytest.approx(0.02)
    assert rows["hinton"]["map"] == pytest.approx(0.45)
    assert rows["hinton"]["map_std"] == pytest.approx(math.sqrt((0.02**2 + 0.01**2 + 0.03**2) / 2))
    assert rows["hinton"]["delta"] == pytest.approx(3.0)  # mAP points
    assert rows["hinton"]["delta_pct"] == pytest.approx((0.45 / 0.42 - 1) * 100)
    assert rows["hinton"]["exceeds_spread"] is True  # 0.03 > max(0.0265, 0.02)
    assert rows["at"]["map"] == pytest.approx(0.405) and rows["at"]["delta"] == pytest.approx(-1.5)
    assert rows["at"]["exceeds_spread"] is False  # 0.015 < max(0.00707, 0.02): within the seed spread

def test_failed_runs_are_counted_not_dropped(runs_csv):
    rows = rows_by_method(runs_csv)
    assert (rows["at"]["seeds"], rows["at"]["failed"]) == (2, 1)
    assert (rows["hinton"]["seeds"], rows["hinton"]["failed"]) == (3, 0)


def test_paired_confidence_intervals(runs_csv):
    rows = rows_by_method(runs_csv)
    hinton = rows["hinton"]["paired"]  # differences 0.03, 0.02, 0.04: mean 0.03, sd 0.01, t(2) = 4.3026527
    half = 4.3026527 * 0.01 / math.sqrt(3)
    assert hinton["n"] == 3 and hinton["mean"] == pytest.approx(0.03)
    assert (hinton["low"], hinton["high"]) == (pytest.approx(0.03 - half), pytest.approx(0.03 + half))
    assert hinton["significant"]  # uncorrected
    assert hinton["p_adj"] == pytest.approx(2 * (1 - 5.196152 / math.sqrt(2 + 5.196152**2)), rel=1e-5)
    assert hinton["verdict"] == "not significant"  # after Holm over the two rows
    at = rows["at"]["paired"]  # seeds 0, 1 only: differences 0.01, -0.02: mean -0.005, sd 0.02121, t(1) = 12.7062047
    half = 12.7062047 * math.sqrt(((0.01 + 0.005) ** 2 + (-0.02 + 0.005) ** 2) / 1) / math.sqrt(2)
    assert at["n"] == 2 and at["mean"] == pytest.approx(-0.005)
    assert (at["low"], at["high"]) == (pytest.approx(-0.005 - half), pytest.approx(-0.005 + half))
    assert not at["significant"]


def test_pareto_front_by_hand():
    # (cost, accuracy): b dominates c (same cost, higher acc) and d (more cost, lower acc); a and b and e are optimal
    points = [(1.0, 0.30), (2.0, 0.45), (2.0, 0.40), (3.0, 0.44), (10.0, 0.50)]
    assert pareto_front(points) == [0, 1, 4]


def test_written_tables_figures_and_report(runs_csv, tmp_path):
    out = tmp_path / "report"
    report = write_report(runs_csv, out).read_text()
    table = (out / "table.md").read_text()
    assert "| faster_rcnn | shallow | hinton |" in table and "**0.450 ± 0.026**" in table
    assert "+3.0 | +7.1% | yes | 3 | 0 |" in table
    assert "| faster_rcnn | shallow | at |" in table and "| 2 | 1 |" in table
    stats = (out / "stats.md").read_text()
    # hinton: t = 3 / (1 / sqrt 3) = 5.196 on 2 df, p = 1 - t / sqrt(2 + t^2) = 0.0351; at: t = -0.5 / 1.5 on 1 df,
    # p = 1 - (2 / pi) atan(1/3) = 0.795. Holm over the two: 2 x 0.0351 = 0.070 > 0.05, so hinton's raw 95% CI
    # excludes 0 but the corrected verdict does not; its step's level is 97.5%: t = sqrt(1.90125 / 0.049375) = 6.205
    assert ("| hinton | – | 3 | +3.00 | [+0.52, +5.48] | 0.035 | 0.070 | 97.5%: [-0.58, +6.58] | not significant |"
            in stats)
    assert "| at | – | 2 | -0.50 | [-19.56, +18.56] | 0.795 | 0.795 | 95.0%: [-19.56, +18.56] | not significant |" in stats
    tex = (out / "table.tex").read_text()
    assert "\\toprule" in tex and "\\textbf{0.450 $\\pm$ 0.026}" in tex
    assert "TrainingDiverged" in report  # failed runs are listed with their reason
    for name in ("map_vs_params", "map_vs_gflops", "map_vs_size", "map_vs_latency", "per_class_ap"):
        assert (out / f"{name}.png").stat().st_size > 5000 and (out / f"{name}.pdf").stat().st_size > 1000


def test_docs_results_show_the_committed_default_table():
    table = ROOT / "results" / "default" / "table.md"
    if not table.is_file():
        pytest.skip("no default study committed yet")
    assert table.read_text().strip() in (ROOT / "docs" / "results.md").read_text()


def test_report_of_bad_runs_files_is_a_one_line_error(tmp_path, capsys):
    from study.__main__ import main
    out = str(tmp_path / "out")
    assert main(["report", "--runs", str(tmp_path / "missing.csv"), "--out", out]) == 2
    assert "missing.csv: no such runs file" in capsys.readouterr().err
    assert not (tmp_path / "out" / "REPORT.md").exists()
    no_detector = tmp_path / "no_detector.csv"
    no_detector.write_text("run_id,backbone,method,seed,status\na,shallow,baseline,0,ok\n")
    assert main(["report", "--runs", str(no_detector), "--out", out]) == 2
    assert "no_detector.csv: missing column(s) detector" in capsys.readouterr().err
    bad_seed = tmp_path / "bad_seed.csv"
    bad_seed.write_text("run_id,detector,backbone,method,seed,status\na,f,shallow,baseline,zero,ok\n")
    assert main(["report", "--runs", str(bad_seed), "--out", out]) == 2
    assert "bad_seed.csv: line 2: empty or bad seed (not an integer)" in capsys.readouterr().err


def test_report_of_core_columns_only(tmp_path):
    """A runs.csv with just the documented core columns (no device, wall_s, costs, ...) still gives a report."""
    core = tmp_path / "runs.csv"
    core.write_text("run_id,detector,backbone,method,seed,status,map\n"
                    "b0,faster_rcnn,shallow,baseline,0,ok,0.40\nb1,faster_rcnn,shallow,baseline,1,ok,0.42\n"
                    "h0,faster_rcnn,shallow,hinton,0,ok,0.43\nh1,faster_rcnn,shallow,hinton,1,ok,0.44\n")
    report = write_report(core, tmp_path / "out").read_text()
    assert "| faster_rcnn | shallow | hinton |" in report and "+2.5" in report


def test_rows_are_paired_with_ultralytics_own_trainer_by_seed(runs_csv, tmp_path):
    from study.store import read_runs
    rival = {"baseline": [0.38, 0.41, 0.40], "distill_model": [0.40, 0.43, 0.45]}  # yolo-style @ultralytics rows
    for method, maps in rival.items():
        for seed, m in enumerate(maps):
            upsert_run(runs_csv, {"run_id": f"rival-{method}-{seed}", "detector": "faster_rcnn", "backbone":
                                  "shallow@ultralytics", "method": method, "hparams": "{}", "seed": seed,
                                  "status": "ok", "map": m, "map50": m + 0.3, "params": 900_000})
    rows = {(r["backbone"], r["method"]): r for r in table_rows(group_runs(read_runs(runs_csv)))}
    hinton = rows[("shallow", "hinton")]["paired_rival"]  # 0.43-0.40, 0.44-0.43, 0.48-0.45: 0.03, 0.01, 0.03
    assert hinton["n"] == 3 and hinton["mean"] == pytest.approx(0.07 / 3)
    sd = math.sqrt(((0.03 - 0.07 / 3) ** 2 * 2 + (0.01 - 0.07 / 3) ** 2) / 2)
    assert hinton["high"] - hinton["low"] == pytest.approx(2 * 4.3026527 * sd / math.sqrt(3))
    plain = rows[("shallow", "baseline")]["paired_rival"]  # the plain trainers: 0.02, 0.01, 0.04
    # one Holm family for the detector: hinton, at and ultralytics' distill_model against their baselines (3), and
    # baseline, hinton and at against ultralytics' trainer (3)
    assert plain["mean"] == pytest.approx(0.07 / 3) and plain["family"] == 6
    assert "paired_rival" not in rows[("shallow@ultralytics", "distill_model")]  # its own baseline is ultralytics'
    assert rows[("shallow@ultralytics", "distill_model")]["delta"] == pytest.approx((1.28 - 1.19) / 3 * 100)
    report = write_report(runs_csv, tmp_path / "out").read_text()
    assert "## Against ultralytics' own trainer" in report
    assert "shallow@ultralytics" in report


def test_late_gains_and_peaks_from_the_stored_validation_curve(tmp_path):
    """10-epoch runs, so the last 20% are epochs 9 and 10: gain = best after epoch 8 minus best up to it."""
    from study.store import read_curve, read_runs, val_curve
    curves = {0: [0.10, 0.20, 0.30, 0.35, 0.38, 0.40, 0.41, 0.42, 0.43, 0.425],  # +1.00 (0.43 vs 0.42), peak 9
              1: [0.10, 0.30, 0.44, 0.40, 0.41, 0.41, 0.41, 0.41, 0.40, 0.40],   # -4.00 (0.40 vs 0.44), peak 3
              2: [0.10, 0.20, 0.30, 0.31, 0.32, 0.33, 0.34, 0.35, 0.36, 0.38]}   # +3.00, still rising, peak 10
    path = tmp_path / "runs.csv"
    for seed, curve in curves.items():
        history = [{"epoch": e, "loss": 1.0, "val_map": v} for e, v in enumerate(curve, 1)]
        upsert_run(path, {"run_id": f"b{seed}", "detector": "faster_rcnn", "backbone": "shallow", "method": "baseline",
                          "seed": seed, "status": "ok", "map": 0.4, "hparams": json.dumps({"role": {"epochs": 10}}),
                          "val_map": max(curve), "best_epoch": curve.index(max(curve)) + 1,
                          "val_curve": val_curve(history + [{"epoch": 11, "loss": 1.0}])})  # no val: not stored
    stored = read_runs(path)
    assert read_curve(stored[0]) == [(e, v) for e, v in enumerate(curves[0], 1)]
    row = table_rows(group_runs(stored))[0]
    assert row["late_gains"] == pytest.approx([1.0, -4.0, 3.0])  # 0.43-0.42, 0.40-0.44, 0.38-0.35 in points
    assert row["late_peaks"] == 2  # seeds 0 and 2 peak at epochs 9 and 10 (> 8)
    report = write_report(path, tmp_path / "out").read_text()
    assert "| 2 of 3 | +0.0 [-4.0, +3.0] |" in report
    assert "## Against baseline" not in report  # only baseline rows: nothing to pair, no empty table


def test_a_compressed_model_is_compared_with_the_run_it_was_made_from_not_paired_with_baseline():
    """int8 of a Hinton student (seed 0) shares the student's backbone; its reference is its source run (0.52),
    not the student trained alone, and it enters no paired comparison or Holm family."""
    def row(run_id, method, seed, m, **hp):
        return {"run_id": run_id, "dataset": "toy", "detector": "faster_rcnn", "backbone": "shallow",
                "method": method, "seed": seed, "status": "ok", "map": m, "hparams": json.dumps(hp)}
    runs = [row("b0", "baseline", 0, 0.50), row("b1", "baseline", 1, 0.48),
            row("h0", "hinton", 0, 0.52), row("h1", "hinton", 1, 0.51),
            row("q0", "int8", 0, 0.515, source_run="h0")]
    by_method = {r["method"]: r for r in table_rows(group_runs(runs), runs)}
    assert by_method["int8"]["role"] == "compressed"
    assert by_method["int8"]["delta"] == pytest.approx(-0.5)  # 0.515 - 0.52, in points
    assert "paired" not in by_method["int8"] and "paired_long" not in by_method["int8"]
    assert by_method["hinton"]["paired"]["family"] == 1  # Holm over the student comparisons only
