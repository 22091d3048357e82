"""DefensiveKV's aggregation (docs/policies.md §15): the worst case over the window instead of the sum.

``m_h(j) = max_{i in W} A_h[i, j]``, pooled along the prefix like SnapKV's votes, reduced to storage
heads, then the *mean clamp*: ``s(j) = max(m(j), mean_{j' < n-w} m(j'))`` per storage head, so every
prefix token below the head's mean score ties at that mean and the ranking only separates the
tokens some window query attends to strongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import WINDOW_MAX, LayerStats, PrefillStats

from ._checks import check_choice, check_kernel
from .snapkv import POOLINGS, pool_prefix


def mean_clamp(scores: torch.Tensor, prefix: int) -> torch.Tensor:
    """Raise the first ``prefix`` columns of [S, n] ``scores`` to at least their row mean (the rest untouched)."""
    out = scores.clone()
    if prefix <= 0:
        return out
    head = out[:, :prefix]
    out[:, :prefix] = torch.maximum(head, head.mean(dim=-1, keepdim=True))
    return out


@dataclass
class DefensiveScorer:
    """Max window aggregation with the mean clamp (DefensiveKV, 2025); SnapKV's pooling (kernel 7, max)."""

    kernel: int = 7
    pooling: str = "max"
    clamp: bool = True  #: the mean clamp (False: the plain max aggregation)

    name: ClassVar[str] = "defensive"
    needs: ClassVar[frozenset[str]] = frozenset({WINDOW_MAX})

    def __post_init__(self) -> None:
        check_kernel("defensive scorer", self.kernel)
        check_choice("defensive scorer", "pooling", self.pooling, POOLINGS)

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] pooled window maxima, mean-clamped over the prefix (window part raw)."""
        prefix = layer.n - layer.window
        worst = layer.require("win_max", WINDOW_MAX, "defensive scorer")
        scores = stats.to_storage(pool_prefix(worst, prefix, self.kernel, self.pooling))
        return mean_clamp(scores, prefix) if self.clamp else scores
