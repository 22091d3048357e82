"""Layer-uncertainty allocation, i.e. ZigZagKV (docs/policies.md §10).

Per layer ``l`` and query head ``h``, with ``abar`` the window-averaged attention over all ``n`` keys:

    MBA_{l,h} = min { k : sum of the k largest abar >= tau }      (tau = 0.9)
    LMBA_l    = mean_h MBA_{l,h};   u_l = LMBA_l / sum_k LMBA_k
    B_l       = B_min + (B_mean - B_min) * L * u_l,   B_min = ceil(floor_ratio * B_mean)

The floor is raised to ``min(w + 1, n)`` so every layer keeps at least one selected token beyond the
window, and never above ``B_mean`` (a budget at or below the window is therefore uniform). Layers
are capped at ``n`` with the overflow water-filled over the others in proportion to ``u_l``, and
largest remainders make the total exactly ``L * B_mean``. Token selection is SnapKV's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from lukv_bench.kernels.ops import attention_mass_budget

from lukv_bench.runtime.contract import WINDOW, Allocation, LayerStats, PrefillStats

from ._allocation import layer_floor, proportional_split
from ._checks import check_range


def minimum_budget(attention: torch.Tensor, tau: float) -> torch.Tensor:
    """MBA per row of [H, n] ``attention``: fewest tokens whose attention reaches ``tau`` of the row.

    The threshold is ``tau`` times the row's own total, so rows that do not sum exactly to 1 (float
    error) still give ``MBA = n`` at ``tau = 1``. Computed by the kernels' ``attention_mass_budget``.
    """
    return attention_mass_budget(attention.float(), tau)


def layer_minimum_budget(layer: LayerStats, tau: float) -> float:
    """LMBA: the mean over query heads of the MBA of the window-averaged attention."""
    return minimum_budget(layer.win_mean, tau).float().mean().item()


@dataclass
class LayerUncertaintyAllocator:
    """ZigZagKV budgets: a floor plus the rest split in proportion to each layer's LMBA."""

    tau: float = 0.9
    floor_ratio: float = 0.2

    name: ClassVar[str] = "layer-uncertainty"
    needs: ClassVar[frozenset[str]] = frozenset({WINDOW})
    exact_total: ClassVar[bool] = True  #: the counts always sum to L x budget

    def __post_init__(self) -> None:
        check_range("layer-uncertainty allocator", "tau", self.tau, lo=0.0, hi=1.0, lo_open=True)
        check_range("layer-uncertainty allocator", "floor_ratio", self.floor_ratio, lo=0.0, hi=1.0)

    def weights(self, lmba: list[float]) -> list[float]:
        """The layer shares ``u`` the budget above the floor is split by: ``LMBA_l / sum LMBA`` (ZigZagKV)."""
        total = sum(lmba)
        return [x / total for x in lmba]

    def allocate(
        self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]
    ) -> Allocation:
        """Per-layer budgets; ``info`` records lmba, u, the effective floor and tau."""
        n, n_layers = stats.n, stats.n_layers
        lmba = [layer_minimum_budget(layer, self.tau) for layer in stats.layers]
        u = self.weights(lmba)
        mean = min(budget, n)
        floor = layer_floor(mean, self.floor_ratio, window, n)
        info = {"lmba": lmba, "u": u, "floor": floor, "tau": self.tau}
        if mean >= n:
            return Allocation(per_layer=[n] * n_layers, info=info)
        per_layer = proportional_split(n_layers * mean, u, lo=floor, hi=n)
        return Allocation(per_layer=per_layer, info=info)
