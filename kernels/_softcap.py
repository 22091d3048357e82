"""Attention logit soft-capping (Gemma 2): ``cap * tanh(logits / cap)`` before the softmax.

The torch references apply :func:`cap_scores` to their scaled scores; the Triton kernels apply the same
cap inside ``qk_tile`` (``SOFTCAP``, in log2 units: ``cap * log2(e)``, 0 = no cap).
"""

import torch

__all__ = ["cap_scores", "check_softcap"]


def check_softcap(softcap: float | None) -> None:
    """Reject a cap that is not a positive number (None means no cap)."""
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0 or None, got {softcap!r}")


def cap_scores(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """``softcap * tanh(scores / softcap)`` in place on fp32 ``scores`` (unchanged when ``softcap`` is None)."""
    if softcap is None:
        return scores
    return scores.div_(softcap).tanh_().mul_(softcap)
