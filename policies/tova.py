"""TOVA (docs/policies.md §14): keep the tokens the newest query attends to most, at the prompt and while decoding.

At the end of the prompt, ``s_h(j) = softmax(q_{n-1} K_h^T / sqrt(d))_j``: the attention row of the
last prompt token per query head, reduced to storage heads (``stats.to_storage``), ranks what each
head keeps (the scorer ``tova``). While decoding, every head is held at the size it has after
compression (:class:`TOVARule`, the decode rule ``tova``): after each generated token a head over its
size drops the entries the newest query attends to least, the new token itself included.

TOVA averages the attention over all heads of a layer and keeps one token set per layer; here each
storage head keeps its own set, ranked by the attention of the query heads that read it, reduced with
the run's ``gqa_reduce`` (as the prefill scorer does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lukv_bench.runtime.contract import LAST_QUERY, NEWEST_ATTENTION, LayerStats, PrefillStats


@dataclass
class TOVAScorer:
    """Attention of the last prompt query (TOVA, Oren et al. 2024), per query head, group-reduced."""

    name: ClassVar[str] = "tova"
    needs: ClassVar[frozenset[str]] = frozenset({LAST_QUERY})

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] the newest prompt query's attention over the prompt."""
        return stats.to_storage(layer.require("last_attn", LAST_QUERY, "tova scorer"))


def tova_decode_keep(
    attention: list[torch.Tensor], budget_per_head: list[int], sinks: int = 0
) -> list[torch.Tensor] | None:
    """Segment positions each head keeps: its ``budget`` entries with the highest newest-query attention.

    ``attention[h]`` is head ``h``'s [len] attention (logical order). A head over its budget drops its
    ``len - budget`` lowest entries; among equal weights the older entry goes first. The first ``sinks``
    entries (the policy's attention sinks; none by default) rank above every other. Positions come back
    oldest first. Returns None when no head is over budget (nothing to do).
    """
    if all(att.numel() <= budget for att, budget in zip(attention, budget_per_head, strict=True)):
        return None
    keep = []
    for att, budget in zip(attention, budget_per_head, strict=True):
        length = att.numel()
        if length <= budget:
            keep.append(torch.arange(length))
            continue
        rank = att.detach().float().cpu()
        if sinks > 0:
            rank = rank.clone()  # .cpu() of a CPU tensor is the caller's tensor itself
            rank[:sinks] = float("inf")
        dropped = torch.sort(rank, stable=True).indices[: length - max(1, budget)]
        kept = torch.ones(length, dtype=torch.bool)
        kept[dropped] = False
        keep.append(kept.nonzero().squeeze(1))
    return keep


@dataclass(frozen=True)
class TOVARule:
    """TOVA while decoding: a head over its size drops what the newest query attends to least.

    The ``tova`` :class:`~lukv_bench.runtime.contract.DecodeRule`; it needs the newest query's attention
    (``NEWEST_ATTENTION``), which the cache computes for the cells this rule decodes only.
    """

    needs: ClassVar[frozenset[str]] = frozenset({NEWEST_ATTENTION})

    def __call__(
        self,
        lens_per_head: list[int],
        logical_len: int,
        budget_per_head: list[int],
        params: Mapping[str, Any],
        attention: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor] | None:
        """Per storage head, the positions to keep (see :func:`tova_decode_keep`), or None to keep all."""
        if attention is None:
            raise ValueError("the tova decode rule needs the newest query's attention (attention=...)")
        got = [int(a.numel()) for a in attention]
        if got != list(lens_per_head):
            raise ValueError(f"attention over {got} entries per head, the heads hold {list(lens_per_head)}")
        return tova_decode_keep(attention, budget_per_head, int(params.get("sinks", 0)))
