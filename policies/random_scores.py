"""Random eviction: a seeded uniform-random score per token (a floor any real policy should beat)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.errors import ConfigError
from lukv_bench.runtime.contract import LayerStats, PrefillStats


@dataclass
class RandomScorer:
    """Uniform random scores, reproducible from ``seed`` (each layer draws its own stream)."""

    seed: int = 0

    name: ClassVar[str] = "random"
    needs: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"random scorer: seed must be >= 0 (got {self.seed!r})")

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] uniform random scores, a function of (seed, layer index) only."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + layer.layer)
        scores = torch.rand(stats.n_storage_heads, layer.n, generator=gen)
        return scores.to(layer.keys.device)
