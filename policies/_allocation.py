"""Shared budget arithmetic: proportional split with floors and caps, then exact integer counts.

Used by every allocator that turns a per-layer (or per-head) statistic into token counts
(layer-uncertainty, CAKE, PyramidKV's exact mode, AdaKV's safeguard) so they all round the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_EPS = 1e-9


def _as_list(value: float | Sequence[float], size: int) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * size
    values = [float(v) for v in value]
    if len(values) != size:
        raise ValueError(f"expected {size} bounds, got {len(values)}")
    return values


def water_fill(
    total: float,
    weights: Sequence[float],
    lo: float | Sequence[float] = 0.0,
    hi: float | Sequence[float] = math.inf,
) -> list[float]:
    """Real-valued split: ``x_i = lo_i + (total - sum lo) * w_i / sum w``, capped at ``hi_i``.

    What a capped entry cannot take is re-split over the uncapped ones in proportion to their
    weights, until nothing overflows. Entries with zero total weight share evenly.
    """
    size = len(weights)
    lows, highs = _as_list(lo, size), _as_list(hi, size)
    w = [max(0.0, float(x)) if math.isfinite(float(x)) else 0.0 for x in weights]
    if any(a > b + _EPS for a, b in zip(lows, highs, strict=True)):
        raise ValueError("a lower bound exceeds its cap")
    if total < sum(lows) - _EPS or total > sum(highs) + _EPS:
        raise ValueError(f"cannot split {total} between bounds summing to {sum(lows)} and {sum(highs)}")
    x = list(lows)
    free = set(range(size))
    remaining = total - sum(lows)
    while remaining > _EPS and free:
        wsum = sum(w[i] for i in free)
        share = {i: (w[i] / wsum if wsum > 0 else 1.0 / len(free)) for i in free}
        capped = [i for i in free if x[i] + remaining * share[i] >= highs[i]]
        if not capped:
            for i in free:
                x[i] += remaining * share[i]
            break
        for i in capped:
            remaining -= highs[i] - x[i]
            x[i] = highs[i]
            free.discard(i)
    return x


def largest_remainder(
    values: Sequence[float],
    total: int,
    lo: int | Sequence[int] = 0,
    hi: int | Sequence[int] | float = math.inf,
) -> list[int]:
    """Integers within ``[lo_i, hi_i]`` that sum to ``total``, each the floor of its value or one more.

    The leftover units go to the largest fractional parts (ties: lower index first). If the values
    do not sum to ``total`` the difference is spread the same way, one unit per entry per round.
    """
    size = len(values)
    lows = [math.ceil(v - _EPS) for v in _as_list(lo, size)]
    highs = [math.floor(v + _EPS) if math.isfinite(v) else None for v in _as_list(hi, size)]
    capped = all(h is not None for h in highs)
    if sum(lows) > total or (capped and sum(h for h in highs if h is not None) < total):
        raise ValueError(f"cannot place {total} units between the given bounds")

    def clamp(i: int, v: int) -> int:
        v = max(v, lows[i])
        h = highs[i]
        return v if h is None else min(v, h)

    counts = [clamp(i, math.floor(v + _EPS)) for i, v in enumerate(values)]
    frac = [float(v) - c for v, c in zip(values, counts, strict=True)]
    left = total - sum(counts)
    while left > 0:
        order = sorted(range(size), key=lambda i: (-frac[i], i))
        moved = False
        for i in order:
            if left == 0:
                break
            h = highs[i]
            if h is None or counts[i] < h:
                counts[i] += 1
                frac[i] -= 1.0
                left -= 1
                moved = True
        if not moved:  # pragma: no cover - excluded by the bound check above
            raise ValueError("no room left under the caps")
    while left < 0:
        order = sorted(range(size), key=lambda i: (frac[i], i))
        moved = False
        for i in order:
            if left == 0:
                break
            if counts[i] > lows[i]:
                counts[i] -= 1
                frac[i] += 1.0
                left += 1
                moved = True
        if not moved:  # pragma: no cover - excluded by the bound check above
            raise ValueError("no room left above the floors")
    return counts


def proportional_split(
    total: int,
    weights: Sequence[float],
    lo: int | Sequence[int] = 0,
    hi: int | Sequence[int] | float = math.inf,
) -> list[int]:
    """Exact integer split of ``total``: floors ``lo``, the rest in proportion to ``weights``, caps ``hi``.

    :func:`water_fill` then :func:`largest_remainder`; the result sums to ``total`` exactly.
    """
    return largest_remainder(water_fill(total, weights, lo, hi), total, lo, hi)


def layer_floor(mean: int, floor_ratio: float, window: int, n: int) -> int:
    """The smallest per-layer budget of an adaptive allocation: ``floor_ratio`` of the mean, but at least
    the observation window plus one token (capped by the prompt) and at most the mean itself."""
    return min(mean, max(math.ceil(floor_ratio * mean - 1e-9), min(window + 1, n)))
