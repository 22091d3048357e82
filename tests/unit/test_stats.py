"""Known answers for lukv_bench.report.stats: exact paired tests, intervals, Holm (issue 18)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, multinomial

from lukv_bench.report import stats


def test_three_of_six_unanimous_is_not_significant():
    t = stats.paired_test([1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0])
    assert (t.wins, t.losses, t.ties, t.method) == (3, 0, 3, "sign test")
    assert t.p == pytest.approx(0.25)


def test_eight_of_twelve_unanimous_is_significant_before_correction():
    t = stats.paired_test([1] * 8 + [0] * 4, [0] * 12)
    assert t.p == pytest.approx(2 / 2**8) and t.p < stats.ALPHA
    assert stats.paired_test([1] * 4 + [0] * 8, [0] * 12).p == pytest.approx(0.125)  # 4-0 of 12: not


def test_published_claims_of_the_issue():
    assert stats.sign_test(7, 1) == pytest.approx(0.0703125)  # SnapKV - layer-uncertainty at 40%
    assert stats.sign_test(6, 1) == pytest.approx(0.125)  # AdaKV - layer-uncertainty at 40%
    assert stats.sign_test(0, 0) == 1.0


def test_sign_flip_test_is_exact_for_small_n():
    # 6 positive continuous differences: exact two-sided p = 2 / 2**6
    assert stats.paired_test([0.5, 0.7, 0.9, 0.4, 0.6, 0.8], [0.1] * 6).p == pytest.approx(2 / 64)
    t = stats.paired_test([0.5, 0.2], [0.5, 0.2])
    assert t.p == 1.0 and t.ties == 2 and t.method == "sign-flip permutation"
    # one pair (a `--limit 1` run): both sign flips are as extreme, p = 1 (scipy refuses n = 1)
    assert stats.paired_test([0.6], [0.2]).p == 1.0
    with pytest.raises(ValueError):
        stats.paired_test([1.0], [1.0, 0.0])


def test_null_calibration_of_the_sign_test():
    """25% wins, 25% losses, 50% ties, n = 6: the share called significant (raw p < 0.05) must not exceed 5%."""
    n, rate = 6, 0.0
    for w in range(n + 1):
        for lo in range(n + 1 - w):
            if stats.sign_test(w, lo) < stats.ALPHA:
                rate += multinomial.pmf([w, lo, n - w - lo], n, [0.25, 0.25, 0.5])
    assert rate <= 0.05


def test_wilson_interval_coverage_at_small_n():
    """Exact coverage (every outcome weighted by its probability) of the 95% cell interval at n = 12, p = 0.9,
    and a seeded simulation of the same."""
    n, p = 12, 0.9
    exact = sum(binom.pmf(k, n, p) for k in range(n + 1)
                if (ci := stats.wilson_ci(k, n)) and ci[0] <= p <= ci[1])
    assert exact >= 0.93
    rng = np.random.default_rng(1)
    hits = []
    for k in rng.binomial(n, p, size=2000):
        lo, hi = stats.mean_ci([1.0] * int(k) + [0.0] * int(n - k))
        hits.append(lo <= p <= hi)
    assert np.mean(hits) >= 0.93


def test_intervals_need_two_values_and_variation():
    assert stats.mean_ci([1.0]) is None and stats.mean_ci([]) is None
    assert stats.mean_ci([0.3, 0.3, 0.3]) is None  # continuous and constant: BCa undefined
    lo, hi = stats.mean_ci([1.0] * 12)  # binary and constant: Wilson still bounds it
    assert hi == pytest.approx(1.0) and 0.7 < lo < 0.8
    lo, hi = stats.mean_ci([0.2, 0.5, 0.7, 0.3, 0.9, 0.4])
    assert lo < 0.5 < hi
    assert stats.mean_ci([0.2, 0.5, 0.7, 0.3, 0.9, 0.4]) == (lo, hi)  # seeded: reproducible
    assert stats.is_binary([0, 1.0, 1]) and not stats.is_binary([0, 0.5]) and not stats.is_binary([])


def test_holm_textbook_example():
    # p = (0.01, 0.04, 0.03, 0.005): sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> monotone 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_holm_with_twenty_eight_tests():
    """12 samples, 28 tests: 12-0 survives, 8-0 does not."""
    ps = [stats.sign_test(12, 0), stats.sign_test(8, 0)] + [1.0] * 26
    adj = stats.holm(ps)
    assert adj[0] < stats.ALPHA < adj[1]


def test_mean_ratio_interval():
    num = [([1, 0, 1, 1, 0, 1, 1, 1], [1] * 8), ([0.5, 1, 0, 0.5, 1, 0, 1, 1], [1, 1, 0.5, 0.5, 1, 0.5, 1, 1])]
    point = np.mean([np.mean(a) / np.mean(b) for a, b in num])
    lo, hi = stats.mean_ratio_ci(num)
    assert lo < point < hi and math.isfinite(lo)
    assert stats.mean_ratio_ci([([1.0], [1.0])]) is None
    assert stats.mean_ratio_ci([([1, 0], [0, 0])]) is None
