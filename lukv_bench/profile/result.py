"""The result of a profile: every sample's measures (:class:`SampleProfile`) and what was skipped.

:mod:`lukv_bench.profile.tables` turns it into tables, :mod:`lukv_bench.profile.plots` into plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lukv_bench.profile.options import ProfileSettings


@dataclass
class SampleProfile:
    """The measures of one sample (token counts, not yet ratios)."""

    task: str
    sample_id: str
    prompt_tokens: int
    context_tokens: int
    truncated_from: int | None  #: prompt tokens before truncation (None: not truncated)
    lmba: torch.Tensor  #: [T, L, Hkv] tokens, one row per tau
    lmbo: torch.Tensor  #: [C, L, Hkv] tokens, one row per cosine threshold
    ablation: torch.Tensor | None  #: [L] drop of mean answer log-likelihood (nats/token); None: skipped
    answer: str
    answer_tokens: int
    span_tokens: int  #: answer-bearing context tokens hidden by the ablation (0 when skipped)
    baseline_ll: float | None  #: mean answer log-likelihood with nothing hidden (None: empty answer)
    allocations: dict[str, list[int]]  #: policy -> tokens kept per layer at the settings' budget

    def describe(self) -> dict[str, Any]:
        """JSON-able identity and scalars of the sample (the measures go to the tables)."""
        return {
            "task": self.task,
            "sample_id": self.sample_id,
            "prompt_tokens": self.prompt_tokens,
            "context_tokens": self.context_tokens,
            "truncated_from": self.truncated_from,
            "answer": self.answer,
            "answer_tokens": self.answer_tokens,
            "span_tokens": self.span_tokens,
            "baseline_ll": self.baseline_ll,
            "ablation_skipped": self.ablation is None,
        }


@dataclass
class ProfileResult:
    """Every sample's measures plus what was skipped (the tables are built by :mod:`lukv_bench.profile.tables`)."""

    model: str
    settings: ProfileSettings
    samples: list[SampleProfile]
    skipped: list[str] = field(default_factory=list)  #: human-readable lines
    n_layers: int = 0
    n_kv_heads: int = 0
    data_source: list[str] = field(default_factory=list)

    def ablation_skipped(self) -> list[str]:
        """Ids of samples whose answer was not found in the context."""
        return [f"{sp.task}:{sp.sample_id}" for sp in self.samples if sp.ablation is None]
