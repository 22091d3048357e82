"""The built-in scorers, allocators, decode rules and policies, registered through the ``lukv_bench`` entry point.

This module is the ``builtin`` plugin: pyproject declares ``builtin = "lukv_bench.policies"`` in the
``lukv_bench`` entry point group, exactly as a third-party plugin would.
"""

from __future__ import annotations

from lukv_bench.registry.hookspecs import Register, hookimpl
from lukv_bench.runtime.contract import PolicySpec

from .adakv import AdaKVAllocator
from .cake import CakeAllocator, CakeScorer
from .chunk import ChunkScorer
from .critical import CriticalScorer
from .defensive import DefensiveScorer
from .expected_attention import ExpectedAttentionScorer
from .full import FullAllocator
from .global_topk import GlobalAllocator
from .h2o import H2OScorer
from .keydiff import KeyDiffScorer
from .kvzip import KVzipScorer
from .layer_uncertainty import LayerUncertaintyAllocator
from .output_cosine import OutputCosineAllocator
from .profiled import ProfiledAllocator
from .pyramidkv import PyramidAllocator
from .random_scores import RandomScorer
from .redirected_uncertainty import RedirectedUncertaintyAllocator
from .snapkv import SnapKVScorer
from .streaming import RecencyScorer, streaming_rule
from .tova import TOVARule, TOVAScorer
from .uniform import UniformAllocator

__all__ = [
    "AdaKVAllocator",
    "CakeAllocator",
    "CakeScorer",
    "ChunkScorer",
    "CriticalScorer",
    "DefensiveScorer",
    "ExpectedAttentionScorer",
    "FullAllocator",
    "GlobalAllocator",
    "H2OScorer",
    "KeyDiffScorer",
    "KVzipScorer",
    "LayerUncertaintyAllocator",
    "OutputCosineAllocator",
    "ProfiledAllocator",
    "PyramidAllocator",
    "RandomScorer",
    "RecencyScorer",
    "RedirectedUncertaintyAllocator",
    "SnapKVScorer",
    "TOVARule",
    "TOVAScorer",
    "UniformAllocator",
    "streaming_rule",
    "register_allocators",
    "register_decode_rules",
    "register_policies",
    "register_scorers",
]


@hookimpl
def register_scorers(register: Register) -> None:
    """The built-in scorers."""
    for cls in (
        RandomScorer,
        RecencyScorer,
        H2OScorer,
        SnapKVScorer,
        CakeScorer,
        KeyDiffScorer,
        TOVAScorer,
        DefensiveScorer,
        CriticalScorer,
        ChunkScorer,
        ExpectedAttentionScorer,
        KVzipScorer,
    ):
        register(cls)


@hookimpl
def register_allocators(register: Register) -> None:
    """The built-in allocators."""
    for cls in (
        FullAllocator,
        UniformAllocator,
        PyramidAllocator,
        AdaKVAllocator,
        LayerUncertaintyAllocator,
        CakeAllocator,
        RedirectedUncertaintyAllocator,
        OutputCosineAllocator,
        GlobalAllocator,
        ProfiledAllocator,
    ):
        register(cls)


@hookimpl
def register_decode_rules(register: Register) -> None:
    """The built-in decode-time rules: StreamingLLM's sinks + most recent tokens; TOVA's least-attended eviction."""
    register(streaming_rule, name="streaming")
    register(TOVARule(), name="tova")


@hookimpl
def register_policies(register: Register) -> None:
    """The built-in policies (docs/policies.md §1)."""
    register(
        PolicySpec("full", "recency", "full", "FullKV: no eviction (the reference)", aliases=("fullkv",))
    )
    register(PolicySpec("random", "random", "uniform", "Seeded random eviction, uniform budgets (a floor)"))
    register(
        PolicySpec(
            "streaming",
            "recency",
            "uniform",
            "StreamingLLM: attention sinks + most recent tokens; also evicts during decoding",
            params={"sinks": 4},
            aliases=("streamingllm",),
            decode="streaming",
        )
    )
    register(
        PolicySpec("h2o", "h2o", "uniform", "H2O (prefill): accumulated causal attention, uniform budgets")
    )
    register(PolicySpec("snapkv", "snapkv", "uniform", "SnapKV: pooled window votes, uniform budgets"))
    register(
        PolicySpec(
            "pyramidkv", "snapkv", "pyramid", "PyramidKV: SnapKV scores, budgets decreasing with depth"
        )
    )
    register(PolicySpec("adakv", "snapkv", "adakv", "AdaKV: SnapKV scores, head-wise adaptive budgets"))
    register(
        PolicySpec(
            "cake", "cake", "cake", "CAKE: layer budgets from dispersion x shift, mean+variance scores"
        )
    )
    register(
        PolicySpec(
            "layer-uncertainty",
            "snapkv",
            "layer-uncertainty",
            "ZigZagKV: SnapKV scores, layer budgets from attention-mass uncertainty (LMBA) with a floor",
            aliases=("zigzag", "zigzagkv"),
        )
    )
    register(
        PolicySpec(
            "layer-uncertainty-plus",
            "snapkv",
            "redirected-uncertainty",
            "Layer uncertainty redirected (docs/study.md): budgets ~ 1/LMBA (sharp layers first), AdaKV head "
            "split inside each layer, SnapKV scores pooled over 15 tokens",
            params={"power": -1.0, "head_alpha": 0.2, "kernel": 15},
        )
    )
    register(
        PolicySpec(
            "tova",
            "tova",
            "uniform",
            "TOVA (Oren et al. 2024): attention of the last prompt query, uniform budgets; while decoding each "
            "head drops the entry the newest query attends to least",
            decode="tova",
        )
    )
    register(
        PolicySpec(
            "keydiff",
            "keydiff",
            "uniform",
            "KeyDiff (Park et al. 2025): keys least similar to the mean key, uniform budgets",
        )
    )
    register(
        PolicySpec(
            "criticalkv",
            "critical",
            "adakv",
            "CriticalKV (Feng et al. 2025): SnapKV scores x values' output norms ||W_o v||_1, AdaKV head budgets",
            params={"inner": "snapkv"},
        )
    )
    register(
        PolicySpec(
            "defensivekv",
            "critical",
            "adakv",
            "DefensiveKV (Feng et al. 2025): max window aggregation with the mean clamp, x value output norms, "
            "head-wise budgets by one top-k per layer",
            params={"inner": "defensive", "alpha": 0.0, "normalize": False},
        )
    )
    register(
        PolicySpec(
            "layer-defensivekv",
            "critical",
            "global",
            "Layer-DefensiveKV (Feng et al. 2025): DefensiveKV's scores, budgets by one top-k across all layers "
            "and heads",
            params={"inner": "defensive"},
        )
    )
    register(
        PolicySpec(
            "chunkkv",
            "chunk",
            "uniform",
            "ChunkKV (Liu et al. 2025): SnapKV scores summed over chunks of 10 tokens, whole chunks kept, "
            "uniform budgets",
            params={"inner": "snapkv", "size": 10},
        )
    )
    register(
        PolicySpec(
            "expected-attention",
            "expected-attention",
            "uniform",
            "Expected Attention (Devoto, Jeblick, Jegou 2025): attention expected from future queries (Gaussian "
            "prompt queries, RoPE averaged over the next 512 positions) x value norms, uniform budgets",
        )
    )
    register(
        PolicySpec(
            "kvzip",
            "kvzip",
            "uniform",
            "KVzip (Kim et al. 2025): max attention from a teacher-forced repeat of the prompt (a second pass, "
            "timed in compress_s), uniform budgets",
        )
    )
    register(
        PolicySpec(
            "kvzip-plus",
            "kvzip",
            "redirected-uncertainty",
            "Study round 2's pick and the recommended default (docs/study.md): KVzip's repeat scores, layer "
            "budgets ~ 1/LMBA above ZigZagKV's floor, AdaKV head split inside each layer",
            params={"power": -1.0, "head_alpha": 0.2},
        )
    )
