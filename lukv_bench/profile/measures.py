"""The per-layer, per-KV-head measures of one captured prefill: LMBA, LMBO and the retrieval ablation.

Query heads of a GQA group are averaged onto their KV head, as ``layer-uncertainty`` averages over heads.

* **LMBA** at ``tau``: the fewest tokens holding ``tau`` of the window-averaged attention
  (``attention_mass_budget`` of ``LayerStats.win_mean``), the quantity ZigZagKV splits budgets by;
* **LMBO** at ``c``: the smallest budget (tokens, the always-kept window included, as policy budgets
  count) whose SnapKV selection keeps the window queries' attention output within mean cosine
  similarity ``c`` of the uncompressed output; a binary search per head;
* **ablation**: how much the answer's mean per-token log-likelihood (nats) drops when the question
  and answer tokens cannot attend to the answer-bearing context tokens in layer ``l`` alone, i.e. as
  if only that layer had evicted them after the context was prefilled (per layer, not per head).

The window queries and the answer's log-likelihood come from short forwards over the prompt's tail
that attend over the captured keys and values of the rest (:class:`TailAttention`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lukv_bench.errors import UserError
from lukv_bench.kernels.ops import attention_mass_budget, group_reduce
from lukv_bench.runtime.contract import LayerStats
from lukv_bench.runtime.selection import boosted_scores

#: layers ablated per batched forward (bounds the memory of the batch's copies of the prefix keys)
ABLATION_BATCH = 8

# ------------------------------------------------------------------------------------------ LMBA


def head_mass_budgets(layer: LayerStats, tau: float, n_kv_heads: int) -> torch.Tensor:
    """LMBA per KV head [Hkv] (float64): each query head's MBA of ``win_mean``, averaged over its group.

    The mean over all KV heads equals ``layer-uncertainty``'s LMBA of the layer.
    """
    mba = attention_mass_budget(layer.win_mean.float(), tau).double()
    return group_reduce(mba[:, None], n_kv_heads, "mean")[:, 0]


# ------------------------------------------------------------------------------------------ LMBO


@dataclass
class WindowAttention:
    """The window queries' attention over all prompt keys of one layer, for re-use under many kept sets."""

    probs: torch.Tensor  #: [S, G, w, n] float64 causal softmax attention of the window queries
    values: torch.Tensor  #: [S, n, D] float64

    @classmethod
    def build(cls, q_win: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> WindowAttention:
        """From window queries [Hq, w, D] and keys/values [S, n, D]; query head ``h`` reads KV head ``h // G``."""
        n_q, w, d = q_win.shape
        n_kv, n, _ = keys.shape
        q = q_win.double().reshape(n_kv, n_q // n_kv, w, d)
        logits = torch.einsum("sgwd,snd->sgwn", q, keys.double()) * scaling
        qpos = torch.arange(n - w, n, device=keys.device)
        future = torch.arange(n, device=keys.device)[None, :] > qpos[:, None]
        probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
        return cls(probs=probs, values=values.double())

    def output(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Attention output [S, G, w, D] over every key, or only where ``keep`` [S, n] (bool) is set.

        Attention restricted to the kept keys is the full attention renormalised over them.
        """
        p = self.probs if keep is None else self.probs * keep[:, None, None, :]
        out = torch.einsum("sgwn,snd->sgwd", p, self.values)
        return out if keep is None else out / p.sum(dim=-1, keepdim=True)


def selection_ranks(scores: torch.Tensor, window: int) -> torch.Tensor:
    """[S, n] position of each token in the order SnapKV-style selection keeps them.

    The newest ``window`` tokens come first (as :func:`~lukv_bench.runtime.selection.select` keeps them),
    then the others by descending score, so ``ranks < b`` is the kept set at budget ``b``.
    """
    s = boosted_scores(scores, sinks=0, window=window)
    order = torch.topk(s, s.shape[-1], dim=-1, sorted=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    return ranks


def output_budgets(
    attn: WindowAttention, ranks: torch.Tensor, thresholds: Sequence[float], window: int
) -> torch.Tensor:
    """LMBO per threshold and head [C, S] (int64): smallest budget with mean cosine >= threshold.

    The cosine similarity between the kept-token and the full output is averaged over the head's
    query heads and window queries. The search runs over ``[min(window, n), n]`` (the window is
    always kept); a head that never reaches a threshold below ``n`` gets ``n``. Each threshold's
    search only visits budgets, never changes the ranking, so results grow with the threshold.
    """
    n_heads, n = ranks.shape
    full = attn.output()
    out = []
    for c in thresholds:
        lo = torch.full((n_heads,), min(window, n), dtype=torch.long, device=ranks.device)
        hi = torch.full((n_heads,), n, dtype=torch.long, device=ranks.device)
        while bool((lo < hi).any()):
            active = lo < hi
            mid = (lo + hi) // 2
            kept = attn.output(ranks < mid[:, None])
            cos = F.cosine_similarity(kept, full, dim=-1).mean(dim=(1, 2))
            ok = cos >= c
            hi = torch.where(active & ok, mid, hi)
            lo = torch.where(active & ~ok, mid + 1, lo)
        out.append(lo)
    return torch.stack(out)


# -------------------------------------------------------------------------------------- ablation


@dataclass
class TailAttention:
    """Attention handler (``lukv=``) for a forward over the prompt's tail, the prefix coming from a capture.

    Each layer attends over its ``prefix_keys``/``prefix_values`` (the first ``start`` positions, shared
    by every batch row) followed by the new tokens, causally. Optional jobs: record the queries at
    absolute positions ``record[0] .. record[1] - 1`` (the observation window; batch row 0), and hide the keys at
    ``hide_keys`` from every query at or after absolute position ``hide_from`` — in batch row ``b``
    only inside layer ``hide_layers[b]`` (None: nowhere), so one batched forward ablates several layers.
    """

    prefix_keys: Sequence[torch.Tensor]  #: per layer [1, Hkv, start, D]
    prefix_values: Sequence[torch.Tensor]
    record: tuple[int, int] | None = None  #: absolute [first, end) query positions to record
    hide_keys: torch.Tensor | None = None  #: int64 key positions
    hide_layers: Sequence[int | None] = (None,)  #: per batch row
    hide_from: int = 0
    queries: dict[int, torch.Tensor] = field(default_factory=dict)  #: layer -> [Hq, w, D]
    scalings: dict[int, float] = field(default_factory=dict)

    def attention(
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """Causal attention of the new queries over prefix + new keys; returns [B, t, Hq, D]."""
        layer = module.layer_idx
        batch, t = query.shape[0], query.shape[2]
        pk, pv = self.prefix_keys[layer], self.prefix_values[layer]
        start = pk.shape[2]
        if sliding_window is not None and sliding_window < start + t:
            raise UserError(
                f"layer {layer} attends through a sliding window ({sliding_window} tokens) shorter than the prompt: "
                "lukv-bench profile does not support sliding-window layers yet (docs/models.md)"
            )
        key = torch.cat([pk.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([pv.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2)
        total = start + t
        qpos = torch.arange(start, total, device=query.device)
        allowed = torch.arange(total, device=query.device)[None, :] <= qpos[:, None]  # [t, total]
        rows = [b for b, hide in enumerate(self.hide_layers) if hide == layer]
        if rows and self.hide_keys is not None and self.hide_keys.numel():
            hidden = torch.zeros(total, dtype=torch.bool, device=query.device)
            hidden[self.hide_keys.to(query.device)] = True
            mask = allowed.expand(batch, 1, t, total).clone()
            mask[rows] &= ~(hidden[None, :] & (qpos >= self.hide_from)[:, None])
            allowed = mask
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
        )
        if self.record is not None:
            first, end = self.record
            if not start <= first <= end <= total:
                raise ValueError(f"cannot record queries {first}..{end - 1}: the forward covers {start}..{total - 1}")
            self.queries[layer] = query[0, :, first - start : end - start].detach()
            self.scalings[layer] = float(scaling)
        return out.transpose(1, 2)


@torch.no_grad()
def answer_log_likelihood(model: torch.nn.Module, start: int, tail_ids: Sequence[int], answer_ids: Sequence[int],
                          handler: TailAttention) -> torch.Tensor:
    """Mean log-probability (nats) of ``answer_ids`` teacher-forced after ``tail_ids``, per batch row [B].

    ``tail_ids`` sit at absolute positions ``start, start + 1, ...`` after the prefix the handler
    holds; the batch has one row per entry of ``handler.hide_layers``.
    """
    device = next(model.parameters()).device
    batch = len(handler.hide_layers)
    ids = torch.tensor([list(tail_ids) + list(answer_ids)], dtype=torch.long, device=device).expand(batch, -1)
    positions = torch.arange(start, start + ids.shape[1], device=device)[None, :].expand(batch, -1)
    m = len(answer_ids)
    out = model(input_ids=ids, position_ids=positions, use_cache=False, lukv=handler, logits_to_keep=m + 1)
    if m == 0:  # nothing to score (the forward still ran the handler, e.g. to record queries)
        return torch.full((batch,), float("nan"), dtype=torch.float64)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    target = torch.tensor(list(answer_ids), dtype=torch.long, device=logp.device)
    return logp.gather(2, target[None, :, None].expand(batch, -1, -1))[..., 0].mean(dim=1).double().cpu()


def ablation_drops(model: torch.nn.Module, prefix_keys: Sequence[torch.Tensor], prefix_values: Sequence[torch.Tensor],
                   tail_ids: Sequence[int], answer_ids: Sequence[int], hidden: torch.Tensor, hide_from: int,
                   baseline: float, batch: int = ABLATION_BATCH) -> torch.Tensor:
    """[L] drop of the answer's mean log-likelihood when layer ``l`` alone hides ``hidden`` keys.

    Runs ``ceil(L / batch)`` batched forwards of the tail (one row per ablated layer).
    """
    start = prefix_keys[0].shape[2]
    n_layers = len(prefix_keys)
    drops = []
    for first in range(0, n_layers, batch):
        layers = list(range(first, min(first + batch, n_layers)))
        handler = TailAttention(prefix_keys, prefix_values, hide_keys=hidden, hide_layers=layers, hide_from=hide_from)
        drops.append(baseline - answer_log_likelihood(model, start, tail_ids, answer_ids, handler))
    return torch.cat(drops)

