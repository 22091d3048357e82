"""The runtime policy: a resolved scorer + allocator that plans what a prefill keeps at a budget.

:class:`Policy` objects come from :func:`lukv_bench.registry.resolve_policy`. ``plan()`` turns one
prefill's statistics and a budget into an :class:`~lukv_bench.runtime.contract.Allocation` and the kept token
indices of every layer; ``decode_keep()`` applies the policy's registered decode-time rule, if any.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lukv_bench.errors import ConfigError
from lukv_bench.registry.components import Origin
from lukv_bench.runtime.contract import NEWEST_ATTENTION, Allocation, Budget, PrefillStats, decode_needs
from lukv_bench.runtime.selection import KeepSet, select_all


class AllocationError(RuntimeError):
    """An allocator returned counts that break the contract (a bug in it, not a user error)."""


@dataclass
class Plan:
    """What a policy keeps for one prefill at one budget."""

    allocation: Allocation
    keep: list[KeepSet]  #: per layer, ragged kept indices per storage head
    scores: list[torch.Tensor] | None = None  #: the scorer's [S, n] outputs (None when nothing is evicted)

    @property
    def total_kept(self) -> int:
        """Kept (layer, storage head, token) entries."""
        return sum(int(k.indices.numel()) for k in self.keep)


@dataclass
class Policy:
    """A resolved policy: scorer and allocator instances, always-kept tokens, full params and provenance."""

    name: str
    spec: str | dict[str, Any]  #: what the user wrote
    scorer: Any
    allocator: Any
    sinks: int
    params: dict[str, Any]  #: every param with its value, defaults included (JSON-able, for results)
    scorer_name: str = ""
    allocator_name: str = ""
    #: name of the registered decode-time eviction rule, None: append only
    decode_rule: str | None = None
    #: the rule itself (a :class:`~lukv_bench.runtime.contract.DecodeRule`), looked up in the registry
    decode_fn: Callable[..., list[torch.Tensor] | None] | None = field(default=None, repr=False)
    #: where each part came from: "policy" (None for a custom combination), "scorer", "allocator", "decode"
    origins: dict[str, Origin | None] = field(default_factory=dict)
    #: scores of the last prefill seen: they do not depend on the budget, so a sweep scores once
    _last_scores: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def plugin(self) -> str:
        """The plugin that registered the policy ("" for a custom combination)."""
        origin = self.origins.get("policy")
        return origin.plugin if origin is not None else ""

    @property
    def needs(self) -> frozenset[str]:
        """Statistics the capture step must provide (union of scorer and allocator needs)."""
        return frozenset(self.scorer.needs) | frozenset(self.allocator.needs)

    def describe(self) -> dict[str, Any]:
        """JSON-able identity for results: name, scorer, allocator, decode rule, every param resolved, and
        the plugin, distribution and version that supplied each component."""
        names = {"policy": self.name, "scorer": self.scorer_name, "allocator": self.allocator_name,
                 "decode": self.decode_rule}
        components = {}
        for part, name in names.items():
            origin = self.origins.get(part)
            if name is not None and origin is not None:
                components[part] = {"name": name, **origin.describe()}
        return {
            "name": self.name,
            "scorer": self.scorer_name,
            "allocator": self.allocator_name,
            "decode": self.decode_rule,
            "params": dict(self.params),
            "plugin": self.plugin,
            "components": components,
        }

    def plan(self, stats: PrefillStats, budget: Budget | int, window: int = 32) -> Plan:
        """Allocation and kept indices for every layer, for a mean budget incl. ``window`` and sinks.

        A budget of at least the prompt length keeps everything (identical to FullKV) without
        scoring. ``window`` is the run's observation window: the newest tokens every head keeps.
        """
        tokens = budget.tokens if isinstance(budget, Budget) else int(budget)
        if tokens < 1:
            raise ConfigError(f"budget must be at least 1 token (got {tokens})")
        if window < 0:
            raise ConfigError(f"window must be >= 0 (got {window})")
        n, n_layers, n_heads = stats.n, stats.n_layers, stats.n_storage_heads
        if tokens >= n:
            everything = torch.arange(n, device=stats.layers[0].keys.device).repeat(n_heads)
            cu = torch.arange(n_heads + 1, dtype=torch.long, device=everything.device) * n
            keep = [KeepSet(indices=everything.clone(), cu_seqlens=cu.clone()) for _ in range(n_layers)]
            return Plan(allocation=Allocation(per_layer=[n] * n_layers), keep=keep)
        scores = self._scores(stats)
        allocation = self.allocator.allocate(stats, tokens, window, scores)
        self._check(allocation, stats, tokens)
        return Plan(
            allocation=allocation, keep=select_all(scores, allocation, self.sinks, window), scores=scores
        )

    def _scores(self, stats: PrefillStats) -> list[torch.Tensor]:
        """The scorer's [S, n] scores per layer, computed once per prefill (budgets share them)."""
        if self._last_scores is not None and self._last_scores[0]() is stats:
            return self._last_scores[1]
        n, n_heads = stats.n, stats.n_storage_heads
        scores = [self.scorer.score(layer, stats) for layer in stats.layers]
        for layer, s in enumerate(scores):
            if tuple(s.shape) != (n_heads, n):
                raise AllocationError(
                    f"scorer {self.scorer_name!r} returned shape {tuple(s.shape)} for layer {layer}; "
                    f"expected [{n_heads}, {n}]"
                )
        self._last_scores = (weakref.ref(stats), scores)
        return scores

    def _check(self, alloc: Allocation, stats: PrefillStats, tokens: int) -> None:
        n, n_layers, n_heads = stats.n, stats.n_layers, stats.n_storage_heads
        who = f"allocator {self.allocator_name!r}"

        def fail(msg: str) -> AllocationError:
            return AllocationError(f"{who} (policy {self.name!r}): {msg}")

        if len(alloc.per_layer) != n_layers:
            raise fail(f"{len(alloc.per_layer)} layer counts for {n_layers} layers")
        for layer, c in enumerate(alloc.per_layer):
            if not isinstance(c, int) or not 1 <= c <= n:
                raise fail(f"layer {layer} keeps {c!r} tokens; must be an int in [1, {n}]")
        if alloc.per_head is not None:
            if len(alloc.per_head) != n_layers:
                raise fail("per_head must have one list per layer")
            for layer, heads in enumerate(alloc.per_head):
                if len(heads) != n_heads or any(not isinstance(c, int) or not 1 <= c <= n for c in heads):
                    raise fail(f"layer {layer} per-head counts {heads!r} must be {n_heads} ints in [1, {n}]")
                if sum(heads) != n_heads * alloc.per_layer[layer]:
                    raise fail(f"layer {layer} per-head counts do not average to {alloc.per_layer[layer]}")
        if self.allocator.exact_total and sum(alloc.per_layer) != n_layers * min(tokens, n):
            raise fail(f"layer counts sum to {sum(alloc.per_layer)}, expected {n_layers * min(tokens, n)}")

    @property
    def decode_needs(self) -> frozenset[str]:
        """What the decode rule asks the decode step for (e.g. ``NEWEST_ATTENTION``); empty without a rule."""
        return decode_needs(self.decode_fn)

    def decode_keep(
        self, lens_per_head: list[int], logical_len: int, budget_per_head: list[int],
        attention: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor] | None:
        """Decode-time eviction for one layer: per head, the segment positions to keep, or None.

        Runs the policy's registered decode rule (e.g. ``streaming``: a head over its budget keeps its
        first ``sinks`` entries and its most recent ones) with the policy's resolved params. ``attention``
        (per head, the newest query's attention over its entries) goes to a rule that needs
        ``NEWEST_ATTENTION`` (``tova``), and only to it.
        """
        if self.decode_fn is None:
            return None
        if NEWEST_ATTENTION not in self.decode_needs:
            return self.decode_fn(lens_per_head, logical_len, budget_per_head, self.params)
        if attention is None:
            raise ValueError(f"decode rule {self.decode_rule!r} needs the newest query's attention")
        return self.decode_fn(lens_per_head, logical_len, budget_per_head, self.params, attention=attention)
