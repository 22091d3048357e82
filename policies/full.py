"""FullKV: no eviction. Every layer and head keeps all ``n`` prompt tokens (the reference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import FULL, Allocation, PrefillStats


@dataclass
class FullAllocator:
    """Keeps every token whatever the budget (the only allocator allowed to exceed it)."""

    name: ClassVar[str] = FULL
    layer_adaptive: ClassVar[bool] = False  # every layer gets the same budget
    needs: ClassVar[frozenset[str]] = frozenset()
    exact_total: ClassVar[bool] = False  # ignores the budget by design

    def allocate(
        self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]
    ) -> Allocation:
        """``n`` tokens for every layer."""
        return Allocation(per_layer=[stats.n] * stats.n_layers)
