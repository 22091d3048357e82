"""Ring eviction of the ragged cache (O(1) per token) against the plain "move the window up" reference."""

from __future__ import annotations

import torch
from lukv_bench.kernels.ops import RaggedStore, compact, ragged_attention
from lukv_bench.policies.streaming import streaming_decode_keep

from lukv_bench.runtime.cache import RaggedCache, RaggedLayer, Ring

D, HEADS, SCALE = 8, 2, 8**-0.5


def _cache(counts: list[list[int]], seed: int = 0, headroom: int = 6) -> RaggedCache:
    """One layer, ``len(counts)`` cells of ``HEADS`` segments filled with random rows."""
    g = torch.Generator().manual_seed(seed)
    flat = [c for cell in counts for c in cell]
    store = RaggedStore.empty(flat, D, torch.float32, "cpu", headroom=headroom, bucket_fill=0.75)
    for s, c in enumerate(flat):
        k, v = torch.randn(1, c, D, generator=g), torch.randn(1, c, D, generator=g)
        compact(k, v, torch.arange(c), torch.tensor([0, c]), store.starts[s : s + 1], store.k, store.v)
    return RaggedCache([RaggedLayer(store, heads=HEADS)], n_cells=len(counts), n_q_heads=HEADS,
                       logical_len=max(flat))


def _logical(cache: RaggedCache, seg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A segment's K and V rows in logical order (oldest first)."""
    layer = cache.layers[0]
    k, v = layer.store.segment(seg)
    ring = layer.rings.get(seg)
    rows = ring.logical_rows(k.shape[0]) if ring is not None else torch.arange(k.shape[0])
    return k[rows], v[rows]


def _step(cache: RaggedCache, ref: list[list[torch.Tensor]], g: torch.Generator, budgets: list[int], sinks: int,
          cell: int) -> None:
    """Append one token to every cell, then let ``cell`` evict like StreamingLLM; ``ref`` moves rows instead."""
    n_cells = cache.n_cells
    k, v = torch.randn(n_cells, HEADS, 1, D, generator=g), torch.randn(n_cells, HEADS, 1, D, generator=g)
    cache.update(k, v, 0)
    for s in range(n_cells * HEADS):
        ref[s] = [torch.cat([ref[s][0], k[s // HEADS, s % HEADS]]), torch.cat([ref[s][1], v[s // HEADS, s % HEADS]])]
    lens = cache.layers[0].stored_tokens(cell)
    keep = streaming_decode_keep(lens, budgets, sinks)
    if keep is not None:
        cache.evict(0, cell, keep)
        for h, kept in enumerate(keep):
            s = cell * HEADS + h
            ref[s] = [ref[s][0][kept], ref[s][1][kept]]


def test_streaming_eviction_rotates_instead_of_moving() -> None:
    cache = _cache([[12, 9], [12, 12]])
    ref = [list(cache.layers[0].store.segment(s)) for s in range(4)]
    ref = [[k.clone(), v.clone()] for k, v in ref]
    g = torch.Generator().manual_seed(1)
    for _ in range(20):  # several laps of the ring
        _step(cache, ref, g, budgets=[12, 9], sinks=3, cell=0)
        for s in range(4):
            k, v = _logical(cache, s)
            assert torch.equal(k, ref[s][0]) and torch.equal(v, ref[s][1])
        layer = cache.layers[0]
        # attention over the rotated rows equals attention over the rows in order
        q = torch.randn(4 * 2, 1, D, generator=g)
        got = ragged_attention(q, layer.store.k, layer.store.v, layer.store.starts, layer.store.lens, SCALE)
        for s in range(4):
            k, v = ref[s]
            w = torch.softmax(q[2 * s : 2 * s + 2, 0] @ k.T * SCALE, dim=-1)
            torch.testing.assert_close(got[2 * s : 2 * s + 2, 0], w @ v, rtol=1e-5, atol=1e-6)
    assert cache.layers[0].stored_tokens(0) == [12, 9] and cache.layers[0].stored_tokens(1) == [32, 32]
    assert set(cache.layers[0].rings) <= {0, 1} and cache.layers[0].rings  # only the evicting cell rotates


def test_ring_moves_one_row_per_token() -> None:
    """After the first eviction each token costs one row move: the new row takes the oldest slot."""
    cache = _cache([[10, 10]])
    g = torch.Generator().manual_seed(2)
    ref = [[t.clone() for t in cache.layers[0].store.segment(s)] for s in range(2)]
    _step(cache, ref, g, budgets=[10, 10], sinks=2, cell=0)
    assert cache.layers[0].rings[0] == Ring(lo=2, head=3, hi=10)
    layer = cache.layers[0]
    before = layer.store.k.clone()
    _step(cache, ref, g, budgets=[10, 10], sinks=2, cell=0)
    changed = (layer.store.k != before).any(dim=1).nonzero().flatten().tolist()
    starts = layer.store.starts.tolist()
    # the slot of the oldest non-sink entry (row 3) took the new token; the row past the end held it
    assert changed == sorted([starts[0] + 3, starts[0] + 10, starts[1] + 3, starts[1] + 10])
    assert layer.rings[0] == Ring(lo=2, head=4, hi=10)


def test_other_keep_sets_and_rollback_after_rotation() -> None:
    """A keep set that is not sinks + newest reads the rotated rows in logical order; rollback restores the ring."""
    cache = _cache([[10, 8]])
    g = torch.Generator().manual_seed(3)
    ref = [[t.clone() for t in cache.layers[0].store.segment(s)] for s in range(2)]
    for _ in range(3):
        _step(cache, ref, g, budgets=[10, 8], sinks=1, cell=0)
    mark = cache.mark()
    rings = dict(cache.layers[0].rings)
    cache.update(torch.randn(1, HEADS, 2, D, generator=g), torch.randn(1, HEADS, 2, D, generator=g), 0)
    cache.rollback(mark)
    assert cache.layers[0].rings == rings
    for s in range(2):
        assert torch.equal(_logical(cache, s)[0], ref[s][0])
    # sinks + newest with another prefix than the ring's (2 instead of 1): read in logical order, then a new ring
    keep = [torch.tensor([0, 1, *range(4, 10)]), torch.tensor([0, 1, *range(3, 8)])]
    cache.evict(0, 0, keep)
    for s, kept in enumerate(keep):
        ref[s] = [ref[s][0][kept], ref[s][1][kept]]
        assert torch.equal(_logical(cache, s)[0], ref[s][0]) and torch.equal(_logical(cache, s)[1], ref[s][1])
    _step(cache, ref, g, budgets=[8, 7], sinks=2, cell=0)
    assert {r.lo for r in cache.layers[0].rings.values()} == {2}
    for s in range(2):
        assert torch.equal(_logical(cache, s)[0], ref[s][0])
    keep = [torch.tensor([0, 2, 5, 7]), torch.tensor([1, 6])]
    cache.evict(0, 0, keep)
    assert not cache.layers[0].rings  # rows are back in logical order
    for s, kept in enumerate(keep):
        k, v = cache.layers[0].store.segment(s)
        assert torch.equal(k, ref[s][0][kept]) and torch.equal(v, ref[s][1][kept])
