"""TOVA's decode-time eviction on the tiny random GQA model against a plain step-by-step reference (issue 19).

The reference keeps each layer's and storage head's entries as dense tensors in logical order, computes
the attention of every query head itself, and after each token drops the entry with the lowest
(group-reduced) attention of the newest query from every head over its size: the paper's loop, written
out. The engine must decode the same tokens with the same logits and hold the same entries, in both
compression modes, in KV-head and query-head storage, and in its teacher-forced fidelity shadow.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.contract import Budget
from lukv_bench.runtime.engine import Engine, EngineSettings, sweep
from lukv_bench.runtime.fidelity import kl_divergence

NEW_TOKENS = 12


class PlainTOVA:
    """The ``lukv=`` handler of the reference: dense per-head K/V in logical order, attention by hand.

    It ignores the full cache the model passes except for the newest tokens' K/V; ``newest[l][s]``
    is the group-reduced attention of the last query of the latest forward over head ``s``'s entries.
    """

    def __init__(self, pre, keep, n_q_heads: int, reduce: str):
        self.k, self.v, self.pos = [], [], []
        for layer, ks in zip(pre.stats.layers, keep):
            rows = [ks.indices[ks.cu_seqlens[h] : ks.cu_seqlens[h + 1]] for h in range(len(ks.counts))]
            self.k.append([layer.keys[h][r].clone() for h, r in enumerate(rows)])
            self.v.append([layer.values[h][r].clone() for h, r in enumerate(rows)])
            self.pos.append([r.tolist() for r in rows])
        self.n_q_heads, self.reduce, self.seen = n_q_heads, reduce, pre.n
        self.newest: list[list[torch.Tensor]] = [[] for _ in self.k]
        self.dropped: list[int] = []  #: logical positions evicted, in order

    def attention(self, module, query, key, value, scaling, **kwargs):
        layer, (_, hq, q_len, _) = module.layer_idx, query.shape
        heads = len(self.k[layer])
        group, rep = hq // heads, heads // key.shape[1]
        out = torch.empty(1, q_len, hq, query.shape[-1])
        self.newest[layer] = []
        for s in range(heads):
            self.k[layer][s] = torch.cat([self.k[layer][s], key[0, s // rep, -q_len:]])
            self.v[layer][s] = torch.cat([self.v[layer][s], value[0, s // rep, -q_len:]])
            self.pos[layer][s] = self.pos[layer][s] + list(range(self.seen, self.seen + q_len))
            n = self.k[layer][s].shape[0]
            causal = torch.arange(n)[None, :] <= torch.arange(n - q_len, n)[:, None]
            rows = []
            for g in range(group):
                h = s * group + g
                logits = (query[0, h].float() @ self.k[layer][s].float().T) * scaling
                p = logits.masked_fill(~causal, float("-inf")).softmax(-1)
                out[0, :, h] = p @ self.v[layer][s].float()
                rows.append(p[-1])
            att = torch.stack(rows)
            self.newest[layer].append({"mean": att.mean(0), "max": att.amax(0), "sum": att.sum(0)}[self.reduce])
        if layer == len(self.k) - 1:
            self.seen += q_len
        return out

    def evict(self, budgets: list[list[int]]) -> None:
        """Every head over its size drops the entry its newest query attends to least (the first, on ties)."""
        for layer, heads in enumerate(budgets):
            for s, budget in enumerate(heads):
                if self.k[layer][s].shape[0] > budget:
                    j = int(torch.argmin(self.newest[layer][s]))
                    keep = [i for i in range(self.k[layer][s].shape[0]) if i != j]
                    self.dropped.append(self.pos[layer][s][j])
                    self.k[layer][s], self.v[layer][s] = self.k[layer][s][keep], self.v[layer][s][keep]
                    self.pos[layer][s] = [self.pos[layer][s][i] for i in keep]


def _reference(eng: Engine, prompt: list[int], tail: list[int], budget, force: list[int] | None = None):
    """Greedy decoding (or teacher-forcing ``force``) through :class:`PlainTOVA`: tokens, logits, handler."""
    model, settings = eng.model, eng.settings
    pre = eng.prefill(torch.tensor([prompt]), resolve_policy("tova").needs)
    _, (comp,) = eng.compress(pre, [(resolve_policy("tova"), Budget.resolve(budget, pre.n))])
    ref = PlainTOVA(pre, comp.keep, eng.n_q_heads, settings.gqa_reduce)
    dyn = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.tensor([prompt]), cache=dyn, use_cache=True)  # the positions; K/V unused

        def feed(ids: list[int]) -> torch.Tensor:
            return model(input_ids=torch.tensor([ids]), cache=dyn, use_cache=True, lukv=ref).logits[0, -1].float()

        cur = feed(tail) if tail else pre.last_logits
        budgets = [[k.shape[0] for k in layer] for layer in ref.k]  # held at the size after the question
        tokens, logits = [], [cur]
        for step in range(NEW_TOKENS):
            tokens.append(int(cur.argmax()) if force is None else force[step])
            if step == NEW_TOKENS - 1:
                break
            cur = feed([tokens[-1]])
            logits.append(cur)
            ref.evict(budgets)
    return tokens, torch.stack(logits), ref


def _engine(eng: Engine, prompt: list[int], tail: list[int], budget):
    """The engine's own path: compress, feed the question, decode with the tova hook -> tokens, logits, cache."""
    policy = resolve_policy("tova")
    pre = eng.prefill(torch.tensor([prompt]), resolve_policy("tova").needs)
    cache, _ = eng.compress(pre, [(policy, Budget.resolve(budget, pre.n))], headroom=len(tail) + NEW_TOKENS)
    first = eng.feed(cache, tail)[0, -1] if tail else pre.last_logits
    hook = eng.decode_hook(policy, cache, 0)
    (gen,) = eng.generate(cache, first, NEW_TOKENS, decode_hooks=[hook])
    return gen.tokens, gen.logits, cache


def _logical_keys(cache, layer: int, seg: int) -> torch.Tensor:
    lay = cache.layers[layer]
    k, _ = lay.store.segment(seg)
    ring = lay.rings.get(seg)
    return k[ring.logical_rows(k.shape[0])] if ring is not None else k


def _inputs(seed: int) -> tuple[list[int], list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 250, (60,), generator=gen).tolist(), torch.randint(0, 250, (6,), generator=gen).tolist()


@pytest.mark.parametrize(("mode", "storage", "reduce"), [
    ("prompt", "kv", "mean"), ("context", "kv", "mean"), ("prompt", "query", "mean"), ("context", "kv", "max"),
])
def test_engine_evicts_as_the_plain_reference(tiny, mode, storage, reduce):
    eng = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4, storage=storage, gqa_reduce=reduce))
    ctx, question = _inputs(31)
    prompt, tail = (ctx + question, []) if mode == "prompt" else (ctx, question)
    want_tokens, want_logits, ref = _reference(eng, prompt, tail, 0.3)
    tokens, logits, cache = _engine(eng, prompt, tail, 0.3)
    assert tokens == want_tokens
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
    for layer in range(len(ref.k)):
        for s, k in enumerate(ref.k[layer]):
            torch.testing.assert_close(_logical_keys(cache, layer, s), k, rtol=1e-5, atol=1e-5)
    # every head evicted at every step, held at its size; not merely the oldest entries (it is not recency):
    # tokens fed after the compression were evicted too
    assert len(ref.dropped) == len(ref.k) * len(ref.k[0]) * (NEW_TOKENS - 1)
    assert max(ref.dropped) >= len(prompt)
    assert cache.layers[0].stored_tokens(0) == [k.shape[0] for k in ref.k[0]]


def test_budget_covering_the_context_reproduces_fullkv(tiny):
    """At a budget >= the context TOVA keeps everything and never evicts: FullKV's tokens and logits exactly."""
    eng = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4))
    ctx, question = _inputs(32)
    full = resolve_policy("full")
    for mode in ("prompt", "context"):
        outs = {(o.policy.name, str(o.budget_spec)): o for _, o in sweep(
            eng, ctx, question, [(full, 1.0), (resolve_policy("tova"), 1.0),
                                 (resolve_policy("tova"), {"tokens": len(ctx) + len(question)})],
            full, compress=mode, max_new_tokens=NEW_TOKENS, batch_settings=1)}
        ref = outs[("full", "1.0")].generation
        for key, out in outs.items():
            assert out.generation.tokens == ref.tokens, key
            assert torch.equal(out.generation.logits, ref.logits), key


def test_fidelity_shadow_evicts_as_the_reference(tiny):
    """The teacher-forced shadow of a TOVA cell follows FullKV's answer evicting as the reference does."""
    eng = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4))
    ctx, question = _inputs(33)
    full, tova = resolve_policy("full"), resolve_policy("tova")
    outs = {o.policy.name: o for _, o in sweep(eng, ctx, question, [(full, 1.0), (tova, 0.3)], full,
                                               compress="context", max_new_tokens=NEW_TOKENS)}
    answer, got = outs["full"].generation, outs["tova"]
    assert got.fidelity == "teacher-forced+decode-eviction" and len(answer.tokens) == NEW_TOKENS
    _, forced, _ = _reference(eng, ctx, question, 0.3, force=answer.tokens)
    want = float(kl_divergence(answer.logits, forced).mean())
    assert got.kl_mean == pytest.approx(want, rel=1e-4, abs=1e-6)
    tokens, _, _ = _reference(eng, ctx, question, 0.3)
    assert got.generation.tokens == tokens
