"""Compute kernels of lukv-bench: a torch reference and a Triton kernel for each op, one dispatcher.

* :func:`compact` gathers kept tokens into a flat ragged buffer;
* :func:`window_stats` (plus :func:`window_max`, :func:`group_reduce`, :func:`attention_mass_budget`) scores
  keys by the attention of the last prompt queries (SnapKV family, CAKE, DefensiveKV);
* :func:`accumulated_attention` gives H2O's causal column sums in O(n) memory;
* :func:`ragged_attention` attends over the ragged per-head cache;
* :func:`cap_scores` soft-caps attention logits (Gemma 2), as the kernels do with ``softcap=``;
* :class:`RaggedStore`, :func:`append` and :func:`truncate` hold and grow that cache.

:func:`backend` picks Triton for CUDA tensors and torch otherwise (override: ``LUKV_BENCH_BACKEND``).
"""

from ._softcap import cap_scores
from .accumulated import accumulated_attention
from .append import RaggedStore, append, reserve, truncate
from .compact import compact
from .dispatch import backend, interpreting
from .ragged_attention import ragged_attention
from .window_scores import attention_mass_budget, group_reduce, window_max, window_stats

__all__ = [
    "RaggedStore",
    "accumulated_attention",
    "append",
    "attention_mass_budget",
    "backend",
    "cap_scores",
    "compact",
    "group_reduce",
    "interpreting",
    "ragged_attention",
    "reserve",
    "truncate",
    "window_max",
    "window_stats",
]
