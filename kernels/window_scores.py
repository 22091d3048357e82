"""Window attention statistics for SnapKV-family scores and CAKE's layer preference.

``window_stats`` scores every prompt key by the softmax attention of the last ``w`` prompt queries
(causal inside the window); ``window_max`` gives the largest of those attentions per key (DefensiveKV's
aggregation, computed only when a policy asks for it); ``group_reduce`` folds query heads onto their KV head;
``attention_mass_budget`` counts how many keys carry a given share of a score row.
"""

import torch

from ._softcap import cap_scores, check_softcap
from ._triton import HAS_TRITON, next_pow2, qk_tile, tl, triton
from .dispatch import interpreting, resolve

__all__ = [
    "attention_mass_budget",
    "group_reduce",
    "window_max",
    "window_max_torch",
    "window_stats",
    "window_stats_torch",
]

_EPS = 1e-10  # CAKE's log(A + eps)


def _check(q_win: torch.Tensor, k: torch.Tensor, prefix_len: int) -> None:
    if q_win.dim() != 3 or k.dim() != 3 or q_win.shape[2] != k.shape[2]:
        raise ValueError(f"q_win must be [Hq, w, D] and k [S, T, D], got {q_win.shape}, {k.shape}")
    Hq, w = q_win.shape[:2]
    S, T = k.shape[:2]
    if Hq % S != 0:
        raise ValueError(f"{Hq} query heads are not a multiple of {S} KV heads")
    if not 1 <= w <= T:
        raise ValueError(f"window {w} must be in [1, T={T}]")
    if not 0 <= prefix_len <= T:
        raise ValueError(f"prefix_len {prefix_len} must be in [0, T={T}]")


def window_stats_torch(
    q_win: torch.Tensor, k: torch.Tensor, scaling: float, prefix_len: int, softcap: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch reference of :func:`window_stats` (materialises the [Hq, w, T] window attention)."""
    Hq, w, D = q_win.shape
    S, T, _ = k.shape
    G = Hq // S
    q = q_win.float().reshape(S, G * w, D)
    scores = cap_scores(torch.matmul(q, k.float().transpose(1, 2)).mul_(scaling), softcap).view(Hq, w, T)
    qpos = torch.arange(T - w, T, device=k.device)[:, None]
    future = torch.arange(T, device=k.device)[None, :] > qpos
    scores.masked_fill_(future, float("-inf"))
    a = torch.softmax(scores, dim=-1)
    win_sum = a.sum(dim=1)
    win_sumsq = (a * a).sum(dim=1)
    ap = a[:, :, :prefix_len]
    win_entropy = -(ap * torch.log(ap + _EPS)).sum(dim=(1, 2))
    return win_sum, win_sumsq, win_entropy


def window_stats(
    q_win: torch.Tensor,
    k: torch.Tensor,
    scaling: float,
    prefix_len: int,
    backend: str | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Column statistics of the window attention.

    ``q_win`` [Hq, w, D] are the last ``w`` prompt queries (post-RoPE), ``k`` [S, T, D] all prompt
    keys; query head ``h`` reads KV head ``h // (Hq // S)``. Window query ``i`` sits at position
    ``T - w + i`` and sees keys ``0 .. T - w + i``. With ``A = softmax(scaling * q k^T)`` (fp32) returns
    fp32 ``(win_sum [Hq, T], win_sumsq [Hq, T], win_entropy [Hq])``: the sum over window queries of
    ``A`` and of ``A**2``, and ``-sum A log(A + 1e-10)`` over window rows and keys ``j < prefix_len``.
    ``softcap`` (Gemma 2) soft-caps the scaled logits to ``softcap * tanh(logits / softcap)`` first.
    """
    _check(q_win, k, prefix_len)
    check_softcap(softcap)
    if resolve(backend, q_win, k) == "torch":
        return window_stats_torch(q_win, k, scaling, prefix_len, softcap)
    return _window_stats_triton(q_win, k, scaling, prefix_len, softcap)


def window_max_torch(
    q_win: torch.Tensor, k: torch.Tensor, scaling: float, softcap: float | None = None
) -> torch.Tensor:
    """Torch reference of :func:`window_max`: materialises one KV head's [G, w, T] window attention at a time."""
    Hq, w, D = q_win.shape
    S, T, _ = k.shape
    G = Hq // S
    qpos = torch.arange(T - w, T, device=k.device)[:, None]
    future = torch.arange(T, device=k.device)[None, :] > qpos
    out = torch.empty(Hq, T, dtype=torch.float32, device=k.device)
    for s in range(S):
        q = q_win[s * G : (s + 1) * G].float()
        scores = cap_scores(torch.matmul(q, k[s].float().transpose(0, 1)).mul_(scaling), softcap)  # [G, w, T]
        scores.masked_fill_(future, float("-inf"))
        out[s * G : (s + 1) * G] = torch.softmax(scores, dim=-1).amax(dim=1)
    return out


def window_max(q_win: torch.Tensor, k: torch.Tensor, scaling: float, softcap: float | None = None) -> torch.Tensor:
    """Largest window attention each key receives: fp32 ``[Hq, T]``, ``max_i A[i, j]`` over the window queries.

    Same inputs and causal layout as :func:`window_stats` (query head ``h`` reads KV head
    ``h // (Hq // S)``; window query ``i`` sees keys ``0 .. T - w + i``; ``softcap`` as there). There is
    no Triton kernel: the statistic is computed only for policies that ask for it, and the torch form runs
    on every device.
    """
    _check(q_win, k, 0)
    check_softcap(softcap)
    return window_max_torch(q_win, k, scaling, softcap)


def group_reduce(x: torch.Tensor, n_segments: int, mode: str = "mean") -> torch.Tensor:
    """Fold query-head rows [Hq, T] onto their ``n_segments`` KV heads -> [S, T].

    Query heads ``s*G .. s*G + G - 1`` (``G = Hq // S``) are reduced with ``mode``: ``"mean"``,
    ``"max"`` or ``"sum"``.
    """
    Hq = x.shape[0]
    if Hq % n_segments != 0:
        raise ValueError(f"{Hq} rows are not a multiple of {n_segments} segments")
    g = x.reshape(n_segments, Hq // n_segments, *x.shape[1:])
    if mode == "mean":
        return g.mean(dim=1)
    if mode == "max":
        return g.amax(dim=1)
    if mode == "sum":
        return g.sum(dim=1)
    raise ValueError(f"mode={mode!r}: expected 'mean', 'max' or 'sum'")


def attention_mass_budget(dist: torch.Tensor, tau: float) -> torch.Tensor:
    """Per row of ``dist`` [H, T] (non-negative), the fewest entries holding a ``tau`` share of the row.

    Returns int64 [H]: the smallest ``k`` such that the ``k`` largest entries sum to at least
    ``tau * row_sum``, clamped to ``[1, T]``. A row that sums to zero (or ``tau <= 0``) gives 1; with
    ``tau >= 1`` rounding may leave the target unmet, which gives ``T``. Sums run in float64.
    """
    if dist.dim() != 2:
        raise ValueError(f"dist must be [H, T], got {dist.shape}")
    H, T = dist.shape
    if T == 0:
        raise ValueError("dist has no columns")
    d = dist.double()
    srt = torch.sort(d, dim=1, descending=True).values
    csum = torch.cumsum(srt, dim=1)
    target = tau * csum[:, -1:]
    k = (csum < target).sum(dim=1) + 1
    return k.clamp_(1, T).long()


_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_BLOCK_T = 64  # keys per program


if HAS_TRITON:

    @triton.jit
    def _window_scores(
        q_ptr,
        k_ptr,
        h,
        kb,
        w,
        T,
        D,
        G,
        qs_h,
        qs_w,
        qs_d,
        ks_s,
        ks_t,
        ks_d,
        qk_scale,
        BLOCK_W: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
        DOT_PREC: tl.constexpr,
        SOFTCAP: tl.constexpr,
    ):
        """Scores (log2 units, soft-capped when SOFTCAP > 0) of the window rows of head h against key block
        kb, masked to -inf."""
        i = tl.arange(0, BLOCK_W).to(tl.int64)
        j = kb * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
        s = qk_tile(
            q_ptr, k_ptr, h, i, j, w, T, D, G, qs_h, qs_w, qs_d, ks_s, ks_t, ks_d, qk_scale, BLOCK_D, UPCAST, DOT_PREC,
            SOFTCAP,
        )
        visible = (i < w)[:, None] & (j < T)[None, :] & (j[None, :] <= (T - w + i)[:, None])
        return tl.where(visible, s, float("-inf")), visible

    @triton.jit
    def _window_lse_kernel(
        q_ptr,
        k_ptr,
        part_ptr,
        w,
        T,
        D,
        G,
        NB,
        qs_h,
        qs_w,
        qs_d,
        ks_s,
        ks_t,
        ks_d,
        qk_scale,
        BLOCK_W: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
        DOT_PREC: tl.constexpr,
        SOFTCAP: tl.constexpr,
    ):
        """Pass 1, program (h, kb): log2-sum-exp2 of each window row over key block kb -> part[h, kb, :]."""
        h = tl.program_id(0).to(tl.int64)
        kb = tl.program_id(1).to(tl.int64)
        s, visible = _window_scores(
            q_ptr,
            k_ptr,
            h,
            kb,
            w,
            T,
            D,
            G,
            qs_h,
            qs_w,
            qs_d,
            ks_s,
            ks_t,
            ks_d,
            qk_scale,
            BLOCK_W,
            BLOCK_T,
            BLOCK_D,
            UPCAST,
            DOT_PREC,
            SOFTCAP,
        )
        m = tl.max(s, axis=1)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        l = tl.sum(tl.where(visible, tl.exp2(s - m_safe[:, None]), 0.0), axis=1)
        lse = tl.where(l > 0.0, m_safe + tl.log2(tl.maximum(l, 1e-30)), float("-inf"))
        i = tl.arange(0, BLOCK_W)
        tl.store(part_ptr + (h * NB + kb) * w + i, lse, mask=i < w)

    @triton.jit
    def _window_stats_kernel(
        q_ptr,
        k_ptr,
        lse_ptr,
        sum_ptr,
        sumsq_ptr,
        ent_ptr,
        w,
        T,
        D,
        G,
        NB,
        prefix_len,
        qs_h,
        qs_w,
        qs_d,
        ks_s,
        ks_t,
        ks_d,
        qk_scale,
        BLOCK_W: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
        DOT_PREC: tl.constexpr,
        SOFTCAP: tl.constexpr,
    ):
        """Pass 2, program (h, kb): column sums of A and A^2 over key block kb, and its entropy share."""
        h = tl.program_id(0).to(tl.int64)
        kb = tl.program_id(1).to(tl.int64)
        s, visible = _window_scores(
            q_ptr,
            k_ptr,
            h,
            kb,
            w,
            T,
            D,
            G,
            qs_h,
            qs_w,
            qs_d,
            ks_s,
            ks_t,
            ks_d,
            qk_scale,
            BLOCK_W,
            BLOCK_T,
            BLOCK_D,
            UPCAST,
            DOT_PREC,
            SOFTCAP,
        )
        i = tl.arange(0, BLOCK_W)
        lse = tl.load(lse_ptr + h * w + i, mask=i < w, other=0.0)
        a = tl.where(visible, tl.exp2(s - lse[:, None]), 0.0)
        j = kb * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
        tl.store(sum_ptr + h * T + j, tl.sum(a, axis=0), mask=j < T)
        tl.store(sumsq_ptr + h * T + j, tl.sum(a * a, axis=0), mask=j < T)
        in_prefix = visible & (j < prefix_len)[None, :]
        ent = tl.where(in_prefix, -a * tl.log(a + 1e-10), 0.0)
        tl.store(ent_ptr + h * NB + kb, tl.sum(tl.sum(ent, axis=1), axis=0))


def _window_stats_triton(
    q_win: torch.Tensor, k: torch.Tensor, scaling: float, prefix_len: int, softcap: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    Hq, w, D = q_win.shape
    S, T, _ = k.shape
    NB = triton.cdiv(T, _BLOCK_T)
    dev = q_win.device
    f32 = torch.float32
    meta = dict(
        BLOCK_W=next_pow2(w, 16),
        BLOCK_T=_BLOCK_T,
        BLOCK_D=next_pow2(D, 16),
        UPCAST=interpreting() or q_win.dtype != k.dtype,
        DOT_PREC="ieee" if q_win.dtype == f32 else "tf32",
        SOFTCAP=(softcap or 0.0) * _LOG2E,  # in the log2 units of the scores
        num_warps=4,
    )
    strides = (*q_win.stride(), *k.stride(), scaling * _LOG2E)
    part = torch.empty(Hq, NB, w, dtype=f32, device=dev)
    _window_lse_kernel[(Hq, NB)](q_win, k, part, w, T, D, Hq // S, NB, *strides, **meta)
    # combine the per-block log2-sum-exp2 (tiny: Hq x NB x w); every row sees key 0, so it is finite
    lse = (torch.logsumexp(part * _LN2, dim=1) * _LOG2E).contiguous()
    win_sum = torch.empty(Hq, T, dtype=f32, device=dev)
    win_sumsq = torch.empty(Hq, T, dtype=f32, device=dev)
    ent = torch.empty(Hq, NB, dtype=f32, device=dev)
    _window_stats_kernel[(Hq, NB)](
        q_win, k, lse, win_sum, win_sumsq, ent, w, T, D, Hq // S, NB, prefix_len, *strides, **meta
    )
    return win_sum, win_sumsq, ent.sum(dim=1)
