"""Optional Triton import shared by the kernel modules.

Kernel modules define their ``@triton.jit`` functions only when :data:`HAS_TRITON` is true, so the
package imports (and the torch reference path works) on machines without triton.
"""

from typing import Any

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton: Any = None  # type: ignore[no-redef]
    tl: Any = None  # type: ignore[no-redef]
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "next_pow2", "qk_tile", "tanh", "tl", "triton"]


def next_pow2(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


if HAS_TRITON:

    @triton.jit
    def qk_tile(
        q_ptr,
        k_ptr,
        h,
        i,
        j,
        n_q,
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
        BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
        DOT_PREC: tl.constexpr,
        SOFTCAP: tl.constexpr = 0.0,
    ):
        """Scaled scores ``qk_scale * q[h, i] . k[h // G, j]``: a [len(i), len(j)] fp32 tile, unmasked.

        Loads the query rows ``i`` of head ``h`` (rows ``>= n_q`` read as zeros) and the keys ``j`` of
        its KV head ``h // G`` (keys ``>= T`` read as zeros), ``D`` wide padded to ``BLOCK_D``; with
        ``UPCAST`` both tiles go to fp32 before the dot. ``SOFTCAP > 0`` soft-caps the scores to
        ``SOFTCAP * tanh(s / SOFTCAP)`` (the cap in the units of ``qk_scale``, e.g. ``cap * log2(e)``).
        Callers apply their own visibility mask.
        """
        d = tl.arange(0, BLOCK_D).to(tl.int64)
        q = tl.load(
            q_ptr + h * qs_h + i[:, None] * qs_t + d[None, :] * qs_d,
            mask=(i < n_q)[:, None] & (d < D)[None, :],
            other=0.0,
        )
        k = tl.load(
            k_ptr + (h // G) * ks_s + j[:, None] * ks_t + d[None, :] * ks_d,
            mask=(j < T)[:, None] & (d < D)[None, :],
            other=0.0,
        )
        if UPCAST:
            q = q.to(tl.float32)
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if SOFTCAP > 0:
            s = SOFTCAP * tanh(s / SOFTCAP)
        return s

    @triton.jit
    def tanh(x):
        """tanh from exp (libdevice's is not available in the interpreter): -1 and 1 at the extremes."""
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)

else:  # pragma: no cover - depends on the environment
    qk_tile: Any = None  # type: ignore[no-redef]
    tanh: Any = None  # type: ignore[no-redef]
