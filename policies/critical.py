"""CriticalKV (docs/policies.md §16): weight any scorer by how much each value moves the layer output.

``s'_s(j) = (s_s(j) + eps) * nu_s(j)`` where ``s`` are the inner scorer's storage-head scores and
``nu_s(j)`` the output norm of value j: per query head ``||W_o^h v_{g(h), j}||_1`` (captured only when
asked, ``VALUE_NORMS``), reduced to storage heads like any score (``stats.to_storage``: the mean over
the G query heads of KV head g by default; identity in query-head storage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lukv_bench.runtime.contract import VALUE_NORMS, LayerStats, PrefillStats, Scorer

from ._checks import check_range
from ._inner import build_inner


@dataclass
class CriticalScorer:
    """A scorer modifier: the ``inner`` scorer's scores times the values' output norms (CriticalKV, 2025)."""

    inner: str = "snapkv"  #: the registered scorer whose scores are weighted
    inner_params: dict[str, Any] = field(default_factory=dict)  #: parameters of the inner scorer
    epsilon: float = 1e-4  #: added to the inner score so a zero-attention token still ranks by its norm

    name: ClassVar[str] = "critical"
    needs: ClassVar[frozenset[str]] = frozenset({VALUE_NORMS})

    def __post_init__(self) -> None:
        check_range("critical scorer", "epsilon", self.epsilon, lo=0.0)
        self._inner: Scorer = build_inner("critical scorer", self.inner, self.inner_params)
        self.needs = frozenset(self._inner.needs) | {VALUE_NORMS}  # type: ignore[misc]

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] ``(inner + epsilon) * value norm`` per storage head."""
        norms = stats.to_storage(layer.require("value_norms", VALUE_NORMS, "critical scorer"))
        return (self._inner.score(layer, stats).float() + self.epsilon) * norms
