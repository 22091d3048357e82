"""One top-k across all layers and heads (docs/policies.md §18): Layer-DefensiveKV's budget allocation.

Scores of every (layer, storage head) are made comparable as probabilities over the head's prefix;
each head first gets a minimum share of the selectable budget, then the best remaining entries of the
whole model fill the rest. Layer totals are rounded to whole tokens per head, and each layer's total is
split over its heads by the same ranking, so every count is exact (docs/policies.md §2.6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import Allocation, PrefillStats

from ._allocation import largest_remainder
from ._checks import check_range


def probabilities(scores: torch.Tensor, prefix: int) -> torch.Tensor:
    """[S, prefix] scores as a distribution per head: shifted to be >= 0 when negative, divided by their sum.

    Non-finite scores count as the head's lowest finite one; a head whose scores are all equal is uniform.
    """
    s = scores[:, :prefix].float()
    finite = torch.isfinite(s)
    low = torch.where(finite, s, torch.full_like(s, math.inf)).amin(dim=-1, keepdim=True)
    low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
    s = torch.where(finite, s, low)
    s = s - torch.minimum(low, torch.zeros_like(low))
    total = s.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, s / total.clamp_min(1e-30), torch.full_like(s, 1.0 / max(prefix, 1)))


def top_counts(sorted_rest: torch.Tensor, take: int) -> torch.Tensor:
    """How many of each row's entries are among the ``take`` largest of [R, m] (rows sorted descending)."""
    rows, m = sorted_rest.shape
    if take <= 0 or m == 0:
        return torch.zeros(rows, dtype=torch.long)
    picked = torch.topk(sorted_rest.reshape(-1), take).indices // m
    return torch.bincount(picked, minlength=rows)


@dataclass
class GlobalAllocator:
    """Budgets from one top-k over normalised scores of all layers and heads, with a per-head minimum share."""

    min_share: float = 0.0  #: share of the selectable budget every head keeps whatever its scores

    name: ClassVar[str] = "global"
    needs: ClassVar[frozenset[str]] = frozenset()
    exact_total: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range("global allocator", "min_share", self.min_share, lo=0.0, hi=1.0)

    def allocate(
        self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]
    ) -> Allocation:
        """Per-layer and per-head counts (incl. the window) from the model-wide ranking; mean ``min(budget, n)``."""
        n, n_layers = stats.n, stats.n_layers
        b, w = min(budget, n), min(window, n)
        selectable, prefix = b - w, n - w
        if b >= n or selectable <= 0:
            return Allocation(per_layer=[b] * n_layers)
        heads = scores[0].shape[0]
        floor = min(selectable, math.ceil(self.min_share * selectable - 1e-9))
        if w == 0:
            floor = max(floor, 1)
        ordered = [torch.sort(probabilities(s, prefix), dim=-1, descending=True).values for s in scores]
        rest = torch.cat([o[:, floor:] for o in ordered])  # [L * S, prefix - floor]
        picked = top_counts(rest, n_layers * heads * (selectable - floor)).view(n_layers, heads)
        layer_sel = (picked.sum(dim=-1) + heads * floor).tolist()
        per_layer = largest_remainder([w + t / heads for t in layer_sel], n_layers * b, lo=w + floor, hi=n)
        per_head = []
        for layer, keep in enumerate(per_layer):
            counts = top_counts(ordered[layer][:, floor:], heads * (keep - w - floor))
            per_head.append([w + floor + int(c) for c in counts])
        return Allocation(per_layer=per_layer, per_head=per_head, info={"global_selected": layer_sel})
