"""ChunkKV (docs/policies.md §17): keep whole chunks of consecutive tokens instead of single tokens.

The prefix ``j < n - w`` is cut into chunks of ``size`` tokens from position 0 (the last chunk may be
shorter); every token gets its chunk's summed inner score, plus a tie-breaker far below any gap
between chunk sums that ranks a chunk's earlier tokens first. A top-k then takes whole chunks, best
first, and only the chunk at the budget's edge is cut, keeping its first tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lukv_bench.runtime.contract import LayerStats, PrefillStats, Scorer

from ._checks import check_range
from ._inner import build_inner

#: the tie-breaker's span, relative to the largest chunk sum of a head
_TIE = 1e-6


def chunk_scores(scores: torch.Tensor, prefix: int, size: int) -> torch.Tensor:
    """[S, n] scores where each prefix token holds its chunk's sum (+ the in-chunk tie-breaker); rest untouched."""
    out = scores.float().clone()
    if prefix <= 0 or size <= 1:
        return out
    n_chunks = -(-prefix // size)
    chunk_of = torch.arange(prefix, device=out.device) // size
    sums = torch.zeros(out.shape[0], n_chunks, device=out.device)
    sums.index_add_(1, chunk_of, out[:, :prefix])
    offset = (torch.arange(prefix, device=out.device) % size).float()
    scale = sums.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    out[:, :prefix] = sums[:, chunk_of] + _TIE * scale * (1.0 - offset / size)
    return out


@dataclass
class ChunkScorer:
    """A scorer modifier: the ``inner`` scorer's scores summed over fixed-size chunks (ChunkKV, 2025)."""

    inner: str = "snapkv"  #: the registered scorer whose token scores are summed per chunk
    inner_params: dict[str, Any] = field(default_factory=dict)  #: parameters of the inner scorer
    size: int = 10  #: tokens per chunk (ChunkKV's default)

    name: ClassVar[str] = "chunk"
    needs: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        check_range("chunk scorer", "size", self.size, lo=1)
        self._inner: Scorer = build_inner("chunk scorer", self.inner, self.inner_params)
        self.needs = frozenset(self._inner.needs)  # type: ignore[misc]

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] chunk sums of the inner scores over the prefix (window part as the inner scorer left it)."""
        return chunk_scores(self._inner.score(layer, stats), layer.n - layer.window, self.size)
