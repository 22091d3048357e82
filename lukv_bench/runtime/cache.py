"""A transformers ``Cache`` that physically holds only the kept tokens, for one or many cells.

A sweep evaluates several (policy, budget) *cells* on the same prompt. Their compressed caches
live in one :class:`RaggedCache`: per layer, one flat K buffer and one flat V buffer
(:class:`~lukv_bench.kernels.RaggedStore`) with a segment per (cell, storage head), each with its
own length; evicted entries are not stored at all. A forward with batch ``B`` runs row ``i`` on the
``i``-th *active* cell, so the whole sweep of a sample decodes with one model forward per step.
Cells can leave the batch (EOS, a stop string) without touching the others' tokens.

The cache keeps each cell's *logical* length (tokens seen) apart from what is stored, so tokens
appended after eviction get the RoPE positions they would have had without eviction.

Decode-time eviction that drops the oldest entries after a kept prefix (StreamingLLM's sinks +
newest) is O(1) per token: a segment's entries after the prefix form a ring (:class:`Ring`), and
each new token overwrites the slot of the oldest one instead of the whole window moving up. Keys
are stored after RoPE, so attention of one new query does not depend on the entries' order; the
new tokens of a forward are always the last rows, which is all the causal mask needs.

A decode rule that reads the newest query's attention (TOVA) has its cells *watched*
(:meth:`RaggedCache.watch`): each forward then also computes, for those rows only, the softmax of the
last query against each of their segments' stored keys (a plain torch op beside the ragged
attention kernel, which stays as it is for every other row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from lukv_bench.kernels.ops import (
    RaggedStore,
    append,
    cap_scores,
    compact,
    group_reduce,
    ragged_attention,
    reserve,
    truncate,
)
from lukv_bench.runtime.arena import BufferArena
from lukv_bench.runtime.capture import masked_attention
from lukv_bench.runtime.selection import KeepSet

#: a batch of cells pads segments of similar length to one capacity (a segment's count is at least
#: this share of its bucket's longest), so attention reads each bucket as one dense block
BUCKET_FILL = 0.75


class RaggedLayer(CacheLayerMixin):
    """One layer of the ragged cache: a :class:`RaggedStore` with ``n_cells x heads`` segments."""

    is_compileable = False
    is_sliding = False

    def __init__(self, store: RaggedStore, heads: int, repeat: int = 1):
        super().__init__()
        self.store = store
        self.heads = heads  #: storage heads (segments) per cell
        self.repeat = repeat  #: >1 in query-head storage mode: new KV heads are repeated per query head
        self.active: torch.Tensor | None = None  #: segments of the active cells (None: all)
        self.logical_len = 0  #: tokens seen by the active cells (set by the cache)
        #: a sliding-window layer held at its window (its segments are the newest tokens, contiguous):
        #: never compressed, attention reads the last ``window`` entries; None for every other layer
        self.window: int | None = None
        #: segments whose rows are not in logical order (decode-time eviction), by segment index
        self.rings: dict[int, Ring] = {}
        #: per watched cell, the newest query's attention over each storage head's entries (logical order),
        #: from the last forward the cell took part in (:meth:`RaggedCache.watch`)
        self.newest: dict[int, list[torch.Tensor]] = {}
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the layer is built from a compressed prefill."""

    def table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(starts, lens) of the active cells' segments, in batch order."""
        if self.active is None:
            return self.store.starts, self.store.lens
        return self.store.starts.index_select(0, self.active), self.store.lens.index_select(0, self.active)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append new tokens ([B_active, Hkv, Q, D]) to the active cells' segments; returns the inputs.

        Attention itself runs in :meth:`RaggedCache.attention` over the ragged store.
        """
        B, _, Q, D = key_states.shape
        k, v = key_states, value_states
        if self.repeat > 1:
            k = k.repeat_interleave(self.repeat, dim=1)
            v = v.repeat_interleave(self.repeat, dim=1)
        k, v = k.reshape(-1, Q, D), v.reshape(-1, Q, D)
        n_rows = self.store.n_segments if self.active is None else self.active.numel()
        if k.shape[0] != n_rows:
            raise ValueError(f"batch of {B} rows does not match the cache's {n_rows // self.heads} active cells")
        if self.active is None:
            self.store = append(self.store, k, v)
        else:
            self.store = reserve(self.store, Q)  # regrows every segment if any active one lacks room
            st = self.store
            sub = RaggedStore(st.k, st.v, st.starts[self.active], st.lens[self.active], st.caps[self.active])
            append(sub, k, v)  # in place: the room is there
            st.lens[self.active] = sub.lens
        self.logical_len += Q
        return key_states, value_states

    def get_seq_length(self) -> int:
        """Tokens seen (the next RoPE position), not tokens stored."""
        return self.logical_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """Mask sizes as if nothing had been evicted (the lukv attention ignores the mask)."""
        return self.logical_len + query_length, 0

    def get_max_length(self) -> int:
        """Unbounded."""
        return -1

    def stored_tokens(self, cell: int | None = None) -> list[int]:
        """Tokens actually held per storage head (of one cell, or of all cells in order)."""
        lens = self.store.lens.tolist()
        if cell is None:
            return lens
        return lens[cell * self.heads : (cell + 1) * self.heads]


def _window_attention(
    query: torch.Tensor,
    store: RaggedStore,
    starts: torch.Tensor,
    lens: torch.Tensor,
    window: int,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Sliding-window attention of the new queries ([B, Hq, Q, D]) over a layer held at its window -> [B, Q, Hq, D].

    Every segment of such a layer holds the same number of entries (the same newest prompt tokens,
    then the tokens all cells were fed in lockstep) at consecutive positions, the last ``Q`` being
    the queries' own; so the entries any query can reach form one dense block per segment, read
    with a sliding causal mask: query ``i`` sees the ``window`` entries ending at its own. ``softcap``
    soft-caps the logits (Gemma 2).
    """
    B, Hq, Q, D = query.shape
    length = int(lens[0])
    if bool((lens != length).any()):
        raise RuntimeError("a layer held at its window must hold as many entries in every segment")
    span = min(length, window + Q - 1)  # from the first query's earliest visible entry to the end
    rows = starts[:, None] + (length - span) + torch.arange(span, device=starts.device)  # [S, span]
    k, v = store.k[rows].unsqueeze(1).to(query.dtype), store.v[rows].unsqueeze(1).to(query.dtype)  # [S, 1, span, D]
    qpos = torch.arange(span - Q, span, device=query.device)[:, None]
    kpos = torch.arange(span, device=query.device)[None, :]
    visible = (kpos <= qpos) & (kpos > qpos - window)
    q = query.reshape(starts.shape[0], -1, Q, D)  # segment s is read by its query heads, in order
    out = masked_attention(q, k, v, visible, scaling, softcap)
    return out.reshape(B, Hq, Q, D).transpose(1, 2)


@dataclass(frozen=True)
class Ring:
    """Where a segment's rows stand after ring eviction: logical order is a rotation of its rows.

    Rows ``[0, lo)`` are the kept prefix (attention sinks) in order; rows ``[lo, hi)`` are a ring
    whose oldest entry is row ``head`` (logical order ``head .. hi-1``, then ``lo .. head-1``);
    rows from ``hi`` on are tokens appended since, in order. ``head == lo`` would be plain order,
    which is stored as no ring at all.
    """

    lo: int
    head: int
    hi: int

    def logical_rows(self, length: int) -> torch.Tensor:
        """Segment rows in logical order (oldest first) for a segment holding ``length`` rows."""
        return torch.cat([torch.arange(self.lo), torch.arange(self.head, self.hi), torch.arange(self.lo, self.head),
                          torch.arange(self.hi, length)])


def _prefix_suffix(keep: torch.Tensor, length: int, hint: int | None = None) -> int | None:
    """``a`` when ``keep`` is positions ``0 .. a-1`` then the newest ones up to ``length - 1``, else None.

    ``hint`` is the ``a`` to try first (a ring's prefix): one comparison instead of a search.
    """
    m = keep.numel()
    keep = keep.cpu()
    idx = torch.arange(m)
    a = hint if hint is not None and hint <= m else int((keep == idx).sum())
    idx[a:] += length - m
    return a if torch.equal(keep, idx) else None


def _ring_moves(ring: Ring | None, a: int, dropped: int, length: int) -> tuple[list[int], list[int], Ring] | None:
    """Row moves (sources, destinations) that drop the ``dropped`` oldest entries after prefix ``a``.

    The oldest appended rows fill the dropped entries' ring slots and any later appended rows move
    down behind the ring: ``length - hi`` moves, not ``length``. Returns the moves and the new ring,
    or None when the segment's state does not allow it (another prefix, fewer appended rows than
    dropped entries, a ring smaller than that).
    """
    if ring is None:
        ring = Ring(lo=a, head=a, hi=length - dropped)
    size, appended = ring.hi - ring.lo, length - ring.hi
    if ring.lo != a or appended < dropped or size < dropped:
        return None
    slots = [ring.lo + (ring.head - ring.lo + i) % size for i in range(dropped)]
    src = list(range(ring.hi, length))
    dst = slots + list(range(ring.hi, length - dropped))
    return src, dst, Ring(lo=ring.lo, head=ring.lo + (ring.head - ring.lo + dropped) % size, hi=ring.hi)


@dataclass
class CacheMark:
    """A point to roll a :class:`RaggedCache` back to (drops tokens appended after it)."""

    logical: list[int]
    lens: list[torch.Tensor]
    rings: list[dict[int, Ring]]


class RaggedCache(Cache):
    """Compact KV cache of ``n_cells`` compressed caches of one prompt, ragged per layer and head.

    Only the *active* cells (all, by default) take part in a forward: row ``i`` of the batch is
    ``active[i]``. Each cell has its own logical length; the active ones must agree on it (they
    advance in lockstep), which is what gives every row the same positions.
    """

    def __init__(self, layers: list[RaggedLayer], n_cells: int, n_q_heads: int, storage: str = "kv",
                 logical_len: int = 0, compressed: list[list[list[int]]] | None = None):
        super().__init__(layers=layers)
        self.n_cells = n_cells
        self.n_q_heads = n_q_heads
        self.storage = storage
        self.logical = [logical_len] * n_cells  #: tokens seen, per cell
        #: tokens kept per cell, layer and storage head right after compression
        self.compressed = compressed or [[layer.stored_tokens(b) for layer in layers] for b in range(n_cells)]
        self.active: list[int] = list(range(n_cells))
        #: cells whose newest query's attention each forward records, with their GQA reduction (:meth:`watch`)
        self.watched: dict[int, str] = {}
        self._sync_layers()

    @classmethod
    def build(
        cls,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        keeps: Sequence[list[KeepSet]],
        n_q_heads: int,
        storage: str = "kv",
        headroom: int = 0,
        windows: Sequence[int | None] | None = None,
        dtype: torch.dtype | None = None,
        arena: BufferArena | None = None,
    ) -> RaggedCache:
        """Gather each cell's kept tokens (``keeps[b][layer]``) from the full K/V ([1, Hkv, n, D]).

        Every segment gets ``headroom`` free rows for tokens appended later (question, answer), so
        a sweep decodes without regrowing. With several cells, segments of similar length share
        a capacity (padding of at most a third, :data:`BUCKET_FILL`) so attention reads them as
        dense blocks; each cell's :meth:`kv_bytes` still counts exactly its kept tokens, what a
        cache of that cell alone allocates. In ``storage="query"`` mode each query head keeps its
        own set (KeepSet has Hq segments) and the KV heads are repeated to the query heads first
        (G x the memory, as in the original SnapKV). ``windows[i]``, when given and not None, marks
        layer ``i`` as a sliding-window layer held at its window (:attr:`RaggedLayer.window`): every
        cell must keep its newest tokens there. ``dtype`` stores K/V in another dtype than the
        prefill's (half the bytes in float16/bfloat16; attention still accumulates in fp32). ``arena``
        lends the K/V buffers (reused from an earlier cache, :mod:`~lukv_bench.runtime.arena`) instead of
        fresh ones; the cache holds the same contents either way.
        """
        layers = []
        for i, (k, v) in enumerate(zip(keys, values)):
            src_k, src_v = k[0], v[0]
            n_kv = src_k.shape[0]
            repeat = n_q_heads // n_kv if storage == "query" else 1
            if repeat > 1:
                src_k = src_k.repeat_interleave(repeat, dim=0)
                src_v = src_v.repeat_interleave(repeat, dim=0)
            heads = src_k.shape[0]
            counts: list[int] = []
            for b, keep in enumerate(keeps):
                c = keep[i].counts
                if len(c) != heads:
                    raise ValueError(f"cell {b}: keep set of layer {i} has {len(c)} heads, the cache has {heads}")
                counts += c
            store = RaggedStore.empty(counts, src_k.shape[-1], dtype or src_k.dtype, src_k.device, headroom=headroom,
                                      bucket_fill=BUCKET_FILL if len(keeps) > 1 else None,
                                      alloc=partial(arena.take, i) if arena is not None else None)
            for b, keep in enumerate(keeps):
                ks = keep[i]
                dest = store.starts[b * heads : (b + 1) * heads]
                compact(src_k, src_v, ks.indices, ks.cu_seqlens.to(src_k.device), dest, store.k, store.v)
            layers.append(RaggedLayer(store, heads=heads, repeat=repeat))
            layers[-1].window = windows[i] if windows is not None else None
        n = keys[0].shape[2] if keys else 0
        return cls(layers, n_cells=len(keeps), n_q_heads=n_q_heads, storage=storage, logical_len=n)

    # -- the batch ------------------------------------------------------------------------------
    def set_active(self, cells: Sequence[int]) -> None:
        """Choose which cells (in this order) form the batch of the next forwards."""
        cells = list(cells)
        if any(not 0 <= s < self.n_cells for s in cells) or len(set(cells)) != len(cells):
            raise ValueError(f"active cells {cells} must be distinct indices below {self.n_cells}")
        if cells and len({self.logical[s] for s in cells}) != 1:
            raise ValueError("cells in one batch must have seen the same number of tokens")
        self.active = cells
        self._sync_layers()

    def _sync_layers(self) -> None:
        everyone = self.active == list(range(self.n_cells))
        for layer in self.layers:
            if everyone:
                layer.active = None
            else:
                h = layer.heads
                segs = [s * h + j for s in self.active for j in range(h)]
                layer.active = torch.tensor(segs, dtype=torch.long, device=layer.store.lens.device)
            layer.logical_len = self.logical[self.active[0]] if self.active else 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Append to layer ``layer_idx``; after the last layer the active cells' logical length grows."""
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == len(self.layers) - 1:
            for s in self.active:
                self.logical[s] += key_states.shape[2]
        return out

    # -- attention -----------------------------------------------------------------------------
    def attention(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """Attention of the new queries ([B_active, Hq, Q, D]) over this layer's store -> [B, Q, Hq, D].

        On a layer held at its window each query reads only the last ``window`` entries up to itself
        (they are the newest positions). A ``sliding_window`` the model passes for a layer that is
        not held at its window must not cut yet: once it would, the compressed entries' positions
        are unknown here, so that is an error rather than a silently wrong attention. ``softcap`` (Gemma 2)
        soft-caps the logits before the softmax.
        """
        layer = self.layers[module.layer_idx]
        B, Hq, Q, D = query.shape
        starts, lens = layer.table()
        if layer.window is None and sliding_window is not None and layer.logical_len > sliding_window:
            raise RuntimeError(
                f"layer {module.layer_idx}: its sliding window ({sliding_window}) now cuts into a compressed "
                f"cache ({layer.logical_len} tokens seen): the layer was compressed because the prompt and the "
                "headroom fitted in its window; reserve headroom for every token fed later (Engine.compress, "
                "compress(headroom=...))"
            )
        if layer.window is not None:
            return _window_attention(query, layer.store, starts, lens, layer.window, scaling, softcap)
        out = ragged_attention(
            query.reshape(B * Hq, Q, D), layer.store.k, layer.store.v, starts, lens, scaling, softcap=softcap
        )
        if self.watched:
            self._record_newest(layer, query, scaling, softcap)
        return out.view(B, Hq, Q, D).transpose(1, 2)

    def watch(self, cell: int, gqa_reduce: str = "mean") -> None:
        """Record the newest query's attention for ``cell`` on every later forward (:meth:`newest_attention`).

        ``gqa_reduce`` (mean | max | sum) folds the query heads that read one storage head into one row.
        Layers held at their window are not recorded (no decode rule evicts there).
        """
        if gqa_reduce not in ("mean", "max", "sum"):
            raise ValueError(f"gqa_reduce must be one of mean, max, sum (got {gqa_reduce!r})")
        self.watched[cell] = gqa_reduce

    def newest_attention(self, layer_idx: int, cell: int) -> list[torch.Tensor]:
        """Per storage head of a watched cell, float32 [len]: the attention its newest query gave each entry.

        Entries are in logical order (oldest first, the positions a decode rule's keep set names) and
        include the newest token itself; each row sums to 1 over the query heads' reduction (``mean``).
        """
        newest = self.layers[layer_idx].newest.get(cell)
        if newest is None:
            raise RuntimeError(f"cell {cell} is not watched, or has not been fed since (RaggedCache.watch)")
        return newest

    def _record_newest(self, layer: RaggedLayer, query: torch.Tensor, scaling: float, softcap: float | None) -> None:
        """Softmax of the last query ([B, Hq, Q, D]) of each watched active row over its segments, in fp32."""
        rows = [r for r, cell in enumerate(self.active) if cell in self.watched]
        if not rows:
            return
        st, h = layer.store, layer.heads
        _, Hq, _, D = query.shape
        dev = st.lens.device
        segs = torch.tensor([self.active[r] * h + j for r in rows for j in range(h)], device=dev)
        lens = st.lens.index_select(0, segs)
        span = torch.arange(int(lens.max()), device=dev)
        valid = span[None, :] < lens[:, None]  # [R*h, span]
        idx = (st.starts.index_select(0, segs)[:, None] + span).masked_fill_(~valid, 0)
        k = st.k[idx].float()  # [R*h, span, D]
        q = query[rows, :, -1].float().reshape(len(rows) * h, Hq // h, D)  # a segment's query heads, in order
        logits = cap_scores(torch.matmul(q, k.transpose(1, 2)).mul_(scaling), softcap)
        probs = logits.masked_fill_(~valid[:, None, :], float("-inf")).softmax(dim=-1)  # [R*h, G, span]
        lens_list = lens.tolist()
        for i, r in enumerate(rows):
            cell = self.active[r]
            block = probs[i * h : (i + 1) * h]
            reduced = group_reduce(block.reshape(-1, block.shape[-1]), h, self.watched[cell])  # [h, span]
            heads = []
            for j in range(h):
                att = reduced[j, : lens_list[i * h + j]]
                ring = layer.rings.get(cell * h + j)
                heads.append(att[ring.logical_rows(att.numel()).to(dev)] if ring is not None else att)
            layer.newest[cell] = heads

    def evict(self, layer_idx: int, cell: int, keep: list[torch.Tensor]) -> None:
        """Keep only the given positions (one int64 tensor per storage head, in logical order) of a cell's segments.

        The segment's capacity is reused by the tokens appended next (decode-time eviction holds a
        constant size); the logical length is unchanged, so later tokens keep their true positions.
        A keep set that is a prefix plus the newest entries drops the oldest entries after the
        prefix: the appended rows take their slots (O(new tokens), :class:`Ring`). Any other keep
        set moves the kept rows to the front of the segment, in logical order.
        """
        layer = self.layers[layer_idx]
        st = layer.store
        base = cell * layer.heads
        if len(keep) != layer.heads:
            raise ValueError(f"keep has {len(keep)} heads, the layer has {layer.heads}")
        dev = st.k.device
        starts = st.starts[base : base + layer.heads].tolist()
        lens = st.lens[base : base + layer.heads].tolist()
        src: list[torch.Tensor] = []
        dst: list[torch.Tensor] = []
        for h in range(layer.heads):
            seg, kept, length = base + h, keep[h], lens[h]
            if kept.numel() == length:
                continue  # a valid keep set of every position keeps all
            ring = layer.rings.get(seg)
            a = _prefix_suffix(kept, length, ring.lo if ring is not None else None)
            moves = _ring_moves(ring, a, length - kept.numel(), length) if a is not None else None
            if moves is not None:
                s_rows, d_rows, new_ring = moves
                src.append(starts[h] + torch.tensor(s_rows, dtype=torch.long))
                dst.append(starts[h] + torch.tensor(d_rows, dtype=torch.long))
            else:
                rows = ring.logical_rows(length) if ring is not None else torch.arange(length)
                src.append(starts[h] + rows[kept.cpu()])
                dst.append(starts[h] + torch.arange(kept.numel()))
                new_ring = None
            if new_ring is None or new_ring.head == new_ring.lo:
                layer.rings.pop(seg, None)
            else:
                layer.rings[seg] = new_ring
        if src:
            s_idx, d_idx = torch.cat(src).to(dev), torch.cat(dst).to(dev)
            st.k[d_idx] = st.k[s_idx]  # the right side is gathered first, so overlapping moves are safe
            st.v[d_idx] = st.v[s_idx]
        st.lens[base : base + layer.heads] = torch.tensor([int(k.numel()) for k in keep], device=st.lens.device)

    # -- bookkeeping ---------------------------------------------------------------------------
    def kv_bytes(self, cell: int | None = None) -> int:
        """Bytes of the compressed K and V of one cell (as built), or allocated by the whole cache.

        A cell's figure counts exactly its kept tokens: what a cache holding only that cell,
        with no room for new tokens, allocates. The whole cache also holds every segment's headroom.
        """
        if cell is None:
            return sum(layer.store.nbytes() for layer in self.layers)
        total = 0
        for layer, counts in zip(self.layers, self.compressed[cell]):
            row = layer.store.k.shape[1] * (layer.store.k.element_size() + layer.store.v.element_size())
            total += sum(counts) * row
        return total

    def stored_tokens(self, cell: int = 0) -> list[list[int]]:
        """Tokens held now per layer and storage head of one cell."""
        return [layer.stored_tokens(cell) for layer in self.layers]

    def mark(self) -> CacheMark:
        """Remember the current lengths so appended tokens can be dropped again."""
        return CacheMark(list(self.logical), [la.store.lens.clone() for la in self.layers],
                         [dict(la.rings) for la in self.layers])

    def rollback(self, mark: CacheMark) -> None:
        """Drop every token appended since ``mark`` (the storage stays allocated for reuse).

        Cells that evicted tokens since the mark cannot get them back: rebuild those instead.
        """
        for layer, lens, rings in zip(self.layers, mark.lens, mark.rings):
            layer.store = truncate(layer.store, torch.minimum(lens, layer.store.lens))
            layer.rings = dict(rings)
        self.logical = list(mark.logical)
        self._sync_layers()
