"""H2O's accumulated attention: column sums of the full causal softmax attention, in O(n) memory."""

import torch

from ._softcap import cap_scores, check_softcap
from ._triton import HAS_TRITON, next_pow2, qk_tile, tl, triton
from .dispatch import interpreting, resolve

__all__ = ["accumulated_attention", "accumulated_attention_torch"]


def _check(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"q must be [Hq, T, D] and k [S, T, D], got {q.shape}, {k.shape}")
    if q.shape[0] % k.shape[0] != 0:
        raise ValueError(f"{q.shape[0]} query heads are not a multiple of {k.shape[0]} KV heads")


def accumulated_attention_torch(
    q: torch.Tensor, k: torch.Tensor, scaling: float, block: int = 128, softcap: float | None = None
) -> torch.Tensor:
    """Torch reference of :func:`accumulated_attention`: ``block`` query rows at a time."""
    Hq, T, D = q.shape
    S = k.shape[0]
    G = Hq // S
    out = torch.zeros(S, G, T, dtype=torch.float32, device=q.device)
    kf = k.float()
    qg = q.view(S, G, T, D) if q.is_contiguous() else q.reshape(S, G, T, D)
    for i0 in range(0, T, block):
        i1 = min(T, i0 + block)
        # keys past i1 - 1 are invisible to every row of this block
        s = cap_scores(torch.matmul(qg[:, :, i0:i1].float(), kf[:, None, :i1].transpose(-1, -2)).mul_(scaling), softcap)
        future = torch.arange(i1, device=q.device)[None, :] > torch.arange(i0, i1, device=q.device)[:, None]
        s.masked_fill_(future, float("-inf"))
        out[:, :, :i1] += torch.softmax(s, dim=-1).sum(dim=2)
    return out.view(Hq, T)


def accumulated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    scaling: float,
    block: int = 128,
    backend: str | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Column sums of the causal softmax attention (H2O's accumulated attention).

    ``out[h, j] = sum_{i >= j} softmax_i(scaling * q_i k^T)[j]``.

    ``q`` [Hq, T, D], ``k`` [S, T, D] (query head ``h`` reads KV head ``h // (Hq // S)``); returns fp32
    [Hq, T]. Never materialises T x T: the torch path handles ``block`` query rows at a time
    (O(block * T) memory); the Triton path computes row log-sum-exps first, then column sums per
    key block (deterministic, no atomics). ``block`` only affects the torch path. ``softcap`` (Gemma 2)
    soft-caps the scaled logits to ``softcap * tanh(logits / softcap)`` before the softmax.
    """
    _check(q, k)
    check_softcap(softcap)
    if block < 1:
        raise ValueError("block must be >= 1")
    if resolve(backend, q, k) == "torch":
        return accumulated_attention_torch(q, k, scaling, block, softcap)
    return _accumulated_triton(q, k, scaling, softcap)


_LOG2E = 1.4426950408889634
_BLOCK_M = 64  # query rows per tile
_BLOCK_N = 64  # keys per tile


if HAS_TRITON:

    @triton.jit
    def _scores(
        q_ptr,
        k_ptr,
        h,
        m0,
        n0,
        T,
        D,
        G,
        qs_h,
        qs_t,
        qs_d,
        ks_s,
        ks_t,
        ks_d,
        qk_scale,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
        DOT_PREC: tl.constexpr,
        SOFTCAP: tl.constexpr,
    ):
        """Causally masked scores (log2 units, soft-capped when SOFTCAP > 0) of query rows m0.. against keys
        n0.. of head h."""
        i = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        j = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        s = qk_tile(
            q_ptr, k_ptr, h, i, j, T, T, D, G, qs_h, qs_t, qs_d, ks_s, ks_t, ks_d, qk_scale, BLOCK_D, UPCAST, DOT_PREC,
            SOFTCAP,
        )
        visible = (i < T)[:, None] & (j[None, :] <= i[:, None])
        return tl.where(visible, s, float("-inf")), visible

    @triton.jit
    def _row_lse_kernel(
        q_ptr,
        k_ptr,
        lse_ptr,
        T,
        D,
        G,
        qs_h,
        qs_t,
        qs_d,
        ks_s,
        ks_t,
        ks_d,
        qk_scale,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
        DOT_PREC: tl.constexpr,
        SOFTCAP: tl.constexpr,
    ):
        """Pass 1, program (h, mb): online log2-sum-exp2 of query rows mb*BLOCK_M.. over visible keys."""
        h = tl.program_id(0).to(tl.int64)
        m0 = tl.program_id(1).to(tl.int64) * BLOCK_M
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        hi = tl.minimum(m0 + BLOCK_M, T)
        for n0 in range(0, hi, BLOCK_N):
            s, visible = _scores(
                q_ptr,
                k_ptr,
                h,
                m0,
                n0,
                T,
                D,
                G,
                qs_h,
                qs_t,
                qs_d,
                ks_s,
                ks_t,
                ks_d,
                qk_scale,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                UPCAST,
                DOT_PREC,
                SOFTCAP,
            )
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
            m_i = m_new
        i = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        tl.store(lse_ptr + h * T + i, m_i + tl.log2(tl.maximum(l_i, 1e-30)), mask=i < T)

    @triton.jit
    def _col_sum_kernel(
        q_ptr,
        k_ptr,
        lse_ptr,
        out_ptr,
        T,
        D,
        G,
        qs_h,
        qs_t,
        qs_d,
        ks_s,
        ks_t,
        ks_d,
        qk_scale,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
        DOT_PREC: tl.constexpr,
        SOFTCAP: tl.constexpr,
    ):
        """Pass 2, program (h, nb): sum of exp2(s - lse) over every query row that sees keys nb*BLOCK_N.."""
        h = tl.program_id(0).to(tl.int64)
        n0 = tl.program_id(1).to(tl.int64) * BLOCK_N
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        # rows before n0 cannot see these keys; start at the query tile holding row n0
        for m0 in range((n0 // BLOCK_M) * BLOCK_M, T, BLOCK_M):
            s, visible = _scores(
                q_ptr,
                k_ptr,
                h,
                m0,
                n0,
                T,
                D,
                G,
                qs_h,
                qs_t,
                qs_d,
                ks_s,
                ks_t,
                ks_d,
                qk_scale,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                UPCAST,
                DOT_PREC,
                SOFTCAP,
            )
            i = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
            lse = tl.load(lse_ptr + h * T + i, mask=i < T, other=0.0)
            acc += tl.sum(tl.where(visible, tl.exp2(s - lse[:, None]), 0.0), axis=0)
        j = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        tl.store(out_ptr + h * T + j, acc, mask=j < T)


def _accumulated_triton(q: torch.Tensor, k: torch.Tensor, scaling: float, softcap: float | None = None) -> torch.Tensor:
    Hq, T, D = q.shape
    S = k.shape[0]
    meta = dict(
        BLOCK_M=_BLOCK_M,
        BLOCK_N=_BLOCK_N,
        BLOCK_D=next_pow2(D, 16),
        UPCAST=interpreting() or q.dtype != k.dtype,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        SOFTCAP=(softcap or 0.0) * _LOG2E,  # in the log2 units of the scores
        num_warps=4,
    )
    args = (T, D, Hq // S, *q.stride(), *k.stride(), scaling * _LOG2E)
    lse = torch.empty(Hq, T, dtype=torch.float32, device=q.device)
    _row_lse_kernel[(Hq, triton.cdiv(T, _BLOCK_M))](q, k, lse, *args, **meta)
    out = torch.empty(Hq, T, dtype=torch.float32, device=q.device)
    _col_sum_kernel[(Hq, triton.cdiv(T, _BLOCK_N))](q, k, lse, out, *args, **meta)
    return out
