"""Attention logit soft-capping (Gemma 2) in the torch kernels, against dense float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch
from lukv_bench.kernels.ops import accumulated_attention, window_max, window_stats

CAP = 2.0  # small, so that the logits below (|s| up to ~10) are really capped


def _qk(G: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    S, T, D = 2, 40, 16
    return 3 * torch.randn(S * G, T, D, generator=g), torch.randn(S, T, D, generator=g)


def _dense_capped(q: torch.Tensor, k: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Causal softmax of ``cap * tanh(q k^T / sqrt(D) / cap)`` [Hq, T, T] in float64."""
    G = q.shape[0] // k.shape[0]
    s = q.double() @ k.double().repeat_interleave(G, dim=0).transpose(1, 2) / math.sqrt(q.shape[-1])
    if cap is not None:
        s = cap * torch.tanh(s / cap)
    T = q.shape[1]
    return torch.softmax(s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")), dim=-1)


@pytest.mark.parametrize("G", [1, 4])
def test_softcapped_statistics_match_dense(G: int) -> None:
    q, k = _qk(G, seed=G)
    T, D, w = q.shape[1], q.shape[2], 8
    a = _dense_capped(q, k, CAP)
    plain = _dense_capped(q, k, None)
    assert (a - plain).abs().max() > 0.05  # the cap changes the attention: the test can tell them apart
    acc = accumulated_attention(q, k, D**-0.5, block=16, backend="torch", softcap=CAP)
    torch.testing.assert_close(acc.double(), a.sum(dim=1), rtol=1e-5, atol=1e-5)
    s, ss, ent = window_stats(q[:, T - w :], k, D**-0.5, prefix_len=T - w, backend="torch", softcap=CAP)
    aw = a[:, T - w :]
    torch.testing.assert_close(s.double(), aw.sum(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ss.double(), (aw * aw).sum(dim=1), rtol=1e-5, atol=1e-6)
    ap = aw[:, :, : T - w]
    torch.testing.assert_close(ent.double(), -(ap * torch.log(ap + 1e-10)).sum(dim=(1, 2)), rtol=1e-4, atol=1e-5)
    mx = window_max(q[:, T - w :], k, D**-0.5, softcap=CAP)
    torch.testing.assert_close(mx.double(), aw.amax(dim=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cap", [0.0, -1.0])
def test_a_cap_that_is_not_positive_is_rejected(cap: float) -> None:
    q, k = _qk(1, seed=0)
    with pytest.raises(ValueError, match="softcap must be > 0"):
        accumulated_attention(q, k, 0.25, softcap=cap)
    with pytest.raises(ValueError, match="softcap must be > 0"):
        window_stats(q[:, -4:], k, 0.25, prefix_len=36, softcap=cap)


@pytest.mark.parametrize("Q", [1, 3])
def test_softcapped_ragged_attention_matches_dense(Q: int) -> None:
    from lukv_bench.kernels.ops import RaggedStore, ragged_attention

    g = torch.Generator().manual_seed(Q)
    counts, D, G = [0, 5, 30], 16, 2
    st = RaggedStore.empty(counts, D, torch.float32, "cpu", headroom=2)
    st.k.copy_(3 * torch.randn(st.k.shape, generator=g))
    st.v.copy_(torch.randn(st.v.shape, generator=g))
    q = torch.randn(len(counts) * G, Q, D, generator=g)
    got = ragged_attention(q, st.k, st.v, st.starts, st.lens, D**-0.5, backend="torch", softcap=CAP)
    plain = ragged_attention(q, st.k, st.v, st.starts, st.lens, D**-0.5, backend="torch")
    assert (got - plain).abs().max() > 0.05
    for s, n in enumerate(counts):
        heads = slice(s * G, (s + 1) * G)
        if n == 0:
            assert not got[heads].any()
            continue
        k = st.k[st.starts[s] : st.starts[s] + n].double()
        v = st.v[st.starts[s] : st.starts[s] + n].double()
        logits = CAP * torch.tanh(q[heads].double() @ k.T * D**-0.5 / CAP)  # [G, Q, n]
        hidden = torch.arange(n)[None, :] >= (n - Q + torch.arange(Q) + 1)[:, None]
        p = logits.masked_fill(hidden, float("-inf")).softmax(-1).nan_to_num(0.0)
        torch.testing.assert_close(got[heads].double(), p @ v, rtol=1e-5, atol=1e-5)
