"""The statistics of a comparison: per-variant spread and seed-paired differences (scipy.stats).

Every run of a grid with the same seed sees the same data order, augmentation and backbone init
(they depend only on ``system.seed``), so two variants are compared *paired by seed*: the
difference ``d_k = top1(a, seed k) - top1(b, seed k)`` removes the part of the seed-to-seed
noise that both variants share. Its mean gets Student's t-interval (``scipy.stats.ttest_rel``);
Welch's unpaired test (``scipy.stats.ttest_ind(equal_var=False)``) is reported beside it as the
check that does not rely on the pairing.

Nothing here is hand-rolled: the numbers come from scipy, so they can be checked against it.
Values that do not exist for the data at hand (a spread from one seed, an interval from one pair,
a test on differences without spread) are ``None``, never NaN, so they survive JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CONFIDENCE", "MOST_PAIRS", "POWER", "describe", "paired_difference", "pairs_for_power"]

# The coverage of the intervals in compare.json/compare.md (the key is named after it: ci95).
CONFIDENCE = 0.95
# The power a seed count is planned for (compare.json's pairs_80): the usual 80%.
POWER = 0.8
# Past this many seed pairs the plan says "more than": no study on seeds goes further.
MOST_PAIRS = 1000


def _finite(x: Any) -> float | None:
    """``float(x)``, or None for NaN/inf (scipy's answer when a statistic is undefined)."""
    x = float(x)
    return x if math.isfinite(x) else None


def describe(values: Sequence[float]) -> dict[str, Any]:
    """The number of runs, their mean and sample standard deviation (``ddof=1``).

    Args:
        values: one top-1 accuracy (%) per seed.

    Returns:
        ``{"n", "mean", "std"}``; ``std`` is None with fewer than two values and ``mean`` is
        None with none.
    """
    x = np.asarray(values, dtype=float)
    return {
        "n": int(x.size),
        "mean": float(x.mean()) if x.size else None,
        "std": float(x.std(ddof=1)) if x.size > 1 else None,
    }


def paired_difference(
    a: Mapping[int, float],
    b: Mapping[int, float],
) -> dict[str, Any]:
    """Mean of ``a - b`` over the seeds both have, its t-interval, and paired-t and Welch p.

    Args:
        a: seed -> top-1 (%) of the first variant (e.g. SE-R).
        b: seed -> top-1 (%) of the second (e.g. SE-A).

    Returns:
        ``{"mean", "ci95", "p", "p_welch", "n_pairs", "pairs_80", "note"}``. ``mean`` is the
        mean paired difference in percentage points; ``ci95`` is ``[lo, hi]`` from ``ttest_rel``'s
        ``confidence_interval`` (Student's t with ``n_pairs - 1`` degrees of freedom); ``p`` is the
        paired t-test's two-sided p-value and ``p_welch`` Welch's over *all* runs of each variant.
        With one pair, or differences that are all equal (a t-interval needs their spread), the
        interval and p are None and ``note`` says why. ``pairs_80`` is
        :func:`pairs_for_power` of the differences' mean and standard deviation (None without an
        interval or with a zero mean).
    """
    from scipy import stats  # deferred: scipy's import is slow and only summaries need it

    seeds = sorted(set(a) & set(b))
    xa = np.array([a[s] for s in seeds], dtype=float)
    xb = np.array([b[s] for s in seeds], dtype=float)
    d = xa - xb
    out: dict[str, Any] = {
        "mean": float(d.mean()) if d.size else None,
        "ci95": None,
        "p": None,
        "p_welch": None,
        "n_pairs": len(seeds),
        "pairs_80": None,
        "note": None,
    }
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on degenerate samples
        wa, wb = list(a.values()), list(b.values())
        if len(wa) > 1 and len(wb) > 1 and (np.ptp(wa) > 0 or np.ptp(wb) > 0):
            out["p_welch"] = _finite(stats.ttest_ind(wa, wb, equal_var=False).pvalue)
        if d.size < 2:
            out["note"] = f"{d.size} seed pair(s): an interval needs at least two"
        elif np.ptp(d) == 0:
            out["note"] = f"all {d.size} differences are equal: a t-interval needs their spread"
        else:
            res = stats.ttest_rel(xa, xb)
            ci = res.confidence_interval(confidence_level=CONFIDENCE)
            out["ci95"] = [float(ci.low), float(ci.high)]
            out["p"] = _finite(res.pvalue)
            out["pairs_80"] = pairs_for_power(float(d.mean()), float(d.std(ddof=1)))
    return out


def pairs_for_power(mean: float, sd: float, *, power: float = POWER) -> int | None:
    """How many seed pairs a paired t-test needs to exclude zero with probability ``power``.

    A planning guess for "how many seeds would settle it?": it takes the observed mean and
    standard deviation of the paired differences as the true ones, and finds the smallest
    ``n`` at which the two-sided test at ``1 - CONFIDENCE`` rejects with that probability
    (noncentral t with ``n - 1`` degrees of freedom and noncentrality ``mean / (sd / sqrt(n))``).
    The observed mean is itself noisy, so the true count may be larger or smaller.

    Returns:
        ``n`` (at least 2), ``MOST_PAIRS + 1`` when even ``MOST_PAIRS`` pairs fall short, or None
        when the mean is zero (no count of pairs finds an effect of size zero) or the spread is
        zero (no t-test).
    """
    from scipy import stats

    if mean == 0 or not sd > 0:
        return None
    alpha = 1.0 - CONFIDENCE

    def reached(n: int) -> bool:
        df, nc = n - 1, abs(mean) / (sd / math.sqrt(n))
        crit = stats.t.ppf(1 - alpha / 2, df)
        # scipy's nct gives NaN for a far tail (large nc): that tail holds ~0 probability
        upper, lower = np.nan_to_num([stats.nct.sf(crit, df, nc), stats.nct.cdf(-crit, df, nc)])
        return upper + lower >= power

    if not reached(MOST_PAIRS):
        return MOST_PAIRS + 1
    lo, hi = 2, MOST_PAIRS  # power grows with n: bisect for the first n that reaches it
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reached(mid) else (mid + 1, hi)
    return lo
