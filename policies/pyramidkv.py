"""PyramidKV (docs/policies.md §8): per-layer budgets decreasing arithmetically with depth.

KVCache-Factory's schedule, with ``C = B - w`` selectable tokens on average::

    min_num = floor(C / beta);  max_num = 2C - min_num
    if max_num >= n - w:  max_num = n - w;  min_num = 2C - max_num
    step = floor((max_num - min_num) / (L - 1));  B_l = max_num - l * step + w

Short inputs (``n < 2C``), ``C <= 0`` and ``L = 1`` fall back to uniform. Token selection is SnapKV.

Total: flooring ``step`` makes the layer counts sum to slightly MORE than ``L * B`` (by less than
``(L - 1) / 2`` tokens per layer on average) — up to ~20% more memory than the budget at small
budgets on a 30-layer model. The default (``exact=True``) therefore uses the unfloored schedule and
largest remainders, so the total is exactly ``L * B`` and comparisons run at equal memory;
``exact=False`` reproduces the reference rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import Allocation, PrefillStats

from ._allocation import largest_remainder
from ._checks import check_range


def pyramid_schedule(
    n_layers: int, budget: int, window: int, n: int, beta: float, exact: bool = False
) -> list[int]:
    """Tokens per layer (incl. the window) for a mean budget ``budget`` and prompt length ``n``."""
    if budget >= n:
        return [n] * n_layers
    w = min(window, n)
    c = budget - w
    if c <= 0 or n_layers == 1 or n < 2 * c:
        return [budget] * n_layers
    min_num = math.floor(c / beta)
    max_num = 2 * c - min_num
    if max_num >= n - w:
        max_num = n - w
        min_num = 2 * c - max_num
    if exact:
        step = (max_num - min_num) / (n_layers - 1)
        values = [max_num - layer * step + w for layer in range(n_layers)]
        return largest_remainder(values, n_layers * budget, lo=1, hi=n)
    step = (max_num - min_num) // (n_layers - 1)
    return [max(1, max_num - layer * step + w) for layer in range(n_layers)]


@dataclass
class PyramidAllocator:
    """Arithmetic depth schedule (layer 0 largest); ``beta`` sets the smallest layer at ``C / beta``."""

    beta: float = 20.0
    exact: bool = True

    name: ClassVar[str] = "pyramid"
    needs: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        check_range("pyramid allocator", "beta", self.beta, lo=1.0, lo_open=True)

    @property
    def exact_total(self) -> bool:
        """Whether the counts sum exactly to ``L * min(budget, n)`` (only with ``exact=True``)."""
        return self.exact

    def allocate(
        self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]
    ) -> Allocation:
        """The pyramid schedule for this prompt."""
        per_layer = pyramid_schedule(stats.n_layers, budget, window, stats.n, self.beta, self.exact)
        return Allocation(per_layer=per_layer)
