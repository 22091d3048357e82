"""An example lukv-bench plugin: the ``keynorm`` scorer and a ``keynorm`` policy that uses it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lukv_bench.errors import ConfigError
from lukv_bench.hookspecs import hookimpl
from lukv_bench.policy import LayerStats, PolicySpec, PrefillStats


@dataclass
class KeyNormScorer:
    """Keys with a small L2 norm score high: they tend to attract attention, so they are kept.

    No attention statistics are needed, only the stored keys, so it works with any attention
    implementation. ``power`` only sharpens the ranking's spread (the order is the same for any
    positive power); it is here to show how a plugin param appears in the registry.
    """

    power: float = 1.0

    name: ClassVar[str] = "keynorm"
    needs: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        if not self.power > 0:
            raise ConfigError(f"keynorm scorer: power must be > 0 (got {self.power!r})")

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] minus the key norm of every stored head and token."""
        return -layer.keys.float().norm(dim=-1).pow(self.power)


@hookimpl
def register_scorers(register: Callable[[str, type], None]) -> None:
    """Register the ``keynorm`` scorer."""
    register("keynorm", KeyNormScorer)


@hookimpl
def register_policies(register: Callable[[Any], None]) -> None:
    """Register the ``keynorm`` policy: key-norm scores with uniform layer budgets."""
    register(PolicySpec("keynorm", "keynorm", "uniform", "Key norm: keep low-norm keys, uniform budgets"))
