"""Head-wise budgets inside a layer, on top of any layer allocation (a study option, docs/policies.md §12).

Each layer's budget ``B_l`` is split over its storage heads with AdaKV's flattened top-k
(:func:`lukv_bench.policies.adakv.head_counts`, scores rescaled per head), mixed with the uniform
split by ``head_alpha`` (1: every head keeps ``B_l``, i.e. off; AdaKV's own safeguard is 0.2).
"""

from __future__ import annotations

import torch

from lukv_bench.runtime.contract import Allocation

from ._checks import check_range
from .adakv import head_counts


def check_head_alpha(owner: str, head_alpha: float) -> None:
    """``head_alpha`` must lie in [0, 1]."""
    check_range(owner, "head_alpha", head_alpha, lo=0.0, hi=1.0)


def split_over_heads(allocation: Allocation, scores: list[torch.Tensor], n: int, window: int,
                     head_alpha: float) -> Allocation:
    """``allocation`` with per-head counts: each layer's selectable budget split over heads (window kept by all)."""
    if head_alpha >= 1.0:
        return allocation
    w = min(window, n)
    prefix = n - w
    per_head = []
    for b, layer_scores in zip(allocation.per_layer, scores, strict=True):
        selectable = min(b, n) - w
        n_heads = layer_scores.shape[0]
        if selectable <= 0 or b >= n:
            per_head.append([min(b, n)] * n_heads)
            continue
        counts = head_counts(layer_scores[:, :prefix], selectable, head_alpha, True, min_count=1 if w == 0 else 0)
        per_head.append([c + w for c in counts])
    info = {**allocation.info, "head_alpha": head_alpha}
    return Allocation(per_layer=allocation.per_layer, per_head=per_head, info=info)
