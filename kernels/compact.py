"""Gather kept tokens of every storage head into one flat ragged buffer (``compact``)."""

import torch

from ._triton import HAS_TRITON, next_pow2, tl, triton
from .dispatch import resolve

__all__ = ["compact", "compact_torch"]


def _check(
    src_k: torch.Tensor,
    src_v: torch.Tensor,
    indices: torch.Tensor,
    cu_seqlens: torch.Tensor,
    dest_starts: torch.Tensor,
    dest_k: torch.Tensor,
    dest_v: torch.Tensor,
) -> None:
    if src_k.dim() != 3 or src_k.shape != src_v.shape:
        raise ValueError(f"src_k/src_v must be [S, T, D] with equal shapes, got {src_k.shape}, {src_v.shape}")
    if dest_k.dim() != 2 or dest_k.shape != dest_v.shape or dest_k.shape[1] != src_k.shape[2]:
        raise ValueError(f"dest_k/dest_v must be [M, {src_k.shape[2]}], got {dest_k.shape}, {dest_v.shape}")
    S = src_k.shape[0]
    if cu_seqlens.shape != (S + 1,) or dest_starts.shape != (S,):
        raise ValueError(f"cu_seqlens must be [{S + 1}] and dest_starts [{S}]")
    if indices.dim() != 1:
        raise ValueError("indices must be 1-D")


def compact_torch(
    src_k: torch.Tensor,
    src_v: torch.Tensor,
    indices: torch.Tensor,
    cu_seqlens: torch.Tensor,
    dest_starts: torch.Tensor,
    dest_k: torch.Tensor,
    dest_v: torch.Tensor,
) -> None:
    """Torch reference of :func:`compact` (one advanced-indexing gather and scatter per buffer)."""
    S, N = src_k.shape[0], indices.shape[0]
    if N == 0:
        return
    dev = src_k.device
    counts = (cu_seqlens[1:] - cu_seqlens[:-1]).to(dev)
    seg = torch.repeat_interleave(torch.arange(S, device=dev), counts, output_size=N)
    pos = torch.arange(N, device=dev) - cu_seqlens.to(dev)[seg]
    rows = (dest_starts.to(dev)[seg] + pos).to(dest_k.device)
    idx = indices.to(dev)
    dest_k[rows] = src_k[seg, idx].to(dest_k.dtype)
    dest_v[rows] = src_v[seg, idx].to(dest_v.dtype)


def compact(
    src_k: torch.Tensor,
    src_v: torch.Tensor,
    indices: torch.Tensor,
    cu_seqlens: torch.Tensor,
    dest_starts: torch.Tensor,
    dest_k: torch.Tensor,
    dest_v: torch.Tensor,
    backend: str | None = None,
) -> None:
    """Copy the kept tokens of each head segment into flat buffers, in place.

    ``src_k``/``src_v`` are [S, T, D] (any strides); ``indices`` (int64 [N]) holds token positions,
    segment ``s`` being ``indices[cu_seqlens[s]:cu_seqlens[s+1]]`` (empty segments allowed);
    ``dest_starts`` (int64 [S]) is the first row of each segment in ``dest_k``/``dest_v`` ([M, D]).
    Writes ``dest[dest_starts[s] + i] = src[s, indices[cu_seqlens[s] + i]]``.
    """
    _check(src_k, src_v, indices, cu_seqlens, dest_starts, dest_k, dest_v)
    which = resolve(backend, src_k, src_v, indices, cu_seqlens, dest_starts, dest_k, dest_v)
    if which == "torch":
        compact_torch(src_k, src_v, indices, cu_seqlens, dest_starts, dest_k, dest_v)
    else:
        _compact_triton(src_k, src_v, indices, cu_seqlens, dest_starts, dest_k, dest_v)


_BLOCK_N = 32  # tokens per program


if HAS_TRITON:

    @triton.jit
    def _compact_kernel(
        src_k,
        src_v,
        idx_ptr,
        cu_ptr,
        dest_start_ptr,
        dest_k,
        dest_v,
        N,
        D,
        S,
        sk_s,
        sk_t,
        sk_d,
        sv_s,
        sv_t,
        sv_d,
        dk_m,
        dk_d,
        dv_m,
        dv_d,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """One program copies BLOCK_N consecutive entries of ``indices`` (any segments) for K and V."""
        n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        n_ok = n < N
        # segment of entry n = number of segment boundaries cu[1..S-1] at or before n; this stays
        # right with empty segments (repeated boundaries) and needs no host-side search
        seg = tl.zeros([BLOCK_N], dtype=tl.int64)
        for s in range(1, S):
            seg += (n >= tl.load(cu_ptr + s)).to(tl.int64)
        tok = tl.load(idx_ptr + n, mask=n_ok, other=0)
        first = tl.load(cu_ptr + seg, mask=n_ok, other=0)
        row = tl.load(dest_start_ptr + seg, mask=n_ok, other=0) + (n - first)
        d = tl.arange(0, BLOCK_D).to(tl.int64)
        ok = n_ok[:, None] & (d < D)[None, :]
        kx = tl.load(src_k + seg[:, None] * sk_s + tok[:, None] * sk_t + d[None, :] * sk_d, mask=ok)
        tl.store(dest_k + row[:, None] * dk_m + d[None, :] * dk_d, kx.to(dest_k.dtype.element_ty), mask=ok)
        vx = tl.load(src_v + seg[:, None] * sv_s + tok[:, None] * sv_t + d[None, :] * sv_d, mask=ok)
        tl.store(dest_v + row[:, None] * dv_m + d[None, :] * dv_d, vx.to(dest_v.dtype.element_ty), mask=ok)


def _compact_triton(
    src_k: torch.Tensor,
    src_v: torch.Tensor,
    indices: torch.Tensor,
    cu_seqlens: torch.Tensor,
    dest_starts: torch.Tensor,
    dest_k: torch.Tensor,
    dest_v: torch.Tensor,
) -> None:
    S, _, D = src_k.shape
    N = indices.shape[0]
    if N == 0:
        return
    grid = (triton.cdiv(N, _BLOCK_N),)
    _compact_kernel[grid](
        src_k,
        src_v,
        indices.long(),
        cu_seqlens.long(),
        dest_starts.long(),
        dest_k,
        dest_v,
        N,
        D,
        S,
        *src_k.stride(),
        *src_v.stride(),
        *dest_k.stride(),
        *dest_v.stride(),
        BLOCK_N=_BLOCK_N,
        BLOCK_D=next_pow2(D),
    )
