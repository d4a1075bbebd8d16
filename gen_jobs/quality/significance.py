"""When a quality figure is worth a warning: only if it is unlikely to be chance for the rows it rests on.

A 10-row dataset of a healthy digits generator misses 5 of its 10 classes 15% of
the time, and 3 stylised images can all miss an edge goal by luck; neither is a
sign of a bad model. Every family's warnings go through these tests, so a
warning means "this is a property of the model, not of a small sample", and
each warning says how many rows it rests on (`in_rows`).

The tests are one-sided at SIGNIFICANCE: the chance that a model meeting the goal
would show a figure this bad in this many rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SIGNIFICANCE = 1e-3


def in_rows(rows: int | None) -> str:
    """' in 1,234 rows' (what a warning rests on), or '' when the count is unknown."""
    return f" in {rows:,} rows" if rows else ""


def coverage_tail(rows: int, covered: int, classes: int) -> float:
    """P(at most `covered` of `classes` equally likely classes appear among `rows` draws)."""
    dist = np.zeros(classes + 1)  # dist[j]: P(j distinct classes so far)
    dist[0] = 1.0
    j = np.arange(classes + 1)
    for _ in range(min(rows, 100 * classes)):  # beyond that the tail is below any float's resolution
        dist = dist * (j / classes) + np.concatenate([[0.0], dist[:-1] * ((classes - j[:-1]) / classes)])
    return float(dist[: covered + 1].sum())


def few_classes(rows: int, covered: int, classes: int) -> bool:
    """Whether seeing only `covered` of `classes` uniform classes in `rows` rows is significant."""
    return covered < classes and coverage_tail(rows, covered, classes) < SIGNIFICANCE


def share_below(successes: int, rows: int, goal: float) -> bool:
    """Whether `successes` of `rows` is significantly below a success rate of `goal` (binomial)."""
    from scipy.stats import binom

    return rows > 0 and successes < goal * rows and float(binom.cdf(successes, rows, goal)) < SIGNIFICANCE


def mean_below(values: Sequence[float] | np.ndarray, goal: float) -> bool:
    """Whether per-row `values` have a mean significantly below `goal` (one-sided t-test).

    Needs at least 3 finite values; rows that all sit exactly below the goal count as significant.
    """
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    if n < 3 or values.mean() >= goal:
        return False
    spread = values.std(ddof=1)
    if spread == 0:
        return True
    statistic = (values.mean() - goal) / (spread / math.sqrt(n))
    return float(t.cdf(statistic, n - 1)) < SIGNIFICANCE


def mean_above(values: Sequence[float] | np.ndarray, goal: float) -> bool:
    """Whether per-row `values` have a mean significantly above `goal` (mean_below's mirror)."""
    return mean_below(-np.asarray(values, dtype=np.float64), -goal)


# One-sided normal quantile at SIGNIFICANCE (scipy.stats.norm.isf(1e-3)).
Z_SIGNIFICANT = 3.090232306167813


def below_reference(value: float, expected: float, spread: float, ratio: float) -> bool:
    """Whether `value` is significantly below `ratio` x what the reference data give at the same size.

    For figures that depend on how many rows are scored (k-NN coverage and recall): `expected` and
    `spread` are the mean and standard deviation of the figure over draws of as many real rows. A
    healthy model is not real data, so the bar is a share (`ratio`) of the real figure, less the draws'
    spread at SIGNIFICANCE.
    """
    return value < ratio * expected - Z_SIGNIFICANT * spread
