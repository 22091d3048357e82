"""H2O, prefill-only form (docs/policies.md §6): keep the heavy hitters of the whole causal attention.

``S(j) = sum_{i >= j} A[i, j]`` over every prompt query (``LayerStats.acc_attn``), reduced to
storage heads. ``normalize=True`` divides by the number of queries that see token j, ``n - j``
(kvpress's observed-attention variant), removing the bias towards early tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import ACCUMULATED, LayerStats, PrefillStats


@dataclass
class H2OScorer:
    """Accumulated causal attention column sums (optionally normalised by ``n - j``)."""

    normalize: bool = False

    name: ClassVar[str] = "h2o"
    needs: ClassVar[frozenset[str]] = frozenset({ACCUMULATED})

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] accumulated attention per storage head."""
        if layer.acc_attn is None:
            raise ValueError(
                "h2o scorer needs the accumulated attention (LayerStats.acc_attn); "
                "capture with needs including 'accumulated'"
            )
        acc = layer.acc_attn.float()
        if self.normalize:
            n = layer.n
            seen_by = n - torch.arange(n, dtype=acc.dtype, device=acc.device)
            acc = acc / seen_by
        return stats.to_storage(acc)
