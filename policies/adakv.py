"""AdaKV (docs/policies.md §9): head-wise budgets inside a layer from a flattened top-k over heads.

Per layer with ``C = B - w`` selectable tokens per head: optionally rescale each head's prefix
scores by ``rho_h = (sum of its top-C scores) / (sum of all its scores)``, take the global top
``S * C`` entries over the layer's storage heads, count ``c_h`` per head, then mix with uniform,
``c'_h = (1 - alpha) * c_h + alpha * C`` (the safeguard), rounded by largest remainders so the
layer total stays exactly ``S * C``. Every head also keeps the window. Layers all get ``B``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import Allocation, PrefillStats

from ._allocation import largest_remainder
from ._checks import check_range


def head_counts(
    scores: torch.Tensor, selectable: int, alpha: float, normalize: bool, min_count: int = 0
) -> list[int]:
    """Selected prefix tokens per head for [S, P] prefix ``scores``: AdaKV's adaptive split of ``S * C``."""
    n_heads, prefix = scores.shape
    s = torch.nan_to_num(scores.float(), nan=float("-inf"), posinf=torch.finfo(torch.float32).max)
    if normalize:
        finite = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
        top = torch.topk(finite, selectable, dim=-1).values.sum(-1)
        total = finite.sum(-1)
        rho = torch.where(total > 0, top / total.clamp_min(1e-30), torch.ones_like(total))
        s = s * rho[:, None]
    flat = torch.topk(s.reshape(-1), n_heads * selectable).indices
    counts = torch.bincount(flat // prefix, minlength=n_heads).tolist()
    mixed = [(1.0 - alpha) * c + alpha * selectable for c in counts]
    return largest_remainder(mixed, n_heads * selectable, lo=min_count, hi=prefix)


@dataclass
class AdaKVAllocator:
    """Head-wise adaptive budgets (uniform across layers); ``alpha`` is the uniform safeguard share."""

    alpha: float = 0.2
    normalize: bool = True

    name: ClassVar[str] = "adakv"
    needs: ClassVar[frozenset[str]] = frozenset()
    exact_total: ClassVar[bool] = True  #: the counts always sum to L x budget

    def __post_init__(self) -> None:
        check_range("adakv allocator", "alpha", self.alpha, lo=0.0, hi=1.0)

    def allocate(
        self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]
    ) -> Allocation:
        """Per-head counts (incl. the window) for every layer; each layer's mean is ``min(budget, n)``."""
        n, n_layers = stats.n, stats.n_layers
        b = min(budget, n)
        w = min(window, n)
        selectable, prefix = b - w, n - w
        if b >= n or selectable <= 0:
            return Allocation(per_layer=[b] * n_layers)
        per_head = []
        for layer_scores in scores:
            counts = head_counts(
                layer_scores[:, :prefix], selectable, self.alpha, self.normalize, min_count=1 if w == 0 else 0
            )
            per_head.append([c + w for c in counts])
        return Allocation(per_layer=[b] * n_layers, per_head=per_head)
