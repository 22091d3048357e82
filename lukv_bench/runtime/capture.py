"""The ``lukv`` attention function: ordinary causal attention that also captures what policies need.

It is registered in transformers' attention-function registry, so any decoder that dispatches
through ``ALL_ATTENTION_FUNCTIONS`` (Llama, Mistral, Qwen2/3, ...) runs unmodified. The object
that handles a forward is passed as the ``lukv=`` keyword of ``model(...)``, which transformers
forwards to every attention call:

* a :class:`Capture` during the one prefill: causal attention plus window statistics (and H2O's
  accumulated column sums when a policy asks for them), computed per layer in O(n) memory per head;
* a :class:`~lukv_bench.runtime.cache.RaggedCache` while decoding: attention over the compact ragged cache.

Without a ``lukv=`` keyword the function falls back to plain SDPA, so the model stays usable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lukv_bench.kernels.ops import accumulated_attention, window_stats

ATTN_IMPLEMENTATION = "lukv"


@dataclass
class Capture:
    """Collects per-layer prefill statistics; one instance per prefill."""

    window: int = 32
    accumulated: bool = False  #: also compute H2O's causal column sums
    block: int = 256  #: query block size for the accumulated sums
    layers: dict[int, dict[str, torch.Tensor | int]] = field(default_factory=dict)

    def attention(
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """Causal attention over the whole prompt; records statistics for ``module.layer_idx``."""
        if query.shape[0] != 1:
            raise ValueError("lukv-bench prefill capture supports batch size 1 only")
        n = query.shape[2]
        if key.shape[2] != n:
            raise ValueError("capture expects one prefill of the whole prompt (no earlier cache)")
        out = F.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
        )
        w = min(self.window, n)
        q, k = query[0], key[0]
        win_sum, win_sumsq, win_entropy = window_stats(q[:, n - w :], k, scaling, prefix_len=n - w)
        rec: dict[str, torch.Tensor | int] = {
            "win_sum": win_sum,
            "win_sumsq": win_sumsq,
            "win_entropy": win_entropy,
            "window": w,
        }
        if self.accumulated:
            rec["acc_attn"] = accumulated_attention(q, k, scaling, block=self.block)
        self.layers[module.layer_idx] = rec
        return out.transpose(1, 2)


def lukv_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention entry point registered as ``lukv``; returns ([B, Q, Hq, D], None)."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    handler = kwargs.get("lukv")
    if handler is not None:
        return handler.attention(module, query, key, value, scaling), None
    mask = attention_mask
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        is_causal=mask is None and query.shape[2] > 1,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2), None


def register() -> None:
    """Register the ``lukv`` attention function (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, lukv_attention)
    # masks as for SDPA (the fallback path uses them; capture and ragged attention are causal by design)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
