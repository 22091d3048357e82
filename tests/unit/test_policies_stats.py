"""The synthetic prefill statistics of the policy tests (``support.make_stats``) are what they claim.

``make_stats`` runs real causal softmax attention on small random q/k, so window sums, variances,
entropies and H2O column sums are consistent with each other, like the capture step's output.
"""

from __future__ import annotations

import torch
from support import make_stats


def test_make_stats_is_consistent() -> None:
    """Window rows are distributions, variances are >= 0, column sums add up to the query count."""
    stats = make_stats(n=16, window=4)
    assert stats.n == 16 and stats.n_layers == 4 and stats.n_storage_heads == 2
    for layer in stats.layers:
        assert torch.allclose(layer.win_mean.sum(-1), torch.ones(4))
        assert (layer.win_var >= 0).all()
        assert layer.acc_attn is not None
        assert torch.allclose(layer.acc_attn.sum(-1), torch.full((4,), 16.0))
        assert (layer.win_entropy > 0).all()
    query_mode = make_stats(storage="query")
    assert query_mode.n_storage_heads == 4 and query_mode.layers[0].keys.shape[0] == 4
