"""Uniform allocation: every layer and head keeps the same ``min(budget, n)`` tokens (SnapKV, H2O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import Allocation, PrefillStats


@dataclass
class UniformAllocator:
    """The mean budget, unchanged, in every layer."""

    name: ClassVar[str] = "uniform"
    layer_adaptive: ClassVar[bool] = False  # every layer gets the same budget
    needs: ClassVar[frozenset[str]] = frozenset()
    exact_total: ClassVar[bool] = True  #: the counts always sum to L x budget

    def allocate(
        self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]
    ) -> Allocation:
        """``min(budget, n)`` tokens for every layer."""
        return Allocation(per_layer=[min(budget, stats.n)] * stats.n_layers)
