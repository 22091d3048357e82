"""The policy contract: what scorers and allocators receive, and what they must return.

A *policy* is a named combination of a **scorer** (how important each cached prompt token is, per
storage head) and an **allocator** (how many tokens each layer — and optionally each head — keeps),
plus always-kept tokens (attention sinks, the recent window) and an optional decode-time rule.

Budgets are *mean tokens per layer, including the always-kept window* (see docs/policies.md §2.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from lukv_bench.errors import ConfigError
from lukv_bench.kernels.ops import group_reduce

#: the name of the FullKV policy: no eviction, the reference of every run (fidelity, ratios, the report)
FULL = "full"

#: Statistics a scorer/allocator may ask the capture step for (``needs``).
WINDOW = "window"  # window attention sums (always captured; cheap)
ACCUMULATED = "accumulated"  # H2O column sums of the whole causal attention (O(n) memory per head)
LAST_QUERY = "last_query"  # attention of the newest prompt query (TOVA)
WINDOW_MAX = "window_max"  # largest attention over the window queries per key (DefensiveKV)
VALUE_NORMS = "value_norms"  # L1 norm of each value's output contribution through o_proj (CriticalKV)
QUERIES = "queries"  # every prompt position's query before RoPE, plus the model's rotary map (Expected Attention)
#: the statistics captured only when a scorer or allocator asks for them (``needs``)
OPTIONAL_NEEDS = frozenset({ACCUMULATED, LAST_QUERY, WINDOW_MAX, VALUE_NORMS, QUERIES})
#: What a decode rule may ask for (its ``needs``): the softmax attention of the newest query over each
#: head's entries, recorded during the forward for the cells whose rule needs it (TOVA's decode rule)
NEWEST_ATTENTION = "newest_attention"
#: every name a decode rule's ``needs`` may hold
DECODE_NEEDS = frozenset({NEWEST_ATTENTION})
#: KVzip's statistic: max attention from a teacher-forced repeat of the prompt, a second pass over the model;
#: it is named with its chunk length (:func:`repeat_need`), which changes what it measures
REPEAT = "repeat"


def repeat_need(chunk: int) -> str:
    """The ``needs`` name of the repeat statistic whose pass repeats the prompt ``chunk`` tokens at a time."""
    return f"{REPEAT}:{int(chunk)}"


def repeat_chunk(need: str) -> int | None:
    """The chunk length a ``needs`` name asks the repeat pass for, or None when it names another statistic."""
    head, _, chunk = need.partition(":")
    return int(chunk) if head == REPEAT and chunk.isdigit() and int(chunk) > 0 else None


def captured_needs(needs: Collection[str]) -> frozenset[str]:
    """The names in ``needs`` that make a prefill compute something beyond the always-captured window sums."""
    return frozenset(n for n in needs if n in OPTIONAL_NEEDS or repeat_chunk(n) is not None)


@dataclass
class LayerStats:
    """What one layer's prefill left behind for the policies (batch size 1).

    Shapes use ``S`` = storage heads (KV heads, or query heads in query-head storage mode),
    ``Hq`` = query heads, ``n`` = prompt tokens. All attention statistics are float32.
    """

    layer: int
    keys: torch.Tensor  #: [S, n, D] post-RoPE keys as they will be stored
    values: torch.Tensor  #: [S, n, D]
    win_sum: torch.Tensor  #: [Hq, n] sum over the w window queries of their softmax attention
    win_sumsq: torch.Tensor  #: [Hq, n] sum over the window queries of attention squared (for variances)
    win_entropy: torch.Tensor  #: [Hq] sum over window rows of -sum_{j < n-w} A log A (CAKE's dispersion)
    window: int  #: number of window queries actually used, min(w, n)
    acc_attn: torch.Tensor | None = None  #: [Hq, n] causal column sums (H2O), if a policy asked for them
    last_attn: torch.Tensor | None = None  #: [Hq, n] softmax attention of the last prompt query (LAST_QUERY)
    win_max: torch.Tensor | None = None  #: [Hq, n] max over the window queries of their attention (WINDOW_MAX)
    #: [Hq, n] ``||W_o^h v_j||_1``: what value j adds to the layer output through query head h (VALUE_NORMS)
    value_norms: torch.Tensor | None = None
    queries: torch.Tensor | None = None  #: [Hq, n, D] the prompt's queries before RoPE (QUERIES)
    #: chunk length -> [Hq, n] max attention each prompt token receives from the repeat pass (``repeat_need``)
    repeat_max: dict[int, torch.Tensor] | None = None
    #: positions [m] -> (cos, sin) [m, R] of the layer's rotary embedding (R <= D rotated dims); with QUERIES
    rotary: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def n(self) -> int:
        """Prompt length seen by this layer."""
        return self.keys.shape[1]

    def require(self, name: str, need: str, owner: str) -> torch.Tensor:
        """The optional statistic ``name`` (a field of this class), or a ValueError naming the missing ``need``."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{owner} needs the {need!r} statistic, which this prefill did not capture")
        return value

    @property
    def win_mean(self) -> torch.Tensor:
        """[Hq, n] window-averaged attention distribution (each row sums to 1)."""
        return self.win_sum / self.window

    @property
    def win_var(self) -> torch.Tensor:
        """[Hq, n] variance over the window queries of the attention each key receives."""
        mean = self.win_mean
        return (self.win_sumsq / self.window - mean * mean).clamp_min(0.0)


@dataclass
class PrefillStats:
    """Everything captured from one prefill: per-layer statistics plus model geometry."""

    layers: list[LayerStats]
    n_q_heads: int
    n_kv_heads: int
    storage: str = "kv"  #: "kv" (one entry per KV head) or "query" (one per query head, G x memory)
    gqa_reduce: str = "mean"  #: how query-head scores of a GQA group become one KV-head score

    @property
    def n(self) -> int:
        """Prompt length (tokens)."""
        return self.layers[0].n

    @property
    def n_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layers)

    @property
    def group(self) -> int:
        """GQA group size G = Hq / Hkv."""
        return self.n_q_heads // self.n_kv_heads

    @property
    def n_storage_heads(self) -> int:
        """Heads that hold their own token set: Hkv in kv mode, Hq in query mode."""
        return self.n_kv_heads if self.storage == "kv" else self.n_q_heads

    def to_storage(self, per_query_head: torch.Tensor) -> torch.Tensor:
        """Reduce a [Hq, n] per-query-head score to storage heads [S, n] (identity in query mode)."""
        if self.storage == "query":
            return per_query_head
        if self.gqa_reduce not in ("mean", "max", "sum"):
            raise ConfigError(f"gqa_reduce must be one of mean, max, sum (got {self.gqa_reduce!r})")
        return group_reduce(per_query_head, self.n_kv_heads, self.gqa_reduce)


@dataclass
class Allocation:
    """Tokens kept per layer (and per storage head when heads differ), including always-kept ones."""

    per_layer: list[int]
    per_head: list[list[int]] | None = None  #: [L][S]; None means every head keeps per_layer[l]
    info: dict[str, Any] = field(default_factory=dict)  #: allocator statistics for results (JSON-able)

    def head_counts(self, layer: int, n_heads: int) -> list[int]:
        """Tokens kept by each storage head of ``layer``."""
        if self.per_head is not None:
            return list(self.per_head[layer])
        return [self.per_layer[layer]] * n_heads


@dataclass
class Budget:
    """A resolved budget: mean tokens per layer (incl. window), with the ratio it came from."""

    tokens: int  #: mean tokens per layer per storage head, incl. always-kept tokens
    ratio: float  #: tokens / context length
    spec: Any = None  #: what the user wrote (a float ratio or {"tokens": N})

    @staticmethod
    def resolve(spec: float | int | dict, n: int) -> Budget:
        """Turn a ratio (0 < r <= 1, or > 1 meaning 'everything') or ``{"tokens": N}`` into tokens for a prompt of n."""
        if isinstance(spec, dict):
            tokens = int(spec["tokens"])
            if tokens < 1:
                raise ConfigError(f"budget tokens must be >= 1 (got {tokens})")
            return Budget(tokens=tokens, ratio=tokens / n, spec=spec)
        ratio = float(spec)
        if not ratio > 0:
            raise ConfigError(f"budget ratio must be > 0 (got {spec})")
        tokens = max(1, math.ceil(ratio * n)) if ratio < 1 else n
        return Budget(tokens=tokens, ratio=ratio, spec=spec)


def budget_problem(spec: Any, window: int) -> str | None:
    """Why a budget as a user wrote it is refused, else None: the one rule of suites and ``compress()``.

    A budget is a ratio of the context in (0, 1] or ``{"tokens": N}`` with N above the observation
    window (at or below it every policy keeps just the newest N tokens).
    """
    if isinstance(spec, dict):
        tokens = spec.get("tokens")
        if set(spec) != {"tokens"} or isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            return f"expected {{'tokens': N}} with an integer N >= 1, got {spec!r}"
        if tokens <= window:
            return (f"budget {tokens} is not above the observation window ({window}): every policy would keep "
                    f"just the last {tokens} tokens; use budgets > {window} or a smaller window")
        return None
    if isinstance(spec, bool) or not isinstance(spec, (int, float)):
        return f"expected a ratio in (0, 1] or {{'tokens': N}}, got {spec!r}"
    if not 0 < spec <= 1:
        return f"ratio must be in (0, 1], got {spec}; for token counts write {{'tokens': N}}"
    return None


def budget_warning(budget_tokens: int, context_tokens: int, window: int) -> str | None:
    """Why a resolved budget makes every policy alike (at or below the window), else None.

    Ratios can only be checked once the prompt length is known; suites put this in a record's
    ``meta.budget_warning`` and ``compress()`` warns with it.
    """
    if context_tokens <= window:
        return (f"the compressed context ({context_tokens} tokens) is not longer than the observation window "
                f"({window}), which every policy keeps: no policy evicts anything; use longer contexts or "
                "a smaller window")
    if budget_tokens > window or budget_tokens >= context_tokens:
        return None
    return (
        f"a budget of {budget_tokens} tokens (of {context_tokens}) is at or below the observation window "
        f"({window}): every policy keeps just the last {budget_tokens} tokens, so policies cannot "
        "differ; use larger budgets or a smaller window"
    )


@runtime_checkable
class Scorer(Protocol):
    """Importance of each cached prompt token, per storage head (higher = keep)."""

    name: str
    needs: frozenset[str]

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """Return [S, n] float scores for ``layer`` (S = ``stats.n_storage_heads``)."""
        ...


@runtime_checkable
class Allocator(Protocol):
    """Splits a mean per-layer budget over layers (and optionally over heads within a layer).

    An allocator class may also set ``layer_adaptive = False`` when it gives every layer the same
    budget (uniform, FullKV); read it with :func:`is_layer_adaptive`. Without it an allocator counts
    as layer-adaptive (the report and the profile then compare its per-layer budgets with uniform).
    """

    name: str
    needs: frozenset[str]
    #: True: the core checks that the layer counts sum to exactly ``L * min(budget, n)``; False for
    #: allocators that ignore the budget by design (FullKV) or round it on purpose (PyramidKV, exact=false)
    exact_total: bool

    def allocate(self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]) -> Allocation:
        """Return the allocation for a mean budget of ``budget`` tokens per layer (incl. ``window``).

        ``scores`` are the scorer's [S, n] outputs per layer (head-wise allocators such as AdaKV use them).
        The total must be exactly ``L * min(budget, n)`` storage-head tokens per head on average.
        """
        ...


def is_layer_adaptive(allocator: Any) -> bool:
    """Whether an allocator (class or instance) may give layers different budgets (its ``layer_adaptive``)."""
    return bool(getattr(allocator, "layer_adaptive", True))


@runtime_checkable
class DecodeRule(Protocol):
    """Decode-time eviction for one layer of one setting, run after each generated token.

    Registered as a function (or a callable object) with ``register(fn, name=...)`` in
    ``register_decode_rules``; a :class:`PolicySpec` names it in ``decode``. A rule may declare
    ``needs``, names from :data:`DECODE_NEEDS` (read with :func:`decode_needs`); one whose ``needs`` holds
    :data:`NEWEST_ATTENTION` is also passed ``attention=``: per storage head, a float32 tensor [len]
    (its entries in logical order, oldest first) of the softmax attention the newest query gave
    them, itself included, reduced over the query heads that read the head with the run's
    ``gqa_reduce`` (one query head in query-head storage). Only the cells such a rule decodes pay for it.
    """

    def __call__(
        self, lens_per_head: list[int], logical_len: int, budget_per_head: list[int], params: Mapping[str, Any]
    ) -> list[torch.Tensor] | None:
        """Per storage head, the positions of its segment to keep (oldest first), or None to keep all.

        ``lens_per_head``: tokens each head holds now; ``logical_len``: tokens seen so far;
        ``budget_per_head``: the size each head is held at; ``params``: the policy's resolved params.
        """
        ...


def decode_needs(rule: Any) -> frozenset[str]:
    """What a decode rule asks for besides the lengths (its optional ``needs``; empty when it has none)."""
    return frozenset(getattr(rule, "needs", None) or ())


@dataclass
class PolicySpec:
    """A registered policy: a scorer and an allocator by name, with keep rules and default params.

    ``params`` are passed to the scorer and allocator factories (each takes the keys it knows).
    The registry records which plugin (distribution, version) registered it.
    """

    name: str
    scorer: str
    allocator: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    decode: str | None = None  #: optional registered decode-time rule (e.g. "streaming"); None = append only
