"""Statistics of a study's rows: paired differences with Student-t intervals, and Holm's step-down correction.

No SciPy: the t distribution with an integer number of degrees of freedom has a closed-form CDF (Abramowitz and
Stegun 26.7.3-4), which is all a paired t-test over a handful of seeds needs; quantiles come from it by bisection.
"""
from __future__ import annotations

import math
import statistics


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's T with ``df`` >= 1 degrees of freedom.

    With θ = atan(|t| / √df), A = P(|T| < |t|) is, for odd df, (2/π)(θ + sinθ·(cosθ + ⅔cos³θ + ... +
    [2·4···(df−3)]/[1·3···(df−2)]·cos^(df−2)θ)) (just 2θ/π for df = 1), and for even df,
    sinθ·(1 + ½cos²θ + (1·3)/(2·4)cos⁴θ + ... + [1·3···(df−3)]/[2·4···(df−2)]·cos^(df−2)θ); p = 1 − A.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, not {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:
        term, total = c, c if df > 1 else 0.0
        for k in range(3, df - 1, 2):  # term_k = term_{k-2} * (k-1)/k * cos²θ
            term *= (k - 1) / k * c * c
            total += term
        a = 2 / math.pi * (theta + s * total)
    else:
        term, total = 1.0, 1.0
        for k in range(2, df - 1, 2):
            term *= (k - 1) / k * c * c
            total += term
        a = s * total
    return min(1.0, max(0.0, 1.0 - a))


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| < t) = ``level`` (two-sided), e.g. ``t_quantile(0.95, 2)`` = 4.303."""
    low, high = 0.0, 1.0
    while 1 - t_two_sided_p(high, df) < level:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if 1 - t_two_sided_p(mid, df) < level else (low, mid)
    return (low + high) / 2


def paired_summary(diffs: list[float], level: float = 0.95) -> dict:
    """Mean of paired differences, its ``level`` t-interval and the two-sided p of 'mean = 0' (n − 1 df)."""
    n = len(diffs)
    out = {"n": n, "mean": statistics.fmean(diffs) if diffs else None, "low": None, "high": None, "p": None}
    if n > 1:
        se = statistics.stdev(diffs) / math.sqrt(n)
        half = t_quantile(level, n - 1) * se
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
        out["p"] = (t_two_sided_p(out["mean"] / se, n - 1) if se > 0 else (0.0 if out["mean"] else 1.0))
    return out


def holm(p_values: dict, alpha: float = 0.05) -> dict:
    """Holm's step-down adjustment of a family of p-values (key -> p; None is left out).

    Sorted ascending, the j-th smallest (j = 1..m) gets p_adj = max over i <= j of min(1, (m − i + 1)·p_(i)),
    and is rejected at ``alpha`` iff p_adj <= alpha. Returns key -> {"p_adj", "reject", "level"}, where
    ``level`` = 1 − alpha/(m − j + 1) is the confidence level of the interval that matches the j-th step.
    """
    ranked = sorted((p, key) for key, p in p_values.items() if p is not None)
    m, running, out = len(ranked), 0.0, {}
    for j, (p, key) in enumerate(ranked, 1):
        running = max(running, min(1.0, (m - j + 1) * p))
        out[key] = {"p_adj": running, "reject": running <= alpha, "level": 1 - alpha / (m - j + 1)}
    return out
