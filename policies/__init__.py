"""The built-in scorers, allocators, decode rules and policies, registered through the ``lukv_bench`` entry point.

This module is the ``builtin`` plugin: pyproject declares ``builtin = "lukv_bench.policies"`` in the
``lukv_bench`` entry point group, exactly as a third-party plugin would.
"""

from __future__ import annotations

from lukv_bench.registry.hookspecs import Register, hookimpl
from lukv_bench.runtime.contract import PolicySpec

from .adakv import AdaKVAllocator
from .cake import CakeAllocator, CakeScorer
from .full import FullAllocator
from .h2o import H2OScorer
from .layer_uncertainty import LayerUncertaintyAllocator
from .output_cosine import OutputCosineAllocator
from .pyramidkv import PyramidAllocator
from .random_scores import RandomScorer
from .redirected_uncertainty import RedirectedUncertaintyAllocator
from .snapkv import SnapKVScorer
from .streaming import RecencyScorer, streaming_rule
from .uniform import UniformAllocator

__all__ = [
    "AdaKVAllocator",
    "CakeAllocator",
    "CakeScorer",
    "FullAllocator",
    "H2OScorer",
    "LayerUncertaintyAllocator",
    "OutputCosineAllocator",
    "PyramidAllocator",
    "RandomScorer",
    "RecencyScorer",
    "RedirectedUncertaintyAllocator",
    "SnapKVScorer",
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
    for cls in (RandomScorer, RecencyScorer, H2OScorer, SnapKVScorer, CakeScorer):
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
    ):
        register(cls)


@hookimpl
def register_decode_rules(register: Register) -> None:
    """The built-in decode-time rule: StreamingLLM's sinks + most recent tokens."""
    register(streaming_rule, name="streaming")


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
