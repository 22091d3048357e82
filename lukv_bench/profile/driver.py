"""The per-layer attention profile of a model: how many prompt tokens each layer and KV head needs.

Per sample, one captured prefill of the prompt (context + question, :meth:`Engine.prefill`) gives
the window statistics the policies see. Short re-runs of the prompt's tail, attending over the
captured keys and values of the rest, give the window queries and the answer's teacher-forced
log-likelihood. Per layer ``l`` and KV
head ``h`` (query heads of a GQA group averaged, as ``layer-uncertainty`` averages over heads):

* **LMBA** at ``tau``: the fewest tokens holding ``tau`` of the window-averaged attention
  (``attention_mass_budget`` of ``LayerStats.win_mean``), the quantity ZigZagKV splits budgets by;
* **LMBO** at ``c``: the smallest budget (tokens, the always-kept window included, as policy budgets
  count) whose SnapKV selection keeps the window queries' attention output within mean cosine
  similarity ``c`` of the uncompressed output; a binary search per head;
* **ablation**: how much the answer's mean per-token log-likelihood (nats) drops when the question
  and answer tokens cannot attend to the answer-bearing context tokens in layer ``l`` alone, i.e. as
  if only that layer had evicted them after the context was prefilled (per layer, not per head).
  Samples whose answer does not occur in the context, or whose prompt was cut to fit the model's
  positions (the suite's ``truncate`` rule), are skipped for this measure and counted.

On the same prefills it records the per-layer budgets every registered policy with a non-uniform
allocator (layer-uncertainty, pyramidkv, cake, adakv and plugins' ones) allocates at one mean
budget, next to uniform. Values are averaged over samples with their spread;
:func:`run_profile` drives everything and :func:`write_outputs` writes tables and plots
(:mod:`lukv_bench.profile.plots`).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lukv_bench.errors import UserError
from lukv_bench.kernels.ops import attention_mass_budget, group_reduce
from lukv_bench.runtime.contract import Budget, LayerStats
from lukv_bench.runtime.selection import boosted_scores

DEFAULT_TAUS = (0.8, 0.9, 0.95)
DEFAULT_COS = (0.99,)
DEFAULT_BUDGET = 0.2
DEFAULT_LIMIT = 4
DEFAULT_WINDOW = 32
#: the samples profiled when neither a suite nor a data file is given: offline pass-key retrieval
#: (the pass key is the answer-bearing span) at four depths of a ~1000-token context
DEFAULT_TASK: dict[str, Any] = {
    "name": "passkey",
    "type": "needle",
    "lengths": [1000],
    "depths": [0.1, 0.35, 0.65, 0.9],
    "seed": 0,
}
#: allocators that give every layer the same budget: their policies are not layer-adaptive
UNIFORM_ALLOCATORS = frozenset({"uniform", "full"})
UNIFORM_LABEL = "uniform"
#: layers ablated per batched forward (bounds the memory of the batch's copies of the prefix keys)
ABLATION_BATCH = 8


# ----------------------------------------------------------------------------------------- options


def parse_fractions(text: str, option: str, example: str) -> tuple[float, ...]:
    """Parse a comma-separated list of numbers in (0, 1] given to ``option``; UserError otherwise."""
    hint = f"{option} takes comma-separated numbers in (0, 1], e.g. {option} {example}"
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise UserError(f"{hint} (got {text!r})") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise UserError(f"{hint} (got {text!r})")
    return tuple(sorted(set(values)))


@dataclass
class ProfileSettings:
    """What is measured: the LMBA mass shares, LMBO cosine thresholds, allocation budget and window."""

    taus: tuple[float, ...] = DEFAULT_TAUS
    cos_thresholds: tuple[float, ...] = DEFAULT_COS
    budget: float = DEFAULT_BUDGET  #: mean budget (ratio of the prompt) of the allocation comparison
    window: int | None = None  #: observation window (last prompt tokens); None: the suite's, else 32
    chat_template: bool | str = "auto"
    gqa_reduce: str = "mean"  #: how query-head scores fold onto KV heads (SnapKV scores for LMBO)
    truncate: str = "middle"  #: prompts longer than the model's positions: the suite's rule (prompts.fit_prompt)

    def __post_init__(self) -> None:
        if not 0.0 < self.budget < 1.0:
            raise UserError(f"--budget must be a ratio in (0, 1), e.g. --budget 0.2 (got {self.budget})")
        if self.window is not None and self.window < 1:
            raise UserError(f"--window must be at least 1 token (got {self.window})")


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
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """Causal attention of the new queries over prefix + new keys; returns [B, t, Hq, D]."""
        layer = module.layer_idx
        batch, t = query.shape[0], query.shape[2]
        pk, pv = self.prefix_keys[layer], self.prefix_values[layer]
        start = pk.shape[2]
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


def answer_token_ids(tokenizer: Any, answer: str, chat: bool) -> list[int]:
    """Token ids of ``answer`` as the reply to the prompt: after ``Answer:`` a space leads, in chat it does not."""
    return list(tokenizer(answer if chat else " " + answer, add_special_tokens=False)["input_ids"])


def answer_span(tokenizer: Any, sample: Any, chat: bool, context_ids: Sequence[int]) -> tuple[str, list[int]] | None:
    """``(answer, context token positions)`` of the first gold answer found in the sample's context.

    Every whole-word occurrence (case-sensitive) inside ``sample.context`` counts; a token belongs to
    the span when its characters overlap an occurrence. None when no answer occurs, or when the
    tokenizer cannot map tokens to characters (a slow tokenizer).
    """
    from lukv_bench.runtime.prompts import render_prompt

    head, _, add_special = render_prompt(tokenizer, sample, chat)
    try:
        enc = tokenizer(head, add_special_tokens=add_special, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if list(enc["input_ids"]) != list(context_ids):
        return None
    base = head.find(sample.context)
    region = (base, base + len(sample.context)) if base >= 0 else (0, len(head))
    offsets = enc["offset_mapping"]
    for answer in sample.answers:
        text = answer.strip()
        if not text:
            continue
        pattern = re.compile(r"(?<!\w)" + re.escape(text) + r"(?!\w)")
        hits = [(m.start(), m.end()) for m in pattern.finditer(head, region[0], region[1])]
        positions = [
            i for i, (s, e) in enumerate(offsets) if e > s and any(s < he and e > hs for hs, he in hits)
        ]
        if positions:
            return answer, positions
    return None


# ---------------------------------------------------------------------------------------- sample


@dataclass
class SampleProfile:
    """The measures of one sample (token counts, not yet ratios)."""

    task: str
    sample_id: str
    prompt_tokens: int
    context_tokens: int
    truncated_from: int | None  #: prompt tokens before truncation (None: not truncated)
    lmba: torch.Tensor  #: [T, L, Hkv] tokens, one row per tau
    lmbo: torch.Tensor  #: [C, L, Hkv] tokens, one row per cosine threshold
    ablation: torch.Tensor | None  #: [L] drop of mean answer log-likelihood (nats/token); None: skipped
    answer: str
    answer_tokens: int
    span_tokens: int  #: answer-bearing context tokens hidden by the ablation (0 when skipped)
    baseline_ll: float | None  #: mean answer log-likelihood with nothing hidden (None: empty answer)
    allocations: dict[str, list[int]]  #: policy -> tokens kept per layer at the settings' budget

    def describe(self) -> dict[str, Any]:
        """JSON-able identity and scalars of the sample (the measures go to the tables)."""
        return {
            "task": self.task,
            "sample_id": self.sample_id,
            "prompt_tokens": self.prompt_tokens,
            "context_tokens": self.context_tokens,
            "truncated_from": self.truncated_from,
            "answer": self.answer,
            "answer_tokens": self.answer_tokens,
            "span_tokens": self.span_tokens,
            "baseline_ll": self.baseline_ll,
            "ablation_skipped": self.ablation is None,
        }


@torch.no_grad()
def profile_sample(engine: Any, task: str, sample: Any, chat: bool, settings: ProfileSettings,
                   scorer: Any, policies: Sequence[Any]) -> SampleProfile:
    """All measures of one sample: one captured prefill, then short forwards over the prompt's tail.

    One forward from ``min(context end, n - window)`` records the window queries and the baseline
    answer log-likelihood; ``ceil(L / ABLATION_BATCH)`` batched forwards of the question and answer
    give the ablation.

    ``scorer`` gives the SnapKV scores that rank tokens for LMBO; ``policies`` (uniform first) are
    planned at ``settings.budget`` on the same prefill.
    """
    from lukv_bench.runtime.prompts import build_prompt, fit_prompt, model_max_positions

    tok, model = engine.tokenizer, engine.model
    ids = build_prompt(tok, sample, chat)
    found = answer_span(tok, sample, chat, ids.context)
    answer = found[0] if found else sample.answers[0]
    answer_ids = answer_token_ids(tok, answer.strip(), chat)
    ids, original, used = fit_prompt(ids, model_max_positions(model.config), len(answer_ids), settings.truncate,
                                     task=task, sample_id=str(sample.id), where="--suite: truncate")
    if used < original:
        found = None  # the span's positions moved with the cut; this sample is not ablated
    prompt = ids.full
    n, n_ctx = len(prompt), len(ids.context)
    needs = set().union(*(p.needs for p in policies)) if policies else set()
    pre = engine.prefill(torch.tensor([prompt]), needs)
    stats = pre.stats
    w = stats.layers[0].window
    n_kv = stats.n_kv_heads
    lmba = torch.stack(
        [torch.stack([head_mass_budgets(layer, tau, n_kv) for layer in stats.layers]) for tau in settings.taus]
    )

    start = min(n_ctx, n - w)  # re-run from here: covers the window and everything after the context
    tail = prompt[start:]
    prefix_keys = [k[:, :, :start] for k in pre.keys]
    prefix_values = [v[:, :, :start] for v in pre.values]
    recorder = TailAttention(prefix_keys, prefix_values, record=(n - w, n))
    baseline = float(answer_log_likelihood(model, start, tail, answer_ids, recorder)[0])
    if not answer_ids:
        found = None  # an empty answer has no likelihood to lose

    lmbo = []
    for i, layer in enumerate(stats.layers):
        attn = WindowAttention.build(recorder.queries[i], layer.keys, layer.values, recorder.scalings[i])
        ranks = selection_ranks(scorer.score(layer, stats), w)
        lmbo.append(output_budgets(attn, ranks, settings.cos_thresholds, w))
    lmbo_t = torch.stack(lmbo, dim=1).double()  # [C, L, S]

    ablation = None
    if found:
        # only the question and answer queries see the hiding, so the re-run can start after the context
        # (the baseline re-ran from an earlier point: equal up to float rounding)
        hidden = torch.tensor(found[1], dtype=torch.long)
        ctx_keys, ctx_values = [k[:, :, :n_ctx] for k in pre.keys], [v[:, :, :n_ctx] for v in pre.values]
        ablation = ablation_drops(model, ctx_keys, ctx_values, prompt[n_ctx:], answer_ids, hidden, n_ctx, baseline)

    budget = Budget.resolve(settings.budget, n)
    allocations = {p.label: list(p.policy.plan(stats, budget, w).allocation.per_layer) for p in policies}
    return SampleProfile(
        task=task,
        sample_id=sample.id,
        prompt_tokens=n,
        context_tokens=n_ctx,
        truncated_from=original if used < original else None,
        lmba=lmba.cpu(),
        lmbo=lmbo_t.cpu(),
        ablation=ablation,
        answer=answer,
        answer_tokens=len(answer_ids),
        span_tokens=len(found[1]) if found else 0,
        baseline_ll=None if math.isnan(baseline) else baseline,
        allocations=allocations,
    )


# --------------------------------------------------------------------------------------- policies


@dataclass
class AllocationPolicy:
    """A resolved policy whose per-layer allocation is compared, and its label in tables and plots."""

    label: str
    policy: Any

    @property
    def needs(self) -> frozenset[str]:
        """Statistics the policy needs from the capture."""
        return self.policy.needs


def allocation_policies() -> list[AllocationPolicy]:
    """Uniform (SnapKV's allocation) first, then every registered policy whose allocator is not uniform."""
    from lukv_bench.registry import list_policies, resolve_policy

    out = [AllocationPolicy(UNIFORM_LABEL, resolve_policy("snapkv"))]
    for p in list_policies():
        if p["allocator"] not in UNIFORM_ALLOCATORS:
            out.append(AllocationPolicy(p["name"], resolve_policy(p["name"])))
    return out


# -------------------------------------------------------------------------------------- summaries


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """``n``, ``mean``, ``std`` (sample) and the two-sided 95% t-interval of the mean."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = sum(xs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    from scipy.stats import t as student_t

    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""
    from scipy.stats import rankdata

    if len(a) != len(b) or len(a) < 2:
        return None
    ra, rb = rankdata(a), rankdata(b)
    da, db = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    return None if denom == 0 else float((da * db).sum()) / denom


@dataclass
class ProfileResult:
    """Every sample's measures plus what was skipped; builds the tables."""

    model: str
    settings: ProfileSettings
    samples: list[SampleProfile]
    skipped: list[str] = field(default_factory=list)  #: human-readable lines
    n_layers: int = 0
    n_kv_heads: int = 0
    data_source: list[str] = field(default_factory=list)

    def _series(self) -> Iterable[tuple[str, str, int, str, list[tuple[SampleProfile, float, float | None]]]]:
        """(measure, param, layer, head, [(sample, value, tokens)]) for every table cell.

        LMBA and LMBO values are fractions of the prompt (tokens are kept alongside); head ``all``
        is the mean over KV heads.
        """
        s = self.settings
        for name, params, attr in (("lmba", s.taus, "lmba"), ("lmbo", s.cos_thresholds, "lmbo")):
            for pi, param in enumerate(params):
                for layer in range(self.n_layers):
                    heads: list[tuple[str, Any]] = [("all", None)] + [(str(h), h) for h in range(self.n_kv_heads)]
                    for label, h in heads:
                        cell = []
                        for sp in self.samples:
                            row = getattr(sp, attr)[pi, layer]
                            tokens = float(row.mean() if h is None else row[h])
                            cell.append((sp, tokens / sp.prompt_tokens, tokens))
                        yield name, f"{param:g}", layer, label, cell
        for layer in range(self.n_layers):
            cell = [(sp, float(sp.ablation[layer]), None) for sp in self.samples if sp.ablation is not None]
            yield "ablation", "", layer, "all", cell

    def sample_rows(self) -> list[dict[str, Any]]:
        """One row per sample, measure, parameter, layer and head."""
        return [
            {"task": sp.task, "sample_id": sp.sample_id, "measure": m, "param": p, "layer": layer, "head": h,
             "value": v, "tokens": t}
            for m, p, layer, h, cell in self._series()
            for sp, v, t in cell
        ]

    def measure_rows(self) -> list[dict[str, Any]]:
        """Mean, std and 95% interval over samples per measure, parameter, layer and head."""
        rows = []
        for m, p, layer, h, cell in self._series():
            tokens = [t for _, _, t in cell if t is not None]
            rows.append({
                "measure": m, "param": p, "layer": layer, "head": h,
                "unit": "nats/token" if m == "ablation" else "fraction of prompt",
                **summarize([v for _, v, _ in cell]),
                "mean_tokens": sum(tokens) / len(tokens) if tokens else None,
            })
        return rows

    def allocation_rows(self) -> list[dict[str, Any]]:
        """Per policy and layer: kept fraction of the prompt (mean, spread) and mean tokens."""
        labels = list(self.samples[0].allocations) if self.samples else []
        rows = []
        for label in labels:
            for layer in range(self.n_layers):
                ratios = [sp.allocations[label][layer] / sp.prompt_tokens for sp in self.samples]
                tokens = [sp.allocations[label][layer] for sp in self.samples]
                rows.append({"policy": label, "budget": self.settings.budget, "layer": layer, **summarize(ratios),
                             "mean_tokens": sum(tokens) / len(tokens)})
        return rows

    def layer_series(self) -> dict[str, list[float]]:
        """Per-layer means (over samples, head ``all``) of every measure and parameter, by label."""
        out: dict[str, list[float]] = {}
        for m, p, _, h, cell in self._series():
            if h != "all" or not cell:
                continue
            label = f"{m.upper()} {p}" if p else m
            out.setdefault(label, []).append(sum(v for _, v, _ in cell) / len(cell))
        return out

    def correlations(self) -> tuple[list[str], list[list[float | None]]]:
        """Spearman correlation across layers between every pair of layer series."""
        series = self.layer_series()
        labels = list(series)
        return labels, [[spearman(series[a], series[b]) for b in labels] for a in labels]

    def ablation_skipped(self) -> list[str]:
        """Ids of samples whose answer was not found in the context."""
        return [f"{sp.task}:{sp.sample_id}" for sp in self.samples if sp.ablation is None]


# ----------------------------------------------------------------------------------------- output


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in cols})
    return path


def write_outputs(result: ProfileResult, out: Path) -> dict[str, Path]:
    """Write profile.json, measures/samples/allocations/correlations CSVs and the PNG plots into ``out``."""
    from lukv_bench.profile.plots import draw_all

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    measures, allocations = result.measure_rows(), result.allocation_rows()
    labels, matrix = result.correlations()
    files = {
        "measures": _write_csv(out / "measures.csv", measures),
        "samples": _write_csv(out / "samples.csv", result.sample_rows()),
        "allocations": _write_csv(out / "allocations.csv", allocations),
        "correlations": _write_csv(
            out / "correlations.csv",
            [{"measure": a, **{b: matrix[i][j] for j, b in enumerate(labels)}} for i, a in enumerate(labels)],
            ["measure", *labels],
        ),
    }
    doc = {
        "model": result.model,
        "data_source": result.data_source,
        "settings": asdict(result.settings),
        "n_layers": result.n_layers,
        "n_kv_heads": result.n_kv_heads,
        "samples": [sp.describe() for sp in result.samples],
        "skipped": result.skipped,
        "ablation_skipped": result.ablation_skipped(),
        "measures": measures,
        "allocations": allocations,
        "correlations": {"method": "spearman across layers", "measures": labels, "matrix": matrix},
    }
    files["json"] = out / "profile.json"
    files["json"].write_text(json.dumps(doc, indent=2))
    files.update(draw_all(result, out, measures, allocations, labels, matrix))
    return files


# ------------------------------------------------------------------------------------------ driver


def _load_model(spec: str, from_suite: bool, dtype: str, device: str) -> Any:
    from lukv_bench.runtime.models import load_model

    try:
        return load_model(spec, dtype=dtype, device=device)
    except UserError as e:
        where = "the suite's model" if from_suite else "--model"
        raise type(e)(f"{where} {spec!r}: {e}; pass --model embedded, a hub id, a model folder or a .gguf file") from e


def _tasks(suite: Any, data: Path | None, tokenizer: Any, limit: int) -> tuple[list[tuple[Any, list[Any]]], list[str]]:
    """(task, samples) pairs to profile and lines for what was skipped."""
    from lukv_bench.tasks import build_tasks, expand_task
    from lukv_bench.tasks.lm_eval.task_type import LmEvalTaskConfig

    if suite is not None:
        tasks = build_tasks(suite, tokenizer=tokenizer)
    elif data is not None:
        file = Path(data).expanduser()
        if not file.is_file():
            raise UserError(
                f"--data {data}: file not found; give a JSONL file with one "
                '{"id", "context", "question", "answers"} object per line'
            )
        try:
            tasks = expand_task({"name": file.stem, "type": "jsonl", "path": str(file.resolve())})
        except UserError as e:
            raise type(e)(f"--data: {e}") from e
    else:
        tasks = expand_task(dict(DEFAULT_TASK), None, tokenizer)
    out, skipped = [], []
    for task in tasks:
        if isinstance(task, LmEvalTaskConfig):
            skipped.append(f"task {task.name!r}: lm_eval tasks have no context/answer samples to profile; skipped")
            continue
        out.append((task, list(task.samples(limit))))
    if not any(samples for _, samples in out):
        raise UserError("no samples to profile: the suite/data holds no jsonl, longbench or needle samples")
    return out, skipped


def run_profile(
    model: str | None = None,
    suite: Path | None = None,
    data: Path | None = None,
    settings: ProfileSettings | None = None,
    limit: int = DEFAULT_LIMIT,
    threads: int | None = None,
    progress: bool = True,
) -> ProfileResult:
    """Profile up to ``limit`` samples per task of ``suite``, ``data`` (JSONL) or the built-in pass-key set.

    With a suite, its model, window, chat template, GQA reduction, dtype, device and threads are used
    unless overridden (``model``, an explicit ``settings.window``...). LMBA/LMBO always use the
    ``compress: prompt`` window (the last prompt tokens, question included).
    """
    from tqdm.auto import tqdm

    from lukv_bench.config.suite import apply_overrides, load_suite
    from lukv_bench.runtime.engine import Engine, EngineSettings
    from lukv_bench.runtime.models import resolve_device
    from lukv_bench.runtime.prompts import use_chat_template

    if suite is not None and data is not None:
        raise UserError("give either --suite or --data, not both")
    settings = settings or ProfileSettings()
    s = None
    if suite is not None:
        try:
            s = apply_overrides(load_suite(suite), limit=limit, model=model)
        except UserError as e:
            raise type(e)(f"--suite: {e}") from e
        settings.chat_template, settings.gqa_reduce, settings.truncate = s.chat_template, s.gqa_reduce, s.truncate
        if settings.window is None:
            settings.window = s.window
    if settings.window is None:
        settings.window = DEFAULT_WINDOW
    spec = model or (s.model if s is not None else "embedded")
    dtype, device = (s.dtype, s.device) if s is not None else ("float32", "auto")
    threads = threads or (s.threads if s is not None else None)
    if threads:
        torch.set_num_threads(int(threads))
    lm = _load_model(spec, from_suite=model is None and s is not None, dtype=dtype, device=str(resolve_device(device)))
    tasks, skipped = _tasks(s, data, lm.tokenizer, limit)
    engine = Engine(lm.model, lm.tokenizer, EngineSettings(window=settings.window, gqa_reduce=settings.gqa_reduce))
    try:
        chat = use_chat_template(lm.tokenizer, settings.chat_template)
    except ValueError as e:
        raise UserError(f"--suite: {e}; set chat_template: auto or false") from e
    policies = allocation_policies()
    scorer = policies[0].policy.scorer  # SnapKV's pooled window votes rank tokens for LMBO
    result = ProfileResult(
        model=lm.name, settings=settings, samples=[], skipped=skipped, n_kv_heads=engine.n_kv_heads,
        data_source=[t.data_source for t, _ in tasks],
    )
    total = sum(len(samples) for _, samples in tasks)
    with tqdm(total=total, desc="profile", unit="sample", disable=not progress) as bar:
        for task, samples in tasks:
            for sample in samples:
                result.samples.append(profile_sample(engine, task.name, sample, chat, settings, scorer, policies))
                bar.update(1)
    result.n_layers = result.samples[0].lmba.shape[1]
    no_answer = result.ablation_skipped()
    if no_answer:
        result.skipped.append(
            f"ablation: {len(no_answer)} of {total} samples skipped: no answer in their context "
            f"(or a truncated prompt): {', '.join(no_answer)}"
        )
    return result
