"""Attention of new query tokens over a ragged per-head KV cache (flat buffer + segment table).

Three implementations: the Triton kernel (CUDA), the C++ CPU kernel (``_ragged_cpu``: one pass over each
segment's K and V with an online softmax) and the torch path (dense blocks, batched matmuls), which
CPU calls use when the C++ kernel is unavailable or does not take the inputs.
"""

import torch

from . import _ragged_cpu
from ._softcap import cap_scores, check_softcap
from ._triton import HAS_TRITON, next_pow2, tanh, tl, triton
from .dispatch import resolve

__all__ = [
    "prepare_cpu_kernel",
    "ragged_attention",
    "ragged_attention_cpu",
    "ragged_attention_naive",
    "ragged_attention_torch",
]


def _check(
    q: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, starts: torch.Tensor, lens: torch.Tensor
) -> None:
    if q.dim() != 3 or k_flat.dim() != 2 or k_flat.shape != v_flat.shape or k_flat.shape[1] != q.shape[2]:
        raise ValueError(
            f"q must be [Hq, Q, D] and k_flat/v_flat [M, D], got {q.shape}, {k_flat.shape}, {v_flat.shape}"
        )
    S = starts.shape[0]
    if starts.dim() != 1 or lens.shape != starts.shape or S == 0 or q.shape[0] % S != 0:
        raise ValueError(f"starts/lens must be [S] with S dividing Hq={q.shape[0]}")


def ragged_attention_naive(
    q: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Plain reference of :func:`ragged_attention`: one dense masked attention per segment (a Python loop).

    Kept for tests and benchmarks as the obviously-correct baseline; production uses
    :func:`ragged_attention_torch` (CPU) or the Triton kernel (CUDA).
    """
    Hq, Q, D = q.shape
    S = starts.shape[0]
    G = Hq // S
    out = torch.zeros(Hq, Q, D, dtype=torch.float32, device=q.device)
    for s, (st, n) in enumerate(zip(starts.tolist(), lens.tolist(), strict=True)):
        if n <= 0:
            continue
        ks = k_flat[st : st + n].float()
        vs = v_flat[st : st + n].float()
        qs = q[s * G : (s + 1) * G].float()
        sc = cap_scores(torch.matmul(qs, ks.t()) * scaling, softcap)  # [G, Q, n]
        visible = n - Q + torch.arange(Q, device=q.device) + 1  # entries query i may see
        mask = torch.arange(n, device=q.device)[None, :] >= visible[:, None]
        sc = sc.masked_fill(mask, float("-inf"))
        p = torch.softmax(sc, dim=-1).nan_to_num_(0.0)  # rows with nothing visible -> zeros
        out[s * G : (s + 1) * G] = torch.matmul(p, vs)
    return out.to(q.dtype)


def _blocks(starts: list[int], lens: list[int], rows: int) -> list[tuple[list[int], int]]:
    """Segments grouped into dense blocks: (members, stride) with members back to back in memory.

    Walking segments in memory order, a block grows while the next segment starts exactly one
    stride after the previous one and fits in it; the block is then the zero-copy view
    ``[len(members), stride, D]`` of the flat buffer. Empty segments are dropped.
    """
    order = sorted((i for i in range(len(starts)) if lens[i] > 0), key=lambda i: starts[i])
    out: list[tuple[list[int], int]] = []
    for i in order:
        if out:
            members, stride = out[-1]
            gap = starts[i] - starts[members[-1]]
            if len(members) == 1 and gap >= lens[members[0]] and gap >= lens[i] and starts[i] + gap <= rows:
                out[-1] = (members + [i], gap)
                continue
            if len(members) > 1 and gap == stride and lens[i] <= stride and starts[i] + stride <= rows:
                members.append(i)
                continue
        out.append(([i], lens[i]))
    return out


def ragged_attention_torch(
    q: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Torch path of :func:`ragged_attention`: masked batched matmuls over dense blocks, no copies of K/V.

    CPU calls use it when the C++ kernel (:func:`ragged_attention_cpu`) is unavailable or does not take
    the inputs.

    Segments that lie back to back with one capacity (a batched cache lays out segments of similar
    length that way, see :meth:`RaggedStore.empty`) form a block, read as a view
    ``[S_b, stride, D]``; rows past a segment's length are masked. A cache with every segment of
    its own length degrades to one block per segment.
    """
    Hq, Q, D = q.shape
    S = starts.shape[0]
    G = Hq // S
    dev = q.device
    out = torch.zeros(S, G * Q, D, dtype=torch.float32, device=dev)
    lens_host, starts_host = lens.tolist(), starts.tolist()
    qs_all = q.reshape(S, G * Q, D)  # query heads of segment s are s*G .. s*G+G-1
    for members, stride in _blocks(starts_host, lens_host, k_flat.shape[0]):
        n = len(members)
        first = starts_host[members[0]]
        ks = k_flat[first : first + n * stride].view(n, stride, D).float()
        vs = v_flat[first : first + n * stride].view(n, stride, D).float()
        idx = torch.tensor(members, dtype=torch.long, device=dev)
        qs = qs_all.index_select(0, idx).float()
        sc = cap_scores(torch.bmm(qs, ks.transpose(1, 2)).mul_(scaling), softcap).view(n, G, Q, stride)
        seg_lens = torch.tensor([lens_host[m] for m in members], device=dev)
        visible = seg_lens[:, None] - Q + torch.arange(Q, device=dev)[None, :] + 1  # [n, Q]
        hidden = torch.arange(stride, device=dev)[None, None, :] >= visible[:, :, None]  # [n, Q, stride]
        sc.masked_fill_(hidden[:, None], float("-inf"))
        p = torch.softmax(sc, dim=-1).nan_to_num_(0.0).view(n, G * Q, stride)
        out.index_copy_(0, idx, torch.bmm(p, vs))
    return out.view(Hq, Q, D).to(q.dtype)


def ragged_attention(
    q: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    scaling: float,
    backend: str | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention of ``Q`` new tokens over a ragged cache -> [Hq, Q, D] in ``q``'s dtype.

    ``q`` [Hq, Q, D]; ``k_flat``/``v_flat`` [M, D] hold segment ``s`` (KV head ``s``, read by query heads
    ``s*G .. s*G + G - 1``) in rows ``starts[s] .. starts[s] + lens[s] - 1`` (``starts``/``lens`` int64
    [S]). The last ``Q`` entries of each segment are the new tokens themselves, so query ``i`` sees the
    first ``lens[s] - Q + i + 1`` entries; if that is <= 0 its output is zero. Softmax and
    accumulation run in fp32. ``softcap`` (Gemma 2) soft-caps the scaled logits to
    ``softcap * tanh(logits / softcap)`` before the softmax.

    ``backend="torch"`` (what CPU tensors get) runs the C++ CPU kernel where it is available (built on
    the first call, or beforehand by :func:`prepare_cpu_kernel`) and the K/V dtype is fp32, fp16 or
    bf16 with contiguous rows; otherwise :func:`ragged_attention_torch`.
    """
    _check(q, k_flat, v_flat, starts, lens)
    check_softcap(softcap)
    if resolve(backend, q, k_flat, v_flat, starts, lens) == "torch":
        if _cpu_kernel_fits(q, k_flat, v_flat, starts, lens):
            kernel = _ragged_cpu.load()
            if kernel is not None:
                return _run_cpu_kernel(kernel, q, k_flat, v_flat, starts, lens, scaling, softcap)
        return ragged_attention_torch(q, k_flat, v_flat, starts, lens, scaling, softcap)
    return _ragged_triton(q, k_flat, v_flat, starts, lens, scaling, softcap=softcap)


_CPU_KV_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _cpu_kernel_fits(
    q: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, starts: torch.Tensor, lens: torch.Tensor
) -> bool:
    """True when the C++ CPU kernel takes these inputs: all on the CPU, K/V of one supported dtype, rows contiguous."""
    return (
        all(t.device.type == "cpu" for t in (q, k_flat, v_flat, starts, lens))
        and k_flat.dtype in _CPU_KV_DTYPES
        and v_flat.dtype == k_flat.dtype
        and q.is_floating_point()
        and k_flat.shape[1] > 0
        and (k_flat.stride(1) == 1 or k_flat.numel() == 0)
        and (v_flat.stride(1) == 1 or v_flat.numel() == 0)
    )


def _run_cpu_kernel(kernel, q, k_flat, v_flat, starts, lens, scaling: float, softcap: float | None) -> torch.Tensor:
    k_flat = k_flat if k_flat.stride(1) == 1 else k_flat.new_empty(k_flat.shape)  # only an empty buffer gets here
    v_flat = v_flat if v_flat.stride(1) == 1 else v_flat.new_empty(v_flat.shape)
    out = kernel.ragged_attention(
        q.float().contiguous(),
        k_flat,
        v_flat,
        starts.long().contiguous(),
        lens.long().contiguous(),
        float(scaling),
        float(softcap or 0.0),
    )
    return out.to(q.dtype)


def ragged_attention_cpu(
    q: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """C++ CPU kernel of :func:`ragged_attention` (one pass over K and V per segment, online softmax).

    Raises :class:`RuntimeError` when the kernel is unavailable or does not take these inputs (CPU
    tensors, K/V fp32/fp16/bf16 with contiguous rows); :func:`ragged_attention` falls back to
    :func:`ragged_attention_torch` instead. For tests and benchmarks.
    """
    _check(q, k_flat, v_flat, starts, lens)
    check_softcap(softcap)
    if not _cpu_kernel_fits(q, k_flat, v_flat, starts, lens):
        raise RuntimeError("the C++ CPU kernel takes CPU tensors with fp32/fp16/bf16 K/V of contiguous rows")
    kernel = _ragged_cpu.load()
    if kernel is None:
        raise RuntimeError(f"the C++ CPU kernel is unavailable: {_ragged_cpu.unavailable_reason() or 'turned off'}")
    return _run_cpu_kernel(kernel, q, k_flat, v_flat, starts, lens, scaling, softcap)


def prepare_cpu_kernel() -> bool:
    """Build or load the C++ CPU kernel now (the first CPU call would otherwise), e.g. before timing a decode.

    True when it is available; False when CPU calls will use the torch path (warned once, with the reason).
    """
    return _ragged_cpu.load() is not None


_LOG2E = 1.4426950408889634
_BLOCK_N = 64  # keys per loop step
_MAX_PROGRAMS = 4096  # cap on (query head x query x split) programs when choosing the split count


if HAS_TRITON:

    @triton.jit
    def _ragged_split_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        start_ptr,
        len_ptr,
        m_ptr,
        l_ptr,
        acc_ptr,
        Q,
        D,
        G,
        NSPLIT,
        CHUNK,
        qs_h,
        qs_q,
        qs_d,
        k_m,
        k_d,
        v_m,
        v_d,
        qk_scale,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        SOFTCAP: tl.constexpr = 0.0,
    ):
        """Program (h, i, sp): online softmax of query i of head h over keys sp*CHUNK.. of its segment.

        Writes the running max (log2 units), the sum of exp2 and the unnormalised output for the
        split; a split with no visible key writes (-1e30, 0, 0). ``SOFTCAP > 0`` soft-caps the scores
        (the cap in log2 units).
        """
        h = tl.program_id(0).to(tl.int64)
        i = tl.program_id(1).to(tl.int64)
        sp = tl.program_id(2).to(tl.int64)
        seg = h // G
        start = tl.load(start_ptr + seg)
        visible = tl.load(len_ptr + seg) - Q + i + 1
        lo = sp * CHUNK
        hi = tl.minimum(visible, lo + CHUNK)
        d = tl.arange(0, BLOCK_D).to(tl.int64)
        d_ok = d < D
        q = tl.load(q_ptr + h * qs_h + i * qs_q + d * qs_d, mask=d_ok, other=0.0).to(tl.float32)
        q = q * qk_scale
        m_i = tl.max(tl.full([BLOCK_N], -1.0e30, dtype=tl.float32), axis=0)
        l_i = tl.sum(tl.zeros([BLOCK_N], dtype=tl.float32), axis=0)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            j = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
            j_ok = j < hi
            ok = j_ok[:, None] & d_ok[None, :]
            rows = start + j
            k = tl.load(k_ptr + rows[:, None] * k_m + d[None, :] * k_d, mask=ok, other=0.0).to(tl.float32)
            s = tl.sum(k * q[None, :], axis=1)
            if SOFTCAP > 0:
                s = SOFTCAP * tanh(s / SOFTCAP)
            s = tl.where(j_ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new)
            v = tl.load(v_ptr + rows[:, None] * v_m + d[None, :] * v_d, mask=ok, other=0.0).to(tl.float32)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m_i = m_new
        part = (h * Q + i) * NSPLIT + sp
        tl.store(m_ptr + part, m_i)
        tl.store(l_ptr + part, l_i)
        tl.store(acc_ptr + part * D + d, acc, mask=d_ok)

    @triton.jit
    def _ragged_combine_kernel(
        m_ptr,
        l_ptr,
        acc_ptr,
        out_ptr,
        Q,
        D,
        NSPLIT,
        os_h,
        os_q,
        os_d,
        BLOCK_S: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Program (h, i): merge the splits of query i of head h; zero output when nothing is visible."""
        h = tl.program_id(0).to(tl.int64)
        i = tl.program_id(1).to(tl.int64)
        sp = tl.arange(0, BLOCK_S).to(tl.int64)
        sp_ok = sp < NSPLIT
        d = tl.arange(0, BLOCK_D).to(tl.int64)
        d_ok = d < D
        base = (h * Q + i) * NSPLIT
        m = tl.load(m_ptr + base + sp, mask=sp_ok, other=-1.0e30)
        l = tl.load(l_ptr + base + sp, mask=sp_ok, other=0.0)
        acc = tl.load(acc_ptr + (base + sp)[:, None] * D + d[None, :], mask=sp_ok[:, None] & d_ok[None, :], other=0.0)
        scale = tl.exp2(m - tl.max(m, axis=0))
        total = tl.sum(scale * l, axis=0)
        o = tl.sum(scale[:, None] * acc, axis=0) / tl.where(total > 0.0, total, 1.0)
        tl.store(out_ptr + h * os_h + i * os_q + d * os_d, o.to(out_ptr.dtype.element_ty), mask=d_ok)


def _ragged_triton(
    q: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    scaling: float,
    chunk: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Flash-decoding: split each segment into chunks (programs), then merge the splits.

    The longest segment is not read back to the host; the split count is bounded by the buffer
    size M instead, so programs past a segment's end return at once. ``chunk`` overrides the keys
    per split (tests use it to force several splits); ``softcap`` as in :func:`ragged_attention`.
    """
    Hq, Q, D = q.shape
    S = starts.shape[0]
    M = max(k_flat.shape[0], 1)
    if chunk is None:
        max_splits = max(1, min(64, _MAX_PROGRAMS // (Hq * Q)))
        chunk = max(_BLOCK_N * 4, next_pow2(triton.cdiv(M, max_splits)))
    nsplit = triton.cdiv(M, chunk)
    dev = q.device
    m = torch.empty(Hq, Q, nsplit, dtype=torch.float32, device=dev)
    l = torch.empty_like(m)
    acc = torch.empty(Hq, Q, nsplit, D, dtype=torch.float32, device=dev)
    block_d = next_pow2(D)
    _ragged_split_kernel[(Hq, Q, nsplit)](
        q,
        k_flat,
        v_flat,
        starts,
        lens,
        m,
        l,
        acc,
        Q,
        D,
        Hq // S,
        nsplit,
        chunk,
        *q.stride(),
        *k_flat.stride(),
        *v_flat.stride(),
        scaling * _LOG2E,
        BLOCK_N=_BLOCK_N,
        BLOCK_D=block_d,
        SOFTCAP=(softcap or 0.0) * _LOG2E,  # in the log2 units of the scores
        num_warps=4,
    )
    out = torch.empty(Hq, Q, D, dtype=q.dtype, device=dev)
    _ragged_combine_kernel[(Hq, Q)](
        m, l, acc, out, Q, D, nsplit, *out.stride(), BLOCK_S=next_pow2(nsplit), BLOCK_D=block_d, num_warps=1
    )
    return out
