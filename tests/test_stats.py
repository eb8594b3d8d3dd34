"""The t distribution and Holm's correction against values worked out by hand or printed in tables."""
from __future__ import annotations

import math

import pytest

from study.stats import holm, paired_summary, t_quantile, t_two_sided_p


@pytest.mark.parametrize("df, t975", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706),
                                      (9, 2.2622), (30, 2.0423)])
def test_t_quantiles_match_the_printed_table(df, t975):
    assert t_quantile(0.95, df) == pytest.approx(t975, abs=1e-4)


def test_t_p_values_by_hand():
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5)  # Cauchy: 1 - (2/pi) atan(1)
    assert t_two_sided_p(2.0, 2) == pytest.approx(1 - 2 / math.sqrt(6))  # df 2: 1 - t / sqrt(2 + t^2)
    # df 3: A = (2/pi)(theta + sin(theta)cos(theta)), theta = atan(t / sqrt 3); at t = sqrt 3, theta = pi/4
    assert t_two_sided_p(math.sqrt(3), 3) == pytest.approx(0.5 - 1 / math.pi)
    assert t_two_sided_p(0.0, 7) == pytest.approx(1.0)


def test_holm_step_down_by_hand():
    out = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    # sorted a 0.01, c 0.03, b 0.04 (m = 3): 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; max(0.06, 1 x 0.04) = 0.06
    assert {k: round(v["p_adj"], 10) for k, v in out.items()} == {"a": 0.03, "c": 0.06, "b": 0.06}
    assert [out[k]["reject"] for k in "acb"] == [True, False, False]
    assert [out[k]["level"] for k in "acb"] == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 2, 0.95])


def test_paired_summary_of_constant_differences_is_exact():
    s = paired_summary([0.02, 0.02, 0.02])
    assert (s["mean"], s["low"], s["high"], s["p"]) == (pytest.approx(0.02), pytest.approx(0.02),
                                                        pytest.approx(0.02), 0.0)
