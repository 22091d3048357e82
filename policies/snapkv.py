"""SnapKV (docs/policies.md §7): the window queries vote for prefix tokens, votes are pooled, top-k kept.

``s_h(j) = pool(sum_{i in W} A_h[i, j])`` for prefix tokens ``j < n - w``, computed per query head
and then reduced to storage heads (``stats.to_storage``). Window tokens are always kept by the
selection step, so their score does not matter (left at their raw vote).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from lukv_bench.runtime.contract import WINDOW, LayerStats, PrefillStats

from ._checks import check_choice, check_kernel

POOLINGS = ("max", "avg", "none")


def pool_prefix(scores: torch.Tensor, prefix: int, kernel: int, pooling: str) -> torch.Tensor:
    """Pool the first ``prefix`` columns of [H, n] ``scores`` along tokens (stride 1, same length).

    Max pooling pads with -inf and average pooling with zeros (counted), as SnapKV does, so
    boundary tokens get slightly lower average scores. Columns from ``prefix`` on are untouched.
    """
    out = scores.float().clone()
    if pooling == "none" or kernel == 1 or prefix <= 0:
        return out
    x = out[:, :prefix].unsqueeze(0)  # [1, H, prefix]: pool1d treats heads as channels
    if pooling == "max":
        pooled = F.max_pool1d(x, kernel_size=kernel, stride=1, padding=kernel // 2)
    else:
        pooled = F.avg_pool1d(x, kernel_size=kernel, stride=1, padding=kernel // 2, count_include_pad=True)
    out[:, :prefix] = pooled.squeeze(0)
    return out


@dataclass
class SnapKVScorer:
    """Pooled window votes (SnapKV). Defaults: max pooling, kernel 7 (LongBench protocol)."""

    kernel: int = 7
    pooling: str = "max"

    name: ClassVar[str] = "snapkv"
    needs: ClassVar[frozenset[str]] = frozenset({WINDOW})

    def __post_init__(self) -> None:
        check_kernel("snapkv scorer", self.kernel)
        check_choice("snapkv scorer", "pooling", self.pooling, POOLINGS)

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] pooled window attention sums (prefix part pooled; window part raw)."""
        prefix = layer.n - layer.window
        votes = pool_prefix(layer.win_sum, prefix, self.kernel, self.pooling)
        return stats.to_storage(votes)
