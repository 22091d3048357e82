"""Fidelity of a compressed cache: its model outputs against the full-cache reference, position by position."""

from __future__ import annotations

import torch


def _check_pair(ref_logits: torch.Tensor, logits: torch.Tensor) -> None:
    if ref_logits.shape != logits.shape or ref_logits.dim() != 2:
        raise ValueError(
            f"expected two [m, V] logit tensors of equal shape, got {tuple(ref_logits.shape)} and {tuple(logits.shape)}"
        )


def kl_divergence(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-position KL(ref || test) in nats, computed in fp32 from log-softmax: shape [m]."""
    _check_pair(ref_logits, logits)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_p = ref_logp.exp()
    terms = torch.where(ref_p > 0, ref_p * (ref_logp - logp), torch.zeros_like(ref_p))
    return terms.sum(-1).clamp_min(0.0)


def greedy_agreement(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Fraction of positions whose argmax token equals the reference's (1.0 for m = 0)."""
    _check_pair(ref_logits, logits)
    if ref_logits.shape[0] == 0:
        return 1.0
    return (ref_logits.argmax(-1) == logits.argmax(-1)).float().mean().item()
