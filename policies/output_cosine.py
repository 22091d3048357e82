"""Output-cosine allocation: layer budgets from an online estimate of LMBO (a study option,
docs/policies.md §12).

LMBO (``lukv-bench profile``) is the smallest budget that keeps a layer's attention output within a
cosine threshold of the uncompressed one. Online, from the capture alone, this allocator estimates it
per layer from the window-averaged attention ``abar`` and the stored values: keeping the window plus
the ``k`` best prefix tokens of the scorer gives the output ``o_l(k) = sum_{j in kept} abar_j v_j``
(normalisation does not change a cosine), and

    c_l(k) = mean over query heads of cos(o_l(k), o_l(n)).

It then searches the largest common target ``t`` with ``sum_l need_l(t) <= L * B``, where
``need_l(t) = max(floor, min{k : c_l(k) >= t})``, and splits ``L * B`` in proportion to those needs
(floor and caps as ZigZagKV's): layers whose output needs many tokens to stay faithful get them,
layers already faithful with a few do not. With ``head_alpha < 1`` each layer's budget is then split
over its heads. ``abar`` stands in for the individual window queries (exact for the full output, an
approximation for the kept one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import WINDOW, Allocation, LayerStats, PrefillStats

from ._allocation import layer_floor, proportional_split
from ._checks import check_range
from .headwise import check_head_alpha, split_over_heads


def cosine_curve(layer: LayerStats, scores: torch.Tensor, window: int) -> torch.Tensor:
    """[n - w + 1] float: ``c(k)`` for ``k = w .. n`` kept tokens (window + the ``k - w`` best prefix tokens)."""
    n = layer.n
    w = min(window, n)
    prefix = n - w
    abar = layer.win_mean.float()  # [Hq, n]
    values = layer.values.float()  # [S, n, D]
    n_storage = values.shape[0]
    group = max(1, abar.shape[0] // n_storage)
    v = values.repeat_interleave(group, dim=0) if n_storage != abar.shape[0] else values  # [Hq, n, D]
    order = torch.argsort(scores[:, :prefix].float(), dim=-1, descending=True)  # [S, prefix]
    order = order.repeat_interleave(group, dim=0) if n_storage != abar.shape[0] else order
    weighted = abar.unsqueeze(-1) * v  # [Hq, n, D]
    full = weighted.sum(1)  # [Hq, D]
    base = weighted[:, prefix:].sum(1)  # the window's part, always kept
    ranked = torch.gather(weighted[:, :prefix], 1, order.unsqueeze(-1).expand(-1, -1, v.shape[-1]))
    kept = torch.cat([base.unsqueeze(1), base.unsqueeze(1) + ranked.cumsum(1)], dim=1)  # [Hq, prefix + 1, D]
    cos = torch.nn.functional.cosine_similarity(kept, full.unsqueeze(1).expand_as(kept), dim=-1, eps=1e-12)
    return cos.mean(0)


@dataclass
class OutputCosineAllocator:
    """Layer budgets in proportion to an online LMBO estimate at a common cosine target; optional head split."""

    floor_ratio: float = 0.2
    head_alpha: float = 1.0

    name: ClassVar[str] = "output-cosine"
    needs: ClassVar[frozenset[str]] = frozenset({WINDOW})
    exact_total: ClassVar[bool] = True  #: the counts always sum to L x budget

    def __post_init__(self) -> None:
        check_range("output-cosine allocator", "floor_ratio", self.floor_ratio, lo=0.0, hi=1.0)
        check_head_alpha("output-cosine allocator", self.head_alpha)

    def allocate(
        self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]
    ) -> Allocation:
        """Per-layer budgets; ``info`` records the target cosine and each layer's estimated need."""
        n, n_layers = stats.n, stats.n_layers
        mean = min(budget, n)
        if mean >= n:
            return Allocation(per_layer=[n] * n_layers)
        w = min(window, n)
        floor = layer_floor(mean, self.floor_ratio, w, n)
        curves = [cosine_curve(layer, s, window) for layer, s in zip(stats.layers, scores, strict=True)]
        # running max: the fewest tokens reaching a target is monotone in the target
        curves = torch.stack([torch.cummax(c, 0).values for c in curves]).cpu()  # [L, n - w + 1], one copy
        total = n_layers * mean

        def needs(t: float) -> list[int]:
            hit = curves >= t
            first = hit.int().argmax(1)  # the first position reaching t (argmax returns the first maximum)
            k = torch.where(hit.any(1), w + first, n)
            return k.clamp(floor, n).tolist()

        lo, hi = -1.0, 1.0  # needs(lo) fits (every layer at its floor); search the largest target that fits
        for _ in range(30):
            mid = (lo + hi) / 2
            if sum(needs(mid)) <= total:
                lo = mid
            else:
                hi = mid
        need = needs(lo)
        per_layer = proportional_split(total, need, lo=floor, hi=n)
        info = {"target_cosine": lo, "need": need, "floor": floor}
        alloc = Allocation(per_layer=per_layer, info=info)
        return split_over_heads(alloc, scores, n, window, self.head_alpha)
