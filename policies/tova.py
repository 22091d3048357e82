"""TOVA (docs/policies.md §14): keep the tokens the newest prompt query attends to most.

``s_h(j) = softmax(q_{n-1} K_h^T / sqrt(d))_j``, the attention row of the last prompt token per query
head, reduced to storage heads (``stats.to_storage``). This is TOVA's eviction at the end of the
prompt (its prefill form); its eviction at every decoding step is not implemented (§14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import LAST_QUERY, LayerStats, PrefillStats


@dataclass
class TOVAScorer:
    """Attention of the last prompt query (TOVA, Oren et al. 2024), per query head, group-reduced."""

    name: ClassVar[str] = "tova"
    needs: ClassVar[frozenset[str]] = frozenset({LAST_QUERY})

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] the newest prompt query's attention over the prompt."""
        return stats.to_storage(layer.require("last_attn", LAST_QUERY, "tova scorer"))
