"""Turn a policy's scores and allocation into the token indices each storage head keeps.

Always-kept tokens are expressed as score boosts so one top-k serves every case, including
budgets smaller than the always-kept set: the recent window wins first (newest first), then the
attention sinks, then the scorer's ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lukv_bench.runtime.contract import Allocation


@dataclass
class KeepSet:
    """Kept prompt-token indices of one layer in ragged form (ascending within each head)."""

    indices: torch.Tensor  #: [N] int64, token positions, head segments concatenated
    cu_seqlens: torch.Tensor  #: [S+1] int64 offsets of each head's segment in ``indices``

    @property
    def counts(self) -> list[int]:
        """Tokens kept per storage head."""
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()


def boosted_scores(scores: torch.Tensor, sinks: int, window: int) -> torch.Tensor:
    """Scores with the last ``window`` and first ``sinks`` tokens forced to the top, window first."""
    s = scores.float().clone()
    n = s.shape[-1]
    s = torch.nan_to_num(s, nan=float("-inf"))
    finite = s[torch.isfinite(s)]
    top = (finite.abs().max().item() if finite.numel() else 0.0) + 1.0
    if sinks > 0:
        s[:, : min(sinks, n)] = 2 * top
    if window > 0:
        w = min(window, n)
        # newest token highest, so a budget smaller than the window keeps the most recent tokens
        s[:, n - w :] = 4 * top + torch.arange(w, device=s.device, dtype=s.dtype)
    return s


def select(scores: torch.Tensor, counts: list[int], sinks: int = 0, window: int = 0) -> KeepSet:
    """Keep ``counts[h]`` tokens of head h: always-kept ones first, then the highest scores.

    ``scores`` is [S, n]; counts are clamped to [0, n]. Ties are broken towards later positions.
    """
    n_heads, n = scores.shape
    counts = [max(0, min(int(c), n)) for c in counts]
    s = boosted_scores(scores, sinks, window)
    kmax = max(counts) if counts else 0
    pieces = []
    if kmax == n:
        full = torch.arange(n, device=scores.device)
    if kmax:
        order = torch.topk(s, kmax, dim=-1, sorted=True).indices
    for h, c in enumerate(counts):
        if c == n:
            pieces.append(full)
        elif c == 0:
            pieces.append(torch.empty(0, dtype=torch.long, device=scores.device))
        else:
            pieces.append(torch.sort(order[h, :c]).values)
    cu = torch.zeros(n_heads + 1, dtype=torch.long)
    cu[1:] = torch.cumsum(torch.tensor(counts, dtype=torch.long), 0)
    idx = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)
    return KeepSet(indices=idx.to(torch.long), cu_seqlens=cu.to(idx.device))


def select_all(
    scores: list[torch.Tensor], allocation: Allocation, sinks: int = 0, window: int = 0
) -> list[KeepSet]:
    """Apply :func:`select` to every layer of an allocation."""
    return [
        select(s, allocation.head_counts(layer, s.shape[0]), sinks=sinks, window=window)
        for layer, s in enumerate(scores)
    ]
