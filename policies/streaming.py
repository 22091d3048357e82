"""StreamingLLM (docs/policies.md §5): attention sinks plus the most recent tokens.

The recency scorer ranks tokens by position, so with ``sinks`` always kept the selection is
"first ``sinks`` + newest ``B - sinks``". During long decoding the same rule keeps each head at its
budget (:func:`streaming_decode_keep`, registered as the decode rule ``streaming``); there is no key
re-rotation. The cache applies a "sinks + newest" keep set in O(1) per token: the new token takes
the slot of the oldest non-sink entry (:class:`~lukv_bench.runtime.cache.Ring`) instead of the
window moving up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lukv_bench.runtime.contract import LayerStats, PrefillStats


@dataclass
class RecencyScorer:
    """Score = token position (newer is more important)."""

    name: ClassVar[str] = "recency"
    needs: ClassVar[frozenset[str]] = frozenset()

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] positions 0..n-1 for every storage head."""
        pos = torch.arange(layer.n, dtype=torch.float32, device=layer.keys.device)
        return pos.repeat(stats.n_storage_heads, 1)


def streaming_decode_keep(
    lens_per_head: list[int], budget_per_head: list[int], sinks: int
) -> list[torch.Tensor] | None:
    """Segment positions each head keeps so that it holds at most its budget: sinks, then the newest.

    Positions are logical (oldest first), so a head's first ``sinks`` entries are the attention
    sinks, whatever order the cache stores them in. At least the newest token is always kept.
    Returns None when no head is over budget (nothing to do).
    """
    if all(length <= budget for length, budget in zip(lens_per_head, budget_per_head, strict=True)):
        return None
    keep = []
    for length, budget in zip(lens_per_head, budget_per_head, strict=True):
        if length <= budget:
            keep.append(torch.arange(length))
            continue
        budget = max(1, budget)
        n_sink = min(sinks, budget - 1)
        recent = budget - n_sink
        keep.append(torch.cat([torch.arange(n_sink), torch.arange(length - recent, length)]))
    return keep


def streaming_rule(
    lens_per_head: list[int], logical_len: int, budget_per_head: list[int], params: Mapping[str, Any]
) -> list[torch.Tensor] | None:
    """StreamingLLM while decoding: each head over its budget keeps its first ``sinks`` and its newest tokens.

    The ``streaming`` :class:`~lukv_bench.runtime.contract.DecodeRule`. ``logical_len`` is not needed: a segment's
    order is its logical order.
    """
    return streaming_decode_keep(lens_per_head, budget_per_head, int(params.get("sinks", 0)))
