"""Statistics behind every verdict of the report: intervals, paired tests and the multiplicity correction.

Scores are either binary (every score of the metric is 0 or 1: pass-key found or not) or continuous
(F1, recall, similarity). Small samples (6-12 per cell) are the normal case, so the methods are exact or
small-sample ones, all from scipy:

- cell means: a Wilson score interval for binary scores (:func:`scipy.stats.binomtest`), a BCa
  bootstrap interval for continuous ones (:func:`scipy.stats.bootstrap`);
- paired differences: the exact sign test on the discordant pairs for binary scores (= exact McNemar),
  an exact sign-flip permutation test of the mean difference for continuous ones
  (:func:`scipy.stats.permutation_test`, exact up to 13 pairs);
- multiplicity: Holm's step-down adjustment within a family of tests (:func:`holm`).

A difference is *significant* only when its Holm-adjusted p is below :data:`ALPHA`. No interval and no
test comes from fewer than 2 values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95  #: level of every interval
ALPHA = 0.05  #: a Holm-adjusted p below this is "significant"
BOOTSTRAP = 9999  #: resamples of a BCa interval and of a non-exact permutation test
SEED = 0  #: fixed seed of the resampling: the same data always give the same interval and p
TIE_EPS = 1e-12  #: paired differences smaller than this (in absolute value) are ties


def finite(values: Iterable[object]) -> list[float]:
    """The finite numbers among ``values`` (bools and non-numbers dropped)."""
    out = []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out.append(float(v))
    return out


def is_binary(values: Iterable[float]) -> bool:
    """True when every value is 0 or 1 (and there is at least one)."""
    vals = finite(values)
    return bool(vals) and all(v in (0.0, 1.0) for v in vals)


def wilson_ci(successes: int, n: int, level: float = CONFIDENCE) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (None for n < 2)."""
    from scipy.stats import binomtest

    if n < 2:
        return None
    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def bca_ci(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float] | None:
    """BCa bootstrap interval of the mean (None for fewer than 2 values, constant values, or when BCa
    is undefined); seeded, so reproducible."""
    from scipy.stats import bootstrap

    vals = np.asarray(finite(values), dtype=float)
    if vals.size < 2 or np.ptp(vals) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning / RuntimeWarning: answered with None below
        res = bootstrap((vals,), np.mean, confidence_level=level, n_resamples=BOOTSTRAP, method="BCa",
                        random_state=np.random.default_rng(SEED))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def mean_ci(values: Sequence[float], binary: bool | None = None,
            level: float = CONFIDENCE) -> tuple[float, float] | None:
    """Interval of the mean: Wilson when the scores are binary, BCa bootstrap otherwise.

    ``binary`` None: decided from ``values`` themselves (pass the metric's verdict to decide once per metric).
    """
    vals = finite(values)
    if binary is None:
        binary = is_binary(vals)
    if binary:
        return wilson_ci(int(sum(vals)), len(vals), level)
    return bca_ci(vals, level)


@dataclass(frozen=True)
class PairedTest:
    """The test of one paired difference (first minus second, on the same samples)."""

    n: int  #: pairs
    diff: float  #: mean difference
    wins: int  #: pairs where the first is higher
    losses: int  #: pairs where the first is lower
    ties: int  #: pairs with equal scores
    p: float  #: two-sided raw p
    method: str  #: "sign test" or "sign-flip permutation"


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test on the discordant pairs (= exact McNemar); 1.0 when there are none."""
    from scipy.stats import binomtest

    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def sign_flip_test(diffs: Sequence[float]) -> float:
    """Two-sided paired permutation test of the mean difference (signs flipped at random; exact when
    2**n <= :data:`BOOTSTRAP`, else seeded Monte Carlo); 1.0 when every difference is 0 or there is one
    pair (its two sign flips are equally extreme; scipy refuses a single observation)."""
    from scipy.stats import permutation_test

    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or np.all(np.abs(d) < TIE_EPS):
        return 1.0
    res = permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                           n_resamples=BOOTSTRAP, random_state=np.random.default_rng(SEED))
    return float(min(1.0, res.pvalue))


def paired_test(first: Sequence[float], second: Sequence[float], binary: bool | None = None) -> PairedTest:
    """Test first - second, pair by pair: the sign test for binary scores, the sign-flip test otherwise."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired_test needs two equally long, non-empty sequences")
    d = a - b
    wins, losses = int(np.sum(d > TIE_EPS)), int(np.sum(d < -TIE_EPS))
    if binary is None:
        binary = is_binary(a.tolist() + b.tolist())
    p = sign_test(wins, losses) if binary else sign_flip_test(d)
    return PairedTest(n=int(d.size), diff=float(d.mean()), wins=wins, losses=losses,
                      ties=int(d.size) - wins - losses, p=p,
                      method="sign test" if binary else "sign-flip permutation")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (family-wise error control).

    Sort the m raw p ascending; the i-th smallest (i = 0..m-1) becomes max over j <= i of
    min(1, (m - j) * p_(j)), so adjusted values never decrease along the sorted order.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def mean_ratio_ci(groups: Sequence[tuple[Sequence[float], Sequence[float]]],
                  level: float = CONFIDENCE) -> tuple[float, float] | None:
    """BCa bootstrap interval of the mean over groups of mean(num) / mean(den).

    Each group is (num, den), paired sample by sample (e.g. a policy's and FullKV's scores on one task
    family). The bootstrap resamples the samples of each group with their pairs kept together,
    independently per group (stratified). A resample in which a group's denominator is 0 (FullKV failed
    on every drawn sample; rare) counts that group's ratio as its value on the original samples when the
    numerator is 0 too (no information either way) and as +inf otherwise (a tail), instead of making the
    interval undefined. None when a group has fewer
    than 2 pairs or a zero denominator, when the figure does not vary, or when BCa is undefined.
    """
    from scipy.stats import bootstrap

    nums = [np.asarray(a, dtype=float) for a, _ in groups]
    dens = [np.asarray(b, dtype=float) for _, b in groups]
    if not groups or any(x.size < 2 or x.shape != y.shape or y.mean() == 0 for x, y in zip(nums, dens, strict=True)):
        return None

    original = [x.mean() / y.mean() for x, y in zip(nums, dens, strict=True)]

    def stat(*idx: np.ndarray) -> float:
        vals = []
        for i, x, y, orig in zip(idx, nums, dens, original, strict=True):
            den, num = y[i].mean(), x[i].mean()
            vals.append(num / den if den > 0 else (orig if num == 0 else math.inf))
        return float(np.mean(vals))

    data = tuple(np.arange(x.size) for x in nums)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap(data, stat, vectorized=False, confidence_level=level, n_resamples=BOOTSTRAP,
                        method="BCa", random_state=np.random.default_rng(SEED))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and hi > lo else None
