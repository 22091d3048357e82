"""One sample's profile: one captured prefill of the prompt, then short forwards over the prompt's tail.

The prefill (context + question, :meth:`Engine.prefill`) gives the window statistics the policies
see, hence LMBA and the policies' allocations; a forward over the tail records the window queries
(LMBO) and the answer's baseline log-likelihood; batched forwards of the question and answer give the
ablation (:mod:`lukv_bench.profile.measures`). Samples whose answer does not occur in the context, or
whose prompt was cut to fit the model's positions (the suite's ``truncate`` rule), are not ablated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from lukv_bench.profile.answers import answer_span, answer_token_ids
from lukv_bench.profile.measures import (
    TailAttention,
    WindowAttention,
    ablation_drops,
    answer_log_likelihood,
    head_mass_budgets,
    output_budgets,
    selection_ranks,
)
from lukv_bench.profile.options import ProfileSettings
from lukv_bench.profile.result import SampleProfile
from lukv_bench.runtime.contract import Budget
from lukv_bench.runtime.prompts import build_prompt, fit_prompt, model_max_positions

if TYPE_CHECKING:
    from lukv_bench.profile.allocations import AllocationPolicy
    from lukv_bench.runtime.engine import Engine


@torch.no_grad()
def profile_sample(engine: Engine, task: str, sample: Any, chat: bool, settings: ProfileSettings,
                   scorer: Any, policies: Sequence[AllocationPolicy]) -> SampleProfile:
    """All measures of one sample: one captured prefill, then short forwards over the prompt's tail.

    One forward from ``min(context end, n - window)`` records the window queries and the baseline
    answer log-likelihood; ``ceil(L / measures.ABLATION_BATCH)`` batched forwards of the question and answer
    give the ablation.

    ``scorer`` gives the SnapKV scores that rank tokens for LMBO; ``policies`` (uniform first) are
    planned at ``settings.budget`` on the same prefill.
    """
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

