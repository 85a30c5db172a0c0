"""Statistics over RL seeds: the mean and Student-t confidence interval the result tables print.

Used by scripts/seed_summary.py (the main command's table, docs/results.md) and scripts/repro_report.py (the
reproduction's table). The interval is ``scipy.stats.t.interval`` around the mean with the standard error of
the mean (``scipy.stats.sem``, n - 1 in the standard deviation): with 3 seeds its half-width is
t(0.975, 2) = 4.30 standard errors, so a 3-seed interval is wide on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

CONFIDENCE = 0.95


def mean_ci(values: Iterable[float | None], confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided t-interval, n) over the finite values.

    Non-finite values and None are dropped (a run that logged no such metric); n = 0 gives (nan, nan, 0) and
    n = 1 gives (value, nan, 1): one seed has no interval.
    """
    from scipy import stats

    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, math.nan, 1
    sem = float(stats.sem(xs))
    if sem == 0.0:  # identical values: scipy's interval is (nan, nan) for a zero scale
        return mean, 0.0, n
    lo, hi = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return mean, float(hi - lo) / 2, n
