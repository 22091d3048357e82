"""Redirected layer uncertainty: ZigZagKV's allocation with the layer shares ``LMBA_l ** power``
(a study option, docs/policies.md §12).

``power = 1`` is exactly ``layer-uncertainty``; ``power = -1`` gives the most budget to the *sharp*
layers (small LMBA: a few tokens hold most of the attention, where retrieval happens) instead of the
diffuse ones; ``power = 0`` is uniform above the floor. Floor, caps and rounding are ZigZagKV's. With
``head_alpha < 1`` each layer's budget is then split over its heads (:mod:`lukv_bench.policies.headwise`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import Allocation, PrefillStats

from ._checks import check_range
from .headwise import check_head_alpha, split_over_heads
from .layer_uncertainty import LayerUncertaintyAllocator


@dataclass
class RedirectedUncertaintyAllocator(LayerUncertaintyAllocator):
    """Layer budgets: a floor plus the rest in proportion to ``LMBA_l ** power``; optional head-wise split."""

    power: float = -1.0
    head_alpha: float = 1.0

    name: ClassVar[str] = "redirected-uncertainty"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("redirected-uncertainty allocator", "power", self.power, lo=-8.0, hi=8.0)
        check_head_alpha("redirected-uncertainty allocator", self.head_alpha)

    def weights(self, lmba: list[float]) -> list[float]:
        """``LMBA_l ** power``, normalised (every LMBA is at least 1 token, so negative powers are finite)."""
        raw = [max(x, 1.0) ** self.power for x in lmba]
        total = sum(raw)
        return [x / total for x in raw]

    def allocate(
        self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]
    ) -> Allocation:
        """ZigZagKV's allocation with redirected shares; ``info`` adds ``power``."""
        alloc = super().allocate(stats, budget, window, scores)
        alloc.info["power"] = self.power
        return split_over_heads(alloc, scores, stats.n, window, self.head_alpha)
