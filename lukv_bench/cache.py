"""A transformers ``Cache`` that physically holds only the kept tokens, ragged per layer and head.

Each layer stores one flat K buffer and one flat V buffer with a segment per storage head
(:class:`~lukv_bench.kernels.RaggedStore`); evicted entries are not stored at all. The cache keeps
the *logical* length (tokens seen) apart from what is stored, so tokens appended after eviction get
the RoPE positions they would have had without eviction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from lukv_bench.kernels import RaggedStore, append, compact, ragged_attention, truncate
from lukv_bench.selection import KeepSet


class RaggedLayer(CacheLayerMixin):
    """One layer of the ragged cache: a :class:`RaggedStore` plus the logical length."""

    is_compileable = False
    is_sliding = False

    def __init__(self, store: RaggedStore, logical_len: int, repeat: int = 1):
        super().__init__()
        self.store = store
        self.logical_len = logical_len
        self.repeat = repeat  #: >1 in query-head storage mode: new KV heads are repeated per query head
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the layer is built from a compressed prefill."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append the new tokens ([1, Hkv, Q, D]) to every head's segment; returns the inputs unchanged.

        Attention itself runs in :meth:`RaggedCache.attention` over the ragged store.
        """
        if key_states.shape[0] != 1:
            raise ValueError("RaggedCache supports batch size 1 only")
        k, v = key_states[0], value_states[0]
        if self.repeat > 1:
            k = k.repeat_interleave(self.repeat, dim=0)
            v = v.repeat_interleave(self.repeat, dim=0)
        self.store = append(self.store, k, v)
        self.logical_len += key_states.shape[2]
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

    def stored_tokens(self) -> list[int]:
        """Tokens actually held per storage head."""
        return self.store.lens.tolist()


@dataclass
class CacheMark:
    """A point to roll a :class:`RaggedCache` back to (drops tokens appended after it)."""

    logical: list[int]
    lens: list[torch.Tensor]


class RaggedCache(Cache):
    """Compact KV cache with per-layer, per-head ragged lengths (batch size 1)."""

    def __init__(self, layers: list[RaggedLayer], n_q_heads: int, storage: str = "kv"):
        super().__init__(layers=layers)
        self.n_q_heads = n_q_heads
        self.storage = storage

    @classmethod
    def from_keep(
        cls,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        keep: list[KeepSet],
        n_q_heads: int,
        storage: str = "kv",
        headroom: int = 0,
    ) -> RaggedCache:
        """Build the cache by gathering the kept tokens from full per-layer K/V ([1, Hkv, n, D]).

        In ``storage="query"`` mode each query head keeps its own set (KeepSet has Hq segments) and
        the KV heads are repeated to the query heads first (G x the memory, as in the original SnapKV).
        """
        layers = []
        for k, v, ks in zip(keys, values, keep):
            src_k, src_v = k[0], v[0]
            n_kv = src_k.shape[0]
            repeat = n_q_heads // n_kv if storage == "query" else 1
            if repeat > 1:
                src_k = src_k.repeat_interleave(repeat, dim=0)
                src_v = src_v.repeat_interleave(repeat, dim=0)
            counts = ks.counts
            if len(counts) != src_k.shape[0]:
                raise ValueError(f"keep set has {len(counts)} heads, cache layer has {src_k.shape[0]}")
            store = RaggedStore.empty(counts, src_k.shape[-1], src_k.dtype, src_k.device, headroom=headroom)
            compact(src_k, src_v, ks.indices, ks.cu_seqlens.to(src_k.device), store.starts, store.k, store.v)
            store.lens.copy_(torch.tensor(counts, dtype=torch.long, device=store.lens.device))
            layers.append(RaggedLayer(store, logical_len=k.shape[2], repeat=repeat))
        return cls(layers, n_q_heads=n_q_heads, storage=storage)

    # -- attention -----------------------------------------------------------------------------
    def attention(
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """Attention of the new queries ([1, Hq, Q, D]) over this layer's ragged store -> [1, Q, Hq, D]."""
        store = self.layers[module.layer_idx].store
        out = ragged_attention(query[0], store.k, store.v, store.starts, store.lens, scaling)
        return out.unsqueeze(0).transpose(1, 2)

    def evict(self, layer_idx: int, keep: list[torch.Tensor]) -> None:
        """Keep only the given segment positions (one int64 tensor per storage head) of a layer.

        The layer gets a new, exactly sized store (evicted entries are freed, not masked); the
        logical length is unchanged, so later tokens keep their true positions.
        """
        layer = self.layers[layer_idx]
        old = layer.store
        counts = [int(k.numel()) for k in keep]
        device = old.k.device
        rows = torch.cat([old.starts[s] + k.to(device) for s, k in enumerate(keep)]) if keep else old.lens[:0]
        cu = torch.zeros(len(keep) + 1, dtype=torch.long, device=device)
        cu[1:] = torch.cumsum(torch.tensor(counts, dtype=torch.long, device=device), 0)
        new = RaggedStore.empty(counts, old.k.shape[-1], old.k.dtype, device)
        # the flat buffer seen as S identical "sequences" lets compact gather absolute rows
        n_seg = len(keep)
        src_k = old.k.unsqueeze(0).expand(n_seg, -1, -1)
        src_v = old.v.unsqueeze(0).expand(n_seg, -1, -1)
        compact(src_k, src_v, rows, cu, new.starts, new.k, new.v)
        layer.store = new

    # -- bookkeeping ---------------------------------------------------------------------------
    def kv_bytes(self) -> int:
        """Bytes of K and V buffers actually allocated by this cache."""
        return sum(layer.store.nbytes() for layer in self.layers)

    def stored_tokens(self) -> list[list[int]]:
        """Tokens held per layer and storage head."""
        return [layer.stored_tokens() for layer in self.layers]

    def mark(self) -> CacheMark:
        """Remember the current lengths so appended tokens can be dropped again."""
        return CacheMark([la.logical_len for la in self.layers], [la.store.lens.clone() for la in self.layers])

    def rollback(self, mark: CacheMark) -> None:
        """Drop every token appended since ``mark`` (the storage stays allocated for reuse)."""
        for layer, logical, lens in zip(self.layers, mark.logical, mark.lens):
            layer.store = truncate(layer.store, lens)
            layer.logical_len = logical
