"""The torch reference kernels against plain dense formulas, plus the dispatcher and the store."""

from __future__ import annotations

import math

import pytest
import torch
from lukv_bench.kernels.dispatch import resolve
from lukv_bench.kernels.ops import (
    RaggedStore,
    accumulated_attention,
    append,
    attention_mass_budget,
    backend,
    compact,
    group_reduce,
    ragged_attention,
    truncate,
    window_stats,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dense_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Full causal softmax attention [Hq, T, T] in float64 (GQA by repeating KV heads)."""
    G = q.shape[0] // k.shape[0]
    kk = k.double().repeat_interleave(G, dim=0)
    s = q.double() @ kk.transpose(1, 2) / math.sqrt(q.shape[-1])
    T = q.shape[1]
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1)


@pytest.mark.parametrize("G,block", [(1, 7), (3, 32), (4, 1000)])
def test_accumulated_matches_dense_column_sums(G: int, block: int) -> None:
    g = _gen(G)
    S, T, D = 2, 45, 16
    q, k = torch.randn(S * G, T, D, generator=g), torch.randn(S, T, D, generator=g)
    got = accumulated_attention(q, k, D**-0.5, block=block, backend="torch")
    want = _dense_attention(q, k).sum(dim=1)
    assert got.dtype == torch.float32 and got.shape == (S * G, T)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # every row of a softmax sums to one, so the column sums add up to T
    torch.testing.assert_close(got.sum(dim=1).double(), torch.full((S * G,), float(T), dtype=torch.float64))


@pytest.mark.parametrize("G,w,prefix", [(1, 1, 39), (3, 8, 32), (4, 40, 0)])
def test_window_stats_matches_dense(G: int, w: int, prefix: int) -> None:
    g = _gen(w)
    S, T, D = 2, 40, 16
    q, k = torch.randn(S * G, T, D, generator=g), torch.randn(S, T, D, generator=g)
    s, ss, ent = window_stats(q[:, T - w :], k, D**-0.5, prefix_len=prefix, backend="torch")
    a = _dense_attention(q, k)[:, T - w :]
    torch.testing.assert_close(s.double(), a.sum(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ss.double(), (a * a).sum(dim=1), rtol=1e-5, atol=1e-6)
    ap = a[:, :, :prefix]
    want_ent = -(ap * torch.log(ap + 1e-10)).sum(dim=(1, 2))
    torch.testing.assert_close(ent.double(), want_ent, rtol=1e-4, atol=1e-5)


def _make_store(counts: list[int], D: int, headroom: int, g: torch.Generator) -> RaggedStore:
    st = RaggedStore.empty(counts, D, torch.float32, "cpu", headroom=headroom)
    st.k.copy_(torch.randn(st.k.shape, generator=g))
    st.v.copy_(torch.randn(st.v.shape, generator=g))
    return st


@pytest.mark.parametrize("Q", [1, 3])
def test_ragged_attention_matches_dense_per_segment(Q: int) -> None:
    g = _gen(Q)
    counts, G, D = [0, 1, 2, 9, 30], 3, 16
    st = _make_store(counts, D, 2, g)
    S = len(counts)
    q = torch.randn(S * G, Q, D, generator=g)
    got = ragged_attention(q, st.k, st.v, st.starts, st.lens, 0.3, backend="torch")
    assert torch.isfinite(got).all()
    for h in range(S * G):
        ks, vs = st.segment(h // G)
        n = ks.shape[0]
        for i in range(Q):
            vis = n - Q + i + 1
            if vis <= 0:
                assert torch.all(got[h, i] == 0)
                continue
            p = torch.softmax(ks[:vis].double() @ q[h, i].double() * 0.3, dim=0)
            torch.testing.assert_close(got[h, i].double(), p @ vs[:vis].double(), rtol=1e-5, atol=1e-6)


def test_compact_matches_index_gather() -> None:
    g = _gen(0)
    S, T, D = 4, 20, 8
    src_k = torch.randn(1, T, S, D, generator=g).transpose(1, 2)[0]  # non-contiguous [S, T, D]
    src_v = torch.randn(S, T, D, generator=g)
    segs = [torch.tensor([3, 0, 19]), torch.tensor([], dtype=torch.long), torch.tensor([5]), torch.arange(T)]
    counts = [len(x) for x in segs]
    cu = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    st = RaggedStore.empty(counts, D, torch.float32, "cpu", headroom=1)
    compact(src_k, src_v, torch.cat(segs), cu, st.starts, st.k, st.v, backend="torch")
    for s, idx in enumerate(segs):
        ks, vs = st.segment(s)
        assert torch.equal(ks, src_k[s, idx]) and torch.equal(vs, src_v[s, idx])


def test_append_regrow_truncate() -> None:
    g = _gen(1)
    D = 8
    st = _make_store([0, 1, 5], D, 2, g)
    before = [tuple(x.clone() for x in st.segment(s)) for s in range(3)]
    new = torch.randn(3, 2, D, generator=g)
    same = append(st, new, -new, backend="torch")
    assert same is st and st.lens.tolist() == [2, 3, 7]  # fitted into the headroom, in place
    big = torch.randn(3, 4, D, generator=g)
    grown = append(st, big, -big, backend="torch")
    assert grown is not st
    assert grown.lens.tolist() == [6, 7, 11]
    assert grown.caps.tolist() == [2 + 4 + 16, 3 + 4 + 16, 7 + 4 + 16]
    assert grown.starts.tolist() == [0, 22, 45] and grown.k.shape[0] == grown.caps.sum().item()
    for s in range(3):
        ks, vs = grown.segment(s)
        torch.testing.assert_close(ks, torch.cat([before[s][0], new[s], big[s]]))
        torch.testing.assert_close(vs, torch.cat([before[s][1], -new[s], -big[s]]))
    assert grown.nbytes() == 2 * grown.k.numel() * 4
    truncate(grown, torch.tensor([0, 3, 11]))
    assert grown.lens.tolist() == [0, 3, 11]
    with pytest.raises(ValueError):
        truncate(grown, [1, 3, 11])


def test_group_reduce_and_mass_budget() -> None:
    x = torch.arange(12.0).view(6, 2)
    torch.testing.assert_close(group_reduce(x, 2, "mean"), torch.tensor([[2.0, 3.0], [8.0, 9.0]]))
    torch.testing.assert_close(group_reduce(x, 2, "max"), torch.tensor([[4.0, 5.0], [10.0, 11.0]]))
    torch.testing.assert_close(group_reduce(x, 3, "sum"), torch.tensor([[2.0, 4.0], [10.0, 12.0], [18.0, 20.0]]))
    with pytest.raises(ValueError):
        group_reduce(x, 4)
    g = _gen(2)
    dist = torch.rand(5, 30, generator=g)
    dist[1] = 0.0
    for tau in (0.0, 0.3, 0.9, 1.0):
        got = attention_mass_budget(dist, tau).tolist()
        for h in range(5):
            row = sorted(dist[h].double().tolist(), reverse=True)
            total, want, acc = sum(row), 30, 0.0
            for i, x in enumerate(row):
                acc += x
                if acc >= tau * total:
                    want = i + 1
                    break
            assert got[h] == max(1, want), (tau, h)
    assert attention_mass_budget(dist, 0.5).dtype == torch.int64


def test_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.zeros(2)
    monkeypatch.delenv("LUKV_BENCH_BACKEND", raising=False)
    assert backend(t) == "torch"
    monkeypatch.setenv("LUKV_BENCH_BACKEND", "triton")
    assert backend(t) == "triton"  # CPU tensors: valid because the test process interprets
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        backend(t)
    with pytest.raises(RuntimeError):
        resolve("triton", t)
    assert resolve("torch", t) == "torch"
    monkeypatch.setenv("LUKV_BENCH_BACKEND", "cuda")
    with pytest.raises(ValueError):
        backend(t)
    with pytest.raises(ValueError):
        resolve("numpy", t)


@pytest.mark.parametrize("Q", [1, 5])
def test_ragged_attention_batched_table_matches_naive(Q: int) -> None:
    """The bucketed torch path equals the per-segment loop on a sweep-shaped table.

    Eight settings x three heads with lengths from 0 to 300 (several buckets), read through an
    active subset of segments as a batched decode does.
    """
    from lukv_bench.kernels.ragged_attention import ragged_attention_naive

    g = _gen(40 + Q)
    counts = torch.randint(0, 300, (24,), generator=g).tolist()
    counts[5], counts[6] = 0, 1
    st = RaggedStore.empty(counts, 16, torch.float32, "cpu", headroom=3, bucket_fill=0.75)
    rows = [st.starts[s] + torch.arange(c) for s, c in enumerate(counts)]
    for r in rows:  # fill only the stored rows: padding and headroom stay as the store made them
        st.k[r] = torch.randn(len(r), 16, generator=g)
        st.v[r] = torch.randn(len(r), 16, generator=g)
    active = torch.tensor([s * 3 + h for s in (0, 2, 3, 5, 7) for h in range(3)])
    starts, lens = st.starts[active], st.lens[active]
    q = torch.randn(len(active) * 3, Q, 16, generator=g)
    want = ragged_attention_naive(q, st.k, st.v, starts, lens, 0.25)
    got = ragged_attention(q, st.k, st.v, starts, lens, 0.25, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bucketed_store_layout() -> None:
    """Segments of similar length share a capacity and lie back to back; padding is bounded and zero."""
    counts = [100, 80, 10, 0, 76, 9, 60]
    st = RaggedStore.empty(counts, 4, torch.float32, "cpu", headroom=2, bucket_fill=0.75)
    caps, starts = st.caps.tolist(), st.starts.tolist()
    assert caps == [102, 102, 12, 2, 102, 12, 62] and st.lens.tolist() == counts
    # buckets are contiguous runs in memory: 100, 80, 76 | 60 | 10, 9 | 0
    assert sorted(starts) == [0, 102, 204, 306, 368, 380, 392]
    assert sum(caps) == st.k.shape[0] and torch.count_nonzero(st.k) == 0
    assert sum(caps) - sum(c + 2 for c in counts) <= sum(counts) / 3
    exact = RaggedStore.empty(counts, 4, torch.float32, "cpu", headroom=2)
    assert exact.caps.tolist() == [c + 2 for c in counts]
