"""Expected Attention (docs/policies.md §20): the attention that *future* queries are expected to pay.

The prompt's queries before RoPE (captured only when asked, ``QUERIES``) give a Gaussian model of the
queries to come: mean ``mu`` and covariance ``Sigma`` per query head, over the prompt positions from
``skip`` on (or the last ``recent`` ones). RoPE of the next ``future`` positions, averaged into one matrix
``R``, moves them to where those queries will be; for a key k (stored after RoPE) the expected
un-normalised attention is ``E[exp(q.k / sqrt d)] = exp(R mu . k / sqrt d + k^T R Sigma R^T k / (2 d))``.
Normalised over the keys, reduced over the GQA group (``stats.to_storage``) and weighted by ``||v||_2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from lukv_bench.runtime.contract import QUERIES, LayerStats, PrefillStats

from ._checks import check_range


def query_moments(queries: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [H, D] and population covariance [H, D, D] of the queries [H, n, D] at positions ``first`` on."""
    q = queries[:, first:].float()
    mean = q.mean(dim=1)
    centred = q - mean[:, None]
    return mean, centred.transpose(1, 2) @ centred / q.shape[1]


def mean_rotation(cos: torch.Tensor, sin: torch.Tensor, dim: int) -> torch.Tensor:
    """[D, D] RoPE averaged over positions: ``mean_t R_t`` for (cos, sin) [T, R] in the rotate-half layout.

    ``R_t x = x * cos_t + rotate_half(x) * sin_t`` on the first R dimensions (identity on the others), so
    the mean is ``diag(mean cos) + diag(mean sin) P`` with ``P x = rotate_half(x)``.
    """
    r, half = cos.shape[-1], cos.shape[-1] // 2
    swap = torch.zeros(r, r, dtype=torch.float32, device=cos.device)
    swap[:half, half:] = -torch.eye(half, device=cos.device)
    swap[half:, :half] = torch.eye(half, device=cos.device)
    rotation = torch.eye(dim, dtype=torch.float32, device=cos.device)
    eye = torch.eye(r, dtype=torch.float32, device=cos.device)
    rotation[:r, :r] = cos.float().mean(0)[:, None] * eye + sin.float().mean(0)[:, None] * swap
    return rotation


def expected_logits(
    keys: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """[H, n] ``log E[exp(scale q.k)]`` for q ~ N(mean, cov) per head: ``scale mu.k + scale^2 k^T cov k / 2``.

    ``keys`` [H, n, D] (one row of keys per query head), ``mean`` [H, D], ``cov`` [H, D, D] or None (mean only).
    """
    k = keys.float()
    logits = (k @ mean[:, :, None]).squeeze(-1) * scale
    if cov is not None:
        logits = logits + ((k @ cov) * k).sum(dim=-1) * (scale * scale / 2)
    return logits


@dataclass
class ExpectedAttentionScorer:
    """Attention expected from future queries (Expected Attention, Devoto, Jeblick, Jégou 2025), x value norms."""

    recent: int = 0  #: queries of the last ``recent`` prompt positions estimate the statistics (0: all from ``skip``)
    skip: int = 4  #: first tokens left out of the statistics and the normalisation; they score the head's maximum
    future: int = 512  #: future positions whose RoPE is averaged
    covariance: bool = True  #: include the covariance term (False: the mean query alone)
    value_norm: bool = True  #: weight by ``||v||_2``
    epsilon: float = 0.0  #: added to the attention before the value-norm weight

    name: ClassVar[str] = "expected-attention"
    needs: ClassVar[frozenset[str]] = frozenset({QUERIES})

    def __post_init__(self) -> None:
        owner = "expected-attention scorer"
        check_range(owner, "recent", self.recent, lo=0)
        check_range(owner, "skip", self.skip, lo=0)
        check_range(owner, "future", self.future, lo=1)
        check_range(owner, "epsilon", self.epsilon, lo=0.0)

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] expected attention (group-reduced, value-norm weighted); the first ``skip`` tokens tie at the top."""
        queries = layer.require("queries", QUERIES, "expected-attention scorer")
        rotary = layer.rotary
        if rotary is None:
            raise ValueError("expected-attention scorer needs the layer's rotary map, which this prefill did not set")
        n_q, n, dim = queries.shape
        skip = min(self.skip, n - 1)  # at least one query and one key stay
        first = max(skip, n - self.recent) if self.recent else skip
        mean, cov = query_moments(queries, first)
        rotation = mean_rotation(*rotary(torch.arange(n, n + self.future, device=queries.device)), dim)
        mean = mean @ rotation.T
        cov = rotation @ cov @ rotation.T if self.covariance else None
        keys = layer.keys[:, skip:]
        per_query_head = keys.repeat_interleave(n_q // keys.shape[0], dim=0)  # query head h reads storage h // G
        attention = torch.softmax(expected_logits(per_query_head, mean, cov, 1 / math.sqrt(dim)), dim=-1)
        scores = stats.to_storage(attention)
        if self.value_norm:
            scores = (scores + self.epsilon) * layer.values[:, skip:].float().norm(dim=-1)
        top = scores.amax(dim=-1, keepdim=True)
        return torch.cat([top.expand(-1, skip), scores], dim=-1)
