"""CAKE (docs/policies.md §11): layer budgets from attention dispersion and shift; a mean+variance indicator.

Per layer, over the window queries and prefix keys ``j < n - w``:

    D_l = sum_h entropy (LayerStats.win_entropy);   V_l = sum_{h, j} Var_i A[h, i, j]
    P_l = D_l^(1/tau1) * V_l^(1/tau2);               B_l - w  proportional to P_l

Caps at ``n`` are water-filled over the other layers in proportion to ``P_l`` (CAKE spreads them
evenly), then largest remainders make the total exactly ``L * B``. Inside a layer the eviction
indicator is ``I(j) = mean_i A[i, j] + gamma * Var_i A[i, j]``, avg-pooled (k=5), reduced to
storage heads (group mean by default). Decode-time eviction is not implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import WINDOW, Allocation, LayerStats, PrefillStats

from ._allocation import proportional_split
from ._checks import check_choice, check_kernel, check_range
from .snapkv import POOLINGS, pool_prefix


def layer_statistics(layer: LayerStats) -> tuple[float, float]:
    """``(D_l, V_l)``: summed window entropy and summed window variance over prefix keys."""
    prefix = layer.n - layer.window
    dispersion = float(layer.win_entropy.float().sum().clamp_min(0.0))
    shift = float(layer.win_var[:, :prefix].sum())
    return dispersion, shift


def preferences(dispersion: list[float], shift: list[float], tau1: float, tau2: float) -> list[float]:
    """Shares ``P_l / sum P`` with ``P_l = D_l^(1/tau1) * V_l^(1/tau2)``.

    D and V are divided by their maxima first: that scales every P_l by the same factor (so the
    shares are unchanged) and keeps small taus from overflowing.
    """
    d_max, v_max = max(dispersion) or 1.0, max(shift) or 1.0
    p = [
        (d / d_max) ** (1.0 / tau1) * (v / v_max) ** (1.0 / tau2)
        for d, v in zip(dispersion, shift, strict=True)
    ]
    total = sum(p)
    return [x / total for x in p] if total > 0 else [1.0 / len(p)] * len(p)


@dataclass
class CakeScorer:
    """CAKE's eviction indicator: window mean plus ``gamma`` times window variance, pooled."""

    gamma: float = 200.0
    kernel: int = 5
    pooling: str = "avg"

    name: ClassVar[str] = "cake"
    needs: ClassVar[frozenset[str]] = frozenset({WINDOW})

    def __post_init__(self) -> None:
        check_range("cake scorer", "gamma", self.gamma, lo=0.0)
        check_kernel("cake scorer", self.kernel)
        check_choice("cake scorer", "pooling", self.pooling, POOLINGS)

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] indicator (prefix part pooled)."""
        indicator = layer.win_mean + self.gamma * layer.win_var
        return stats.to_storage(pool_prefix(indicator, layer.n - layer.window, self.kernel, self.pooling))


@dataclass
class CakeAllocator:
    """CAKE layer budgets: the selectable part ``B_l - w`` proportional to ``D^(1/tau1) * V^(1/tau2)``."""

    tau1: float = 1.0
    tau2: float = 1.0

    name: ClassVar[str] = "cake"
    needs: ClassVar[frozenset[str]] = frozenset({WINDOW})
    exact_total: ClassVar[bool] = True  #: the counts always sum to L x budget

    def __post_init__(self) -> None:
        check_range("cake allocator", "tau1", self.tau1, lo=0.0, lo_open=True)
        check_range("cake allocator", "tau2", self.tau2, lo=0.0, lo_open=True)

    def allocate(
        self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]
    ) -> Allocation:
        """Per-layer budgets; ``info`` records D, V and the preference shares ``P_l / sum P`` per layer."""
        n, n_layers = stats.n, stats.n_layers
        dispersion, shift = zip(*(layer_statistics(layer) for layer in stats.layers), strict=True)
        share = preferences(list(dispersion), list(shift), self.tau1, self.tau2)
        info = {"dispersion": list(dispersion), "shift": list(shift), "preference": share}
        mean = min(budget, n)
        if mean >= n:
            return Allocation(per_layer=[n] * n_layers, info=info)
        # the window is always kept; at least one token so no layer is empty when w = 0
        floor = max(1, min(window, mean))
        per_layer = proportional_split(n_layers * mean, info["preference"], lo=floor, hi=n)
        return Allocation(per_layer=per_layer, info=info)
