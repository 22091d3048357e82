"""Every Triton kernel against its torch reference, in the Triton interpreter (TRITON_INTERPRET=1).

Shapes stay at a few hundred tokens: the interpreter is 100-1000x slower than torch.
"""

from __future__ import annotations

import pytest
import torch
from lukv_bench.kernels._triton import HAS_TRITON
from lukv_bench.kernels.ops import (
    RaggedStore,
    accumulated_attention,
    append,
    compact,
    interpreting,
    ragged_attention,
    window_stats,
)
from lukv_bench.kernels.ragged_attention import _ragged_triton

pytestmark = pytest.mark.skipif(
    not (HAS_TRITON and interpreting()), reason="needs triton and TRITON_INTERPRET=1 (set by conftest)"
)

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
# (dtype, GQA group, head dim, non-contiguous inputs): every dtype, group and head size appears
CASES = [
    (FP32, 1, 64, False),
    (FP16, 3, 128, True),
    (BF16, 4, 64, True),
    (BF16, 1, 128, False),
]
CASE_IDS = [f"{str(c[0])[6:]}-G{c[1]}-D{c[2]}-{'strided' if c[3] else 'contig'}" for c in CASES]
# outputs of the two paths differ only by fp32 summation order (and final rounding to the dtype)
OUT_TOL = {FP32: 2e-5, FP16: 2e-3, BF16: 1.6e-2}


def _heads(n: int, T: int, D: int, dtype: torch.dtype, strided: bool, g: torch.Generator) -> torch.Tensor:
    """[n, T, D] in ``dtype``; with ``strided``, a transposed view of a [1, T, n, D] tensor."""
    if strided:
        return torch.randn(1, T, n, D, generator=g).to(dtype).transpose(1, 2)[0]
    return torch.randn(n, T, D, generator=g).to(dtype)


def _close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float = 1e-4) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype,G,D,strided", CASES, ids=CASE_IDS)
def test_compact(dtype: torch.dtype, G: int, D: int, strided: bool) -> None:
    g = torch.Generator().manual_seed(D + G)
    S, T = 4, 90
    src_k, src_v = _heads(S, T, D, dtype, strided, g), _heads(S, T, D, dtype, False, g)
    counts = [0, 1, 37, T]  # empty, length-1, a subset, everything
    segs = [torch.randperm(T, generator=g)[:c] for c in counts]
    cu = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    outs = []
    for b in ("torch", "triton"):
        st = RaggedStore.empty(counts, D, dtype, "cpu", headroom=2)
        st.k.zero_()
        st.v.zero_()
        compact(src_k, src_v, torch.cat(segs), cu, st.starts, st.k, st.v, backend=b)
        outs.append(st)
    assert torch.equal(outs[0].k, outs[1].k) and torch.equal(outs[0].v, outs[1].v)


@pytest.mark.parametrize("dtype,G,D,strided", CASES, ids=CASE_IDS)
def test_append(dtype: torch.dtype, G: int, D: int, strided: bool) -> None:
    g = torch.Generator().manual_seed(D * G)
    counts = [0, 1, 20]
    stores = []
    for b in ("torch", "triton"):
        g.manual_seed(7)
        st = RaggedStore.empty(counts, D, dtype, "cpu", headroom=3)
        st.k.copy_(torch.randn(st.k.shape, generator=g))
        st.v.copy_(torch.randn(st.v.shape, generator=g))
        for Q in (1, 2, 5, 1):  # fits, fits, regrows, fits
            st = append(st, _heads(3, Q, D, dtype, strided, g), _heads(3, Q, D, dtype, strided, g), backend=b)
        stores.append(st)
    a, b_ = stores
    assert a.lens.tolist() == b_.lens.tolist() == [9, 10, 29]
    assert torch.equal(a.caps, b_.caps) and torch.equal(a.starts, b_.starts)
    for s in range(3):
        assert torch.equal(a.segment(s)[0], b_.segment(s)[0]) and torch.equal(a.segment(s)[1], b_.segment(s)[1])


@pytest.mark.parametrize("dtype,G,D,strided", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("T,w", [(150, 32), (70, 1)])
def test_window_stats(dtype: torch.dtype, G: int, D: int, strided: bool, T: int, w: int) -> None:
    g = torch.Generator().manual_seed(T + D + G)
    S = 2
    q = _heads(S * G, T, D, dtype, strided, g)[:, T - w :]
    k = _heads(S, T, D, dtype, strided, g)
    scale = D**-0.5
    want = window_stats(q, k, scale, prefix_len=T - w, backend="torch")
    got = window_stats(q, k, scale, prefix_len=T - w, backend="triton")
    for x, y in zip(got, want, strict=True):
        _close(x, y, atol=1e-5)


def test_window_stats_whole_prompt_window() -> None:
    """w == T (every key is in the window) and prefix_len == 0 (no entropy terms)."""
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(3, 40, 64, generator=g), torch.randn(3, 40, 64, generator=g)
    for prefix in (0, 17):
        want = window_stats(q, k, 0.2, prefix_len=prefix, backend="torch")
        got = window_stats(q, k, 0.2, prefix_len=prefix, backend="triton")
        for x, y in zip(got, want, strict=True):
            _close(x, y, atol=1e-5)


@pytest.mark.parametrize("dtype,G,D,strided", CASES, ids=CASE_IDS)
def test_accumulated_attention(dtype: torch.dtype, G: int, D: int, strided: bool) -> None:
    g = torch.Generator().manual_seed(D - G)
    S, T = 2, 150  # not a multiple of the 64-token tiles
    q, k = _heads(S * G, T, D, dtype, strided, g), _heads(S, T, D, dtype, strided, g)
    want = accumulated_attention(q, k, D**-0.5, backend="torch")
    got = accumulated_attention(q, k, D**-0.5, backend="triton")
    _close(got, want, atol=1e-4)


def _ragged_inputs(
    dtype: torch.dtype, G: int, D: int, strided: bool, Q: int, g: torch.Generator
) -> tuple[torch.Tensor, RaggedStore]:
    counts = [0, 1, 2, 200, 65]  # empty, length 1, shorter than Q, several key blocks
    st = RaggedStore.empty(counts, D, dtype, "cpu", headroom=1)
    if strided:
        # flat buffers that are column slices of wider rows
        wide_k = torch.randn(st.k.shape[0], 2 * D, generator=g).to(dtype)
        wide_v = torch.randn(st.k.shape[0], 2 * D, generator=g).to(dtype)
        st.k, st.v = wide_k[:, D:], wide_v[:, :D]
    else:
        st.k.copy_(torch.randn(st.k.shape, generator=g))
        st.v.copy_(torch.randn(st.v.shape, generator=g))
    q = _heads(len(counts) * G, Q, D, dtype, strided, g)
    return q, st


@pytest.mark.parametrize("dtype,G,D,strided", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("Q", [1, 4])
def test_ragged_attention(dtype: torch.dtype, G: int, D: int, strided: bool, Q: int) -> None:
    g = torch.Generator().manual_seed(Q * 100 + D + G)
    q, st = _ragged_inputs(dtype, G, D, strided, Q, g)
    want = ragged_attention(q, st.k, st.v, st.starts, st.lens, D**-0.5, backend="torch")
    got = ragged_attention(q, st.k, st.v, st.starts, st.lens, D**-0.5, backend="triton")
    _close(got, want, atol=OUT_TOL[dtype])
    # queries that see nothing (empty segment; queries before the start of a short segment) give zeros
    assert torch.all(got[:G] == 0)


@pytest.mark.parametrize("chunk", [64, 128])
def test_ragged_attention_split_merge(chunk: int) -> None:
    """Several flash-decoding splits per segment merge to the single-split result."""
    g = torch.Generator().manual_seed(chunk)
    q, st = _ragged_inputs(FP32, 3, 64, False, 2, g)
    want = ragged_attention(q, st.k, st.v, st.starts, st.lens, 0.125, backend="torch")
    got = _ragged_triton(q, st.k, st.v, st.starts, st.lens, 0.125, chunk=chunk)
    _close(got, want, atol=2e-5)


@pytest.mark.parametrize("Q", [1, 3])
def test_ragged_attention_batched_table(Q: int) -> None:
    """The kernel reads a batched decode's segment table: settings x heads, an active subset."""
    g = torch.Generator().manual_seed(70 + Q)
    counts = [5, 0, 90, 1, 33, 70, 2, 64, 12, 40, 7, 100]  # 4 settings x 3 heads
    st = RaggedStore.empty(counts, 32, FP32, "cpu", headroom=2)
    st.k.copy_(torch.randn(st.k.shape, generator=g))
    st.v.copy_(torch.randn(st.v.shape, generator=g))
    active = torch.tensor([s * 3 + h for s in (0, 2, 3) for h in range(3)])
    starts, lens = st.starts[active], st.lens[active]
    q = torch.randn(len(active) * 2, Q, 32, generator=g)
    want = ragged_attention(q, st.k, st.v, starts, lens, 0.2, backend="torch")
    got = ragged_attention(q, st.k, st.v, starts, lens, 0.2, backend="triton")
    _close(got, want, atol=2e-5)
