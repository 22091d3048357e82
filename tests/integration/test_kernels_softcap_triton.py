"""Soft-capped attention logits (Gemma 2) in the Triton kernels against their torch references, in the
Triton interpreter (TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch
from lukv_bench.kernels._triton import HAS_TRITON
from lukv_bench.kernels.ops import accumulated_attention, interpreting, window_stats

pytestmark = pytest.mark.skipif(
    not (HAS_TRITON and interpreting()), reason="needs triton and TRITON_INTERPRET=1 (set by conftest)"
)

CAP = 2.0  # small enough that the logits (|s| up to ~10) are really capped


def _qk(G: int, dtype: torch.dtype, seed: int, T: int = 150, D: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(2 * G, T, D, generator=g)).to(dtype), torch.randn(2, T, D, generator=g).to(dtype)


@pytest.mark.parametrize(("dtype", "G"), [(torch.float32, 1), (torch.bfloat16, 4)])
def test_softcapped_window_stats_and_accumulated(dtype: torch.dtype, G: int) -> None:
    q, k = _qk(G, dtype, seed=G)
    T, D, w = q.shape[1], q.shape[2], 32
    scale = D**-0.5
    want = window_stats(q[:, T - w :], k, scale, prefix_len=T - w, backend="torch", softcap=CAP)
    got = window_stats(q[:, T - w :], k, scale, prefix_len=T - w, backend="triton", softcap=CAP)
    plain = window_stats(q[:, T - w :], k, scale, prefix_len=T - w, backend="torch")
    assert (plain[0] - want[0]).abs().max() > 0.05  # capping matters at these logits
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    want_acc = accumulated_attention(q, k, scale, backend="torch", softcap=CAP)
    got_acc = accumulated_attention(q, k, scale, backend="triton", softcap=CAP)
    torch.testing.assert_close(got_acc, want_acc, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("dtype", "chunk"), [(torch.float32, None), (torch.bfloat16, 64)])
def test_softcapped_ragged_attention(dtype: torch.dtype, chunk: int | None) -> None:
    from lukv_bench.kernels.ops import RaggedStore
    from lukv_bench.kernels.ragged_attention import _ragged_triton, ragged_attention_torch

    g = torch.Generator().manual_seed(7)
    counts, D, G, Q = [0, 1, 200, 65], 64, 2, 3
    st = RaggedStore.empty(counts, D, dtype, "cpu", headroom=1)
    st.k.copy_(3 * torch.randn(st.k.shape, generator=g))
    st.v.copy_(torch.randn(st.v.shape, generator=g))
    q = torch.randn(len(counts) * G, Q, D, generator=g).to(dtype)
    want = ragged_attention_torch(q, st.k, st.v, st.starts, st.lens, D**-0.5, softcap=CAP)
    plain = ragged_attention_torch(q, st.k, st.v, st.starts, st.lens, D**-0.5)
    assert (want.float() - plain.float()).abs().max() > 0.05
    got = _ragged_triton(q, st.k, st.v, st.starts, st.lens, D**-0.5, chunk=chunk, softcap=CAP)
    tol = 2e-5 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=1e-4)
