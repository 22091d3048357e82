"""KVzip (docs/policies.md §21): keep what the model needs to *repeat* the prompt; query-agnostic.

After the prefill the engine runs a second pass (``runtime.capture.repeat_attention``): the model is asked
to repeat the prompt and reads it back, teacher-forced, one request per ``chunk`` prompt tokens. Token j's
score is the largest attention it receives from any query of that pass, per query head (the statistic
``repeat_need(chunk)``), and the largest over a GQA group's query heads per KV head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from lukv_bench.kernels.ops import group_reduce

from lukv_bench.runtime.contract import LayerStats, PrefillStats, repeat_need

from ._checks import check_range

#: KVzip's chunk length: prompt tokens repeated by one request of the repeat pass
DEFAULT_CHUNK = 2048


@dataclass
class KVzipScorer:
    """Max attention from a teacher-forced repeat of the prompt (KVzip, Kim et al. 2025), max over the group."""

    chunk: int = DEFAULT_CHUNK  #: prompt tokens per repeat request (bounds the pass's memory; changes the scores)

    name: ClassVar[str] = "kvzip"
    needs: ClassVar[frozenset[str]] = frozenset({repeat_need(DEFAULT_CHUNK)})

    def __post_init__(self) -> None:
        check_range("kvzip scorer", "chunk", self.chunk, lo=1)
        self.needs = frozenset({repeat_need(self.chunk)})  # type: ignore[misc]

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] the repeat pass's largest attention per token; a KV head takes its query heads' maximum."""
        got = (layer.repeat_max or {}).get(self.chunk)
        if got is None:
            raise ValueError(
                f"kvzip scorer needs the {repeat_need(self.chunk)!r} statistic, which this prefill did not capture"
            )
        got = got.float()
        return got if stats.storage == "query" else group_reduce(got, stats.n_kv_heads, "max")
