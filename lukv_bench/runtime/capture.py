"""The ``lukv`` attention function: ordinary causal attention that also captures what policies need.

It is registered in transformers' attention-function registry, so any decoder that dispatches
through ``ALL_ATTENTION_FUNCTIONS`` (Llama, Mistral, Qwen2/3, ...) runs unmodified. The object
that handles a forward is passed as the ``lukv=`` keyword of ``model(...)``, which transformers
forwards to every attention call:

* a :class:`Capture` during the one prefill: causal attention plus window statistics (and, only when a
  policy asks for them: H2O's accumulated column sums, the last query's attention, the window maximum,
  the values' output norms), computed per layer in O(n) memory per head;
* a :class:`~lukv_bench.runtime.cache.RaggedCache` while decoding: attention over the compact ragged cache.

Without a ``lukv=`` keyword the function falls back to plain SDPA, so the model stays usable.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lukv_bench.kernels.ops import accumulated_attention, window_max, window_stats
from lukv_bench.runtime.contract import ACCUMULATED, LAST_QUERY, VALUE_NORMS, WINDOW_MAX

ATTN_IMPLEMENTATION = "lukv"


@dataclass
class Capture:
    """Collects per-layer prefill statistics; one instance per prefill."""

    window: int = 32
    #: optional statistics to compute besides the window sums (names in ``runtime.contract.OPTIONAL_NEEDS``)
    needs: Collection[str] = frozenset()
    block: int = 256  #: query block size for the accumulated sums
    layers: dict[int, dict[str, torch.Tensor | int]] = field(default_factory=dict)

    def optional_stats(self, layer: int) -> dict[str, torch.Tensor | None]:
        """The optional statistics of ``layer`` as ``LayerStats`` keyword arguments (None where not captured)."""
        rec = self.layers[layer]
        return {name: rec.get(name) for name in _FIELDS.values()}  # type: ignore[misc]

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
        if ACCUMULATED in self.needs:
            rec[_FIELDS[ACCUMULATED]] = accumulated_attention(q, k, scaling, block=self.block)
        if LAST_QUERY in self.needs:
            # a window of one query: its "sum" is the newest query's attention row
            rec[_FIELDS[LAST_QUERY]] = window_stats(q[:, n - 1 :], k, scaling, prefix_len=n - 1)[0]
        if WINDOW_MAX in self.needs:
            rec[_FIELDS[WINDOW_MAX]] = window_max(q[:, n - w :], k, scaling)
        if VALUE_NORMS in self.needs:
            rec[_FIELDS[VALUE_NORMS]] = output_value_norms(module, value[0], query.shape[1])
        self.layers[module.layer_idx] = rec
        return out.transpose(1, 2)


#: the LayerStats field that holds each optional statistic
_FIELDS = {ACCUMULATED: "acc_attn", LAST_QUERY: "last_attn", WINDOW_MAX: "win_max", VALUE_NORMS: "value_norms"}


def output_value_norms(module: torch.nn.Module, values: torch.Tensor, n_q_heads: int) -> torch.Tensor:
    """``||W_o^h v_{g(h), j}||_1`` for every query head h and token j: fp32 [Hq, n] (CriticalKV).

    ``values`` [Hkv, n, D] are the layer's values; ``W_o^h`` is the slice of the output projection
    (``module.o_proj``, [hidden, Hq * D]) that reads head h's attention output, and query head h reads
    KV head ``g(h) = h // (Hq / Hkv)``. The L1 norm is the one CriticalKV's perturbation bound uses.
    """
    proj = getattr(module, "o_proj", None)
    if not isinstance(proj, torch.nn.Linear):
        raise ValueError(
            f"the value-norm statistic needs the attention module's output projection 'o_proj' "
            f"({type(module).__name__} has none); use a policy without the critical scorer for this model"
        )
    n_kv, n, d = values.shape
    group = n_q_heads // n_kv
    weight = proj.weight.float()
    out = torch.empty(n_q_heads, n, dtype=torch.float32, device=values.device)
    for h in range(n_q_heads):
        # [n, D] @ [D, hidden]: one head at a time keeps the intermediate at n x hidden
        contribution = values[h // group].float() @ weight[:, h * d : (h + 1) * d].T
        out[h] = contribution.abs().sum(dim=-1)
    return out


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
