"""Attention of new query tokens over a ragged per-head KV cache (flat buffer + segment table)."""

import torch

from ._triton import HAS_TRITON, next_pow2, tl, triton
from .dispatch import interpreting, resolve

__all__ = ["ragged_attention", "ragged_attention_torch"]


def _check(q, k_flat, v_flat, starts, lens) -> None:
    if q.dim() != 3 or k_flat.dim() != 2 or k_flat.shape != v_flat.shape or k_flat.shape[1] != q.shape[2]:
        raise ValueError(
            f"q must be [Hq, Q, D] and k_flat/v_flat [M, D], got {q.shape}, {k_flat.shape}, {v_flat.shape}"
        )
    S = starts.shape[0]
    if starts.dim() != 1 or lens.shape != starts.shape or S == 0 or q.shape[0] % S != 0:
        raise ValueError(f"starts/lens must be [S] with S dividing Hq={q.shape[0]}")


def ragged_attention_torch(
    q: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Torch reference of :func:`ragged_attention`: one dense masked attention per segment."""
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
        sc = torch.matmul(qs, ks.t()) * scaling  # [G, Q, n]
        visible = n - Q + torch.arange(Q, device=q.device) + 1  # entries query i may see
        mask = torch.arange(n, device=q.device)[None, :] >= visible[:, None]
        sc = sc.masked_fill(mask, float("-inf"))
        p = torch.softmax(sc, dim=-1).nan_to_num_(0.0)  # rows with nothing visible -> zeros
        out[s * G : (s + 1) * G] = torch.matmul(p, vs)
    return out.to(q.dtype)


def ragged_attention(
    q: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    scaling: float,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal attention of ``Q`` new tokens over a ragged cache -> [Hq, Q, D] in ``q``'s dtype.

    ``q`` [Hq, Q, D]; ``k_flat``/``v_flat`` [M, D] hold segment ``s`` (KV head ``s``, read by query heads
    ``s*G .. s*G + G - 1``) in rows ``starts[s] .. starts[s] + lens[s] - 1`` (``starts``/``lens`` int64
    [S]). The last ``Q`` entries of each segment are the new tokens themselves, so query ``i`` sees the
    first ``lens[s] - Q + i + 1`` entries; if that is <= 0 its output is zero. Softmax and
    accumulation run in fp32.
    """
    _check(q, k_flat, v_flat, starts, lens)
    if resolve(backend, q, k_flat, v_flat, starts, lens) == "torch":
        return ragged_attention_torch(q, k_flat, v_flat, starts, lens, scaling)
    return _ragged_triton(q, k_flat, v_flat, starts, lens, scaling)


def _ragged_triton(q, k_flat, v_flat, starts, lens, scaling):
    raise NotImplementedError
