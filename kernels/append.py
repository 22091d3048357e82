"""The ragged per-head KV store and in-place appends of new tokens (with amortised regrowth)."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._triton import HAS_TRITON, next_pow2, tl, triton
from .dispatch import resolve

__all__ = ["RaggedStore", "append", "append_torch", "reserve", "truncate"]

_MIN_GROW = 16  # extra rows per segment on regrowth, at least

#: ``alloc(rows, D, dtype, device) -> (k, v)``: zero-filled [rows, D] K and V buffers for a new store
Alloc = Callable[[int, int, torch.dtype, torch.device | str], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class RaggedStore:
    """Flat K/V buffers with one segment per storage head.

    Segment ``s`` owns rows ``starts[s] .. starts[s] + caps[s] - 1`` of ``k``/``v`` ([M, D]); the first
    ``lens[s]`` rows hold tokens. ``starts``, ``lens`` and ``caps`` are int64 [S] on the buffers' device.
    """

    k: torch.Tensor
    v: torch.Tensor
    starts: torch.Tensor
    lens: torch.Tensor
    caps: torch.Tensor

    @classmethod
    def empty(
        cls,
        counts: list[int],
        D: int,
        dtype: torch.dtype,
        device: torch.device | str,
        headroom: int = 0,
        bucket_fill: float | None = None,
        alloc: Alloc | None = None,
    ) -> "RaggedStore":
        """Segments of capacity ``counts[s] + headroom`` with ``lens = counts``, back to back.

        With ``bucket_fill`` (in (0, 1]), segments of similar length share one capacity: sorted by
        length, a segment joins the current bucket while its count is at least ``bucket_fill`` times
        the bucket's longest, and every member gets that longest count + ``headroom``; each bucket's
        segments lie back to back, so attention reads a bucket as one dense [S_b, cap, D] block
        (:func:`~lukv_bench.kernels.ragged_attention`). That pads at most ``1 / bucket_fill - 1``
        of the stored rows. Kept rows are uninitialised: fill them with
        :func:`~lukv_bench.kernels.compact` using ``starts`` as ``dest_starts``; free rows are zero.
        ``alloc`` supplies the zero-filled K and V buffers (default: fresh ``torch.zeros``), e.g. from
        buffers reused across stores.
        """
        if any(c < 0 for c in counts) or headroom < 0:
            raise ValueError("counts and headroom must be non-negative")
        if bucket_fill is not None and not 0 < bucket_fill <= 1:
            raise ValueError(f"bucket_fill must be in (0, 1], got {bucket_fill}")
        caps_l = [c + headroom for c in counts]
        order = list(range(len(counts)))
        if bucket_fill is not None:
            order.sort(key=lambda i: -counts[i])
            top = None
            for i in order:
                if top is None or counts[i] < bucket_fill * top:
                    top = counts[i]
                caps_l[i] = top + headroom
        starts_l = [0] * len(counts)
        pos = 0
        for i in order:
            starts_l[i] = pos
            pos += caps_l[i]
        lens = torch.tensor(counts, dtype=torch.long, device=device)
        caps = torch.tensor(caps_l, dtype=torch.long, device=device)
        starts = torch.tensor(starts_l, dtype=torch.long, device=device)
        # zeros, not empty: attention reads whole blocks, and free rows must not hold NaN bit patterns
        if alloc is not None:
            k, v = alloc(pos, D, dtype, device)
            if k.shape != (pos, D) or v.shape != (pos, D) or k.dtype != dtype or v.dtype != dtype:
                raise ValueError(f"alloc returned K {tuple(k.shape)} {k.dtype} and V {tuple(v.shape)} {v.dtype}; "
                                 f"expected ({pos}, {D}) {dtype}")
        else:
            k = torch.zeros(pos, D, dtype=dtype, device=device)
            v = torch.zeros_like(k)
        return cls(k=k, v=v, starts=starts, lens=lens, caps=caps)

    @property
    def n_segments(self) -> int:
        """Number of segments (storage heads)."""
        return self.starts.shape[0]

    def nbytes(self) -> int:
        """Bytes allocated by the K and V buffers (capacity, not just the stored tokens)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def segment(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the stored K and V rows of segment ``s`` (syncs on CUDA; for tests and debugging)."""
        st, n = int(self.starts[s]), int(self.lens[s])
        return self.k[st : st + n], self.v[st : st + n]


def _regrow(store: RaggedStore, Q: int) -> RaggedStore:
    """New store with capacity ``lens + Q + max(16, lens // 4)`` per segment; stored rows copied over."""
    lens = store.lens
    caps = lens + Q + torch.clamp(lens // 4, min=_MIN_GROW)
    starts = torch.cumsum(caps, 0) - caps
    total = int(caps.sum())
    D = store.k.shape[1]
    k = torch.zeros(total, D, dtype=store.k.dtype, device=store.k.device)
    v = torch.zeros_like(k)
    n = int(lens.sum())
    if n:
        S = lens.shape[0]
        seg = torch.repeat_interleave(torch.arange(S, device=lens.device), lens, output_size=n)
        pos = torch.arange(n, device=lens.device) - (torch.cumsum(lens, 0) - lens)[seg]
        k[starts[seg] + pos] = store.k[store.starts[seg] + pos]
        v[starts[seg] + pos] = store.v[store.starts[seg] + pos]
    return RaggedStore(k=k, v=v, starts=starts, lens=lens.clone(), caps=caps)


def reserve(store: RaggedStore, Q: int) -> RaggedStore:
    """``store`` if every segment has room for ``Q`` more tokens, else a regrown copy that has (one sync)."""
    if Q > 0 and bool((store.lens + Q > store.caps).any()):
        return _regrow(store, Q)
    return store


def append_torch(store: RaggedStore, new_k: torch.Tensor, new_v: torch.Tensor) -> None:
    """Torch path of the in-place write of :func:`append` (assumes every segment has room)."""
    S, Q, D = new_k.shape
    rows = ((store.starts + store.lens)[:, None] + torch.arange(Q, device=store.lens.device)).reshape(-1)
    store.k.index_copy_(0, rows, new_k.reshape(S * Q, D).to(store.k.dtype))
    store.v.index_copy_(0, rows, new_v.reshape(S * Q, D).to(store.v.dtype))


def append(store: RaggedStore, new_k: torch.Tensor, new_v: torch.Tensor, backend: str | None = None) -> RaggedStore:
    """Append ``Q`` new tokens per segment (``new_k``/``new_v`` [S, Q, D]) and return the store.

    Writes in place at ``starts + lens`` and increments ``lens`` in place. If a segment lacks room,
    the store is first regrown into fresh buffers (capacity ``lens + Q + max(16, lens // 4)`` per
    segment, one gather of the stored rows), and that new store is returned. Checking for room reads
    ``lens``/``caps`` back to the host (one sync on CUDA).
    """
    if new_k.dim() != 3 or new_k.shape != new_v.shape:
        raise ValueError(f"new_k/new_v must be [S, Q, D] with equal shapes, got {new_k.shape}, {new_v.shape}")
    S, Q, D = new_k.shape
    if S != store.n_segments or D != store.k.shape[1]:
        raise ValueError(f"new tokens {tuple(new_k.shape)} vs {store.n_segments} segments of width {D}")
    if Q == 0:
        return store
    store = reserve(store, Q)
    if resolve(backend, store.k, new_k, new_v) == "torch":
        append_torch(store, new_k, new_v)
    else:
        _append_triton(store, new_k, new_v)
    store.lens += Q
    return store


def truncate(store: RaggedStore, lens: torch.Tensor | list[int] | int) -> RaggedStore:
    """Roll back appended tokens: set ``lens`` (int, list or int64 [S]; each <= the current length).

    Capacity is kept for reuse; nothing is copied. Returns ``store``.
    """
    new = torch.as_tensor(lens, dtype=torch.long, device=store.lens.device).expand_as(store.lens)
    if bool((new > store.lens).any()) or bool((new < 0).any()):
        raise ValueError("truncate can only shorten segments (0 <= lens <= current lens)")
    store.lens.copy_(new)
    return store


_BLOCK_Q = 16  # new tokens per program


if HAS_TRITON:

    @triton.jit
    def _append_kernel(
        new_k,
        new_v,
        start_ptr,
        len_ptr,
        k_ptr,
        v_ptr,
        Q,
        D,
        nk_s,
        nk_q,
        nk_d,
        nv_s,
        nv_q,
        nv_d,
        k_m,
        k_d,
        v_m,
        v_d,
        BLOCK_Q: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Program (s, b) writes new tokens b*BLOCK_Q .. of segment s after its stored rows."""
        s = tl.program_id(0).to(tl.int64)
        i = tl.program_id(1).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q).to(tl.int64)
        d = tl.arange(0, BLOCK_D).to(tl.int64)
        ok = (i < Q)[:, None] & (d < D)[None, :]
        row = tl.load(start_ptr + s) + tl.load(len_ptr + s) + i
        kx = tl.load(new_k + s * nk_s + i[:, None] * nk_q + d[None, :] * nk_d, mask=ok)
        tl.store(k_ptr + row[:, None] * k_m + d[None, :] * k_d, kx.to(k_ptr.dtype.element_ty), mask=ok)
        vx = tl.load(new_v + s * nv_s + i[:, None] * nv_q + d[None, :] * nv_d, mask=ok)
        tl.store(v_ptr + row[:, None] * v_m + d[None, :] * v_d, vx.to(v_ptr.dtype.element_ty), mask=ok)


def _append_triton(store: RaggedStore, new_k: torch.Tensor, new_v: torch.Tensor) -> None:
    S, Q, D = new_k.shape
    _append_kernel[(S, triton.cdiv(Q, _BLOCK_Q))](
        new_k,
        new_v,
        store.starts,
        store.lens,
        store.k,
        store.v,
        Q,
        D,
        *new_k.stride(),
        *new_v.stride(),
        *store.k.stride(),
        *store.v.stride(),
        BLOCK_Q=_BLOCK_Q,
        BLOCK_D=next_pow2(D),
    )
