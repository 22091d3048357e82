"""KeyDiff (docs/policies.md §13): keep the keys least similar to the layer's mean key; no attention needed.

``s_h(j) = -cos(k_{h,j}, m_h)`` with the anchor ``m_h = mean_j k_{h,j} / ||k_{h,j}||`` over the head's
``n`` stored keys, so the tokens whose keys point away from the common direction score highest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from lukv_bench.runtime.contract import LayerStats, PrefillStats


def key_diversity(keys: torch.Tensor) -> torch.Tensor:
    """[S, n] ``-cos(k_j, anchor)`` for [S, n, D] keys, the anchor being the mean of the unit keys of each head."""
    k = keys.float()
    anchor = F.normalize(k, dim=-1).mean(dim=1, keepdim=True)  # [S, 1, D]
    return -F.cosine_similarity(k, anchor.expand_as(k), dim=-1)


@dataclass
class KeyDiffScorer:
    """Key diversity (KeyDiff, 2025): attention-free, so it works with any attention implementation."""

    name: ClassVar[str] = "keydiff"
    needs: ClassVar[frozenset[str]] = frozenset()

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] negative cosine similarity of each stored key to its head's mean unit key."""
        return key_diversity(layer.keys)
