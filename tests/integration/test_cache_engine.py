"""Cache runtime and engine invariants on the tiny random GQA model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AttentionInterface, DynamicCache

from lukv_bench.runtime.cache import RaggedCache
from lukv_bench.runtime.contract import Allocation, Budget
from lukv_bench.runtime.engine import Engine, EngineSettings, sweep
from lukv_bench.runtime.selection import KeepSet, select_all


class KeepAll:
    """Minimal policy object: keeps every token (what any policy does at budget >= context)."""

    name = "keep-all"

    def plan(self, stats, budget, window):
        alloc = Allocation([stats.n] * stats.n_layers)
        scores = [torch.zeros(stats.n_storage_heads, stats.n) for _ in stats.layers]
        return SimpleNamespace(allocation=alloc, keep=select_all(scores, alloc, 0, window))


def random_keep(n_layers: int, n_heads: int, n: int, gen: torch.Generator) -> list[KeepSet]:
    """Random ragged keep sets: every layer and head keeps a different number of tokens (>= 1)."""
    out = []
    for _ in range(n_layers):
        pieces, counts = [], []
        for _ in range(n_heads):
            c = int(torch.randint(1, n + 1, (1,), generator=gen))
            pieces.append(torch.sort(torch.randperm(n, generator=gen)[:c]).values)
            counts.append(c)
        cu = torch.zeros(n_heads + 1, dtype=torch.long)
        cu[1:] = torch.cumsum(torch.tensor(counts), 0)
        out.append(KeepSet(indices=torch.cat(pieces), cu_seqlens=cu))
    return out


def test_keep_all_matches_fullkv_and_generate(tiny):
    model, tok = tiny.model, tiny.tokenizer
    ids = torch.randint(0, 250, (1, 70), generator=torch.Generator().manual_seed(1))
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref_tokens = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id
        )[0, 70:].tolist()
        full = model(torch.cat([ids, torch.tensor([ref_tokens[:-1]])], 1)).logits[0, 69:].float()
    eng = Engine(model, tok)
    pre = eng.prefill(ids)
    cache, (comp,) = eng.compress(pre, [(KeepAll(), Budget.resolve(1.0, pre.n))])
    (gen,) = eng.generate(cache, pre.last_logits, 12)
    assert gen.tokens == ref_tokens
    assert (gen.logits - full).abs().max().item() <= 1e-5
    assert comp.kv_bytes == comp.kv_bytes_full


def _masked_reference(model, ids, keep: list[KeepSet], n_kv: int, next_ids: list[int]) -> torch.Tensor:
    """Next-token logits with full attention restricted by an explicit per-layer/per-head mask."""
    n = ids.shape[1]
    masks = []
    for ks in keep:
        m = torch.zeros(n_kv, n, dtype=torch.bool)
        for h in range(n_kv):
            m[h, ks.indices[ks.cu_seqlens[h] : ks.cu_seqlens[h + 1]]] = True
        masks.append(m)

    def masked_attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kw):
        # q: [1, Hq, Q, D]; k: [1, Hkv, n+Q, D]. Prompt keys follow the keep mask; new keys are causal.
        hq, qn, tot = q.shape[1], q.shape[2], k.shape[2]
        g = hq // k.shape[1]
        kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        s = (q @ kk.transpose(-1, -2)) * scaling
        allow = torch.zeros(hq, qn, tot, dtype=torch.bool)
        allow[:, :, :n] = masks[module.layer_idx].repeat_interleave(g, 0)[:, None, :]
        allow[:, :, n:] = torch.ones(qn, qn, dtype=torch.bool).tril()
        s = s.masked_fill(~allow[None], float("-inf"))
        return (s.softmax(-1) @ vv).transpose(1, 2), None

    AttentionInterface.register("lukv_test_masked", masked_attention)
    model.set_attn_implementation("sdpa")
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=cache)
        model.set_attn_implementation("lukv_test_masked")
        out = model(torch.tensor([next_ids]), cache=cache).logits[0].float()
    model.set_attn_implementation("sdpa")
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ragged_keep_equals_explicit_mask(tiny, seed):
    model, tok = tiny.model, tiny.tokenizer
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (1, 48), generator=gen)
    next_ids = torch.randint(0, 250, (5,), generator=gen).tolist()
    eng = Engine(model, tok)
    pre = eng.prefill(ids)
    keep = random_keep(len(pre.keys), eng.n_kv_heads, pre.n, gen)
    cache = RaggedCache.build(pre.keys, pre.values, [keep], n_q_heads=eng.n_q_heads)
    ours = eng.feed(cache, next_ids)[0]
    ref = _masked_reference(model, ids, keep, eng.n_kv_heads, next_ids)
    assert (ours - ref).abs().max().item() <= 1e-4
    # positions continue from the logical length, not from what is stored
    assert cache.get_seq_length() == pre.n + len(next_ids)
    kept = sum(sum(ks.counts) for ks in keep)
    assert sum(sum(c) for c in cache.stored_tokens(0)) == kept + len(next_ids) * eng.n_kv_heads * len(keep)


def test_kv_bytes_track_kept_tokens(tiny):
    eng = Engine(tiny.model, tiny.tokenizer)
    pre = eng.prefill(torch.randint(0, 250, (1, 100), generator=torch.Generator().manual_seed(3)))
    keep = random_keep(len(pre.keys), eng.n_kv_heads, pre.n, torch.Generator().manual_seed(4))
    cache = RaggedCache.build(pre.keys, pre.values, [keep], n_q_heads=eng.n_q_heads)
    kept = sum(sum(ks.counts) for ks in keep)
    ratio = cache.kv_bytes() / pre.kv_bytes_full()
    assert abs(ratio - kept / (pre.n * eng.n_kv_heads * len(keep))) <= 0.01 * ratio
    assert cache.kv_bytes(0) == cache.kv_bytes()  # no headroom: the setting's bytes are the buffers'
    # in a batch with headroom, each setting still reports exactly its kept tokens
    other = random_keep(len(pre.keys), eng.n_kv_heads, pre.n, torch.Generator().manual_seed(5))
    both = RaggedCache.build(pre.keys, pre.values, [keep, other], n_q_heads=eng.n_q_heads, headroom=7)
    assert both.kv_bytes(0) == cache.kv_bytes()
    assert both.kv_bytes() > both.kv_bytes(0) + both.kv_bytes(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("storage", ["kv", "query"])
def test_no_nan_at_any_budget(tiny, dtype, storage):
    model = tiny.model.to(dtype)
    try:
        eng = Engine(model, tiny.tokenizer, EngineSettings(window=4, storage=storage))
        ids = torch.randint(0, 250, (1, 24), generator=torch.Generator().manual_seed(5))
        pre = eng.prefill(ids)
        heads = pre.stats.n_storage_heads
        for b in range(1, pre.n + 1):
            scores = [torch.rand(heads, pre.n, generator=torch.Generator().manual_seed(b)) for _ in pre.keys]
            alloc = Allocation([b] * len(pre.keys))
            keep = select_all(scores, alloc, sinks=1, window=4)
            cache = RaggedCache.build(pre.keys, pre.values, [keep], n_q_heads=eng.n_q_heads, storage=storage)
            logits = eng.feed(cache, [7, 8])
            assert torch.isfinite(logits).all(), b
            assert cache.layers[0].store.lens.tolist() == [b + 2] * heads
    finally:
        tiny.model.to(torch.float32)


def test_rollback_restores_cache(tiny):
    eng = Engine(tiny.model, tiny.tokenizer)
    pre = eng.prefill(torch.randint(0, 250, (1, 30), generator=torch.Generator().manual_seed(6)))
    cache, _ = eng.compress(pre, [(KeepAll(), Budget.resolve(1.0, pre.n))])
    mark = cache.mark()
    (a,) = eng.generate(cache, pre.last_logits, 40)  # forces the store to grow
    cache.rollback(mark)
    (b,) = eng.generate(cache, pre.last_logits, 40)
    assert a.tokens == b.tokens
    assert cache.get_seq_length() == pre.n + 39


def test_streaming_evicts_during_decoding(tiny):
    """StreamingLLM's decode rule keeps every layer at its compressed size while generating."""
    from lukv_bench.registry import resolve_policy

    eng = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4))
    pre = eng.prefill(torch.randint(0, 250, (1, 40), generator=torch.Generator().manual_seed(7)))
    policy = resolve_policy("streaming")
    cache, _ = eng.compress(pre, [(policy, Budget.resolve(0.25, pre.n))], headroom=1)
    sizes = cache.stored_tokens(0)
    bytes_before = cache.kv_bytes()
    hook = eng.decode_hook(policy, cache, 0)
    (gen,) = eng.generate(cache, pre.last_logits, 20, decode_hooks=[hook])
    assert len(gen.tokens) == 20
    assert cache.stored_tokens(0) == sizes  # held at budget, sinks + newest
    assert cache.kv_bytes() == bytes_before  # evicted rows are reused: the cache never grew
    assert cache.get_seq_length() == pre.n + 19  # positions keep counting
    layer = cache.layers[0]
    seg_k, _ = layer.store.segment(0)
    assert torch.isfinite(seg_k).all()
    # a policy without a decode rule has no hook
    assert eng.decode_hook(resolve_policy("snapkv"), cache, 0) is None


def test_evict_keeps_selected_rows(tiny):
    eng = Engine(tiny.model, tiny.tokenizer)
    pre = eng.prefill(torch.randint(0, 250, (1, 16), generator=torch.Generator().manual_seed(8)))
    all_ = (KeepAll(), Budget.resolve(1.0, pre.n))
    cache, _ = eng.compress(pre, [all_, all_])
    H = eng.n_kv_heads
    before = [cache.layers[1].store.segment(s)[0].clone() for s in range(2 * H)]
    keep = [torch.tensor([0, 3, 15]), torch.tensor([7])]
    cache.evict(1, 1, keep)  # setting 1 only
    for h, k in enumerate(keep):
        assert torch.equal(cache.layers[1].store.segment(H + h)[0], before[H + h][k])
        assert torch.equal(cache.layers[1].store.segment(h)[0], before[h])  # setting 0 untouched
    assert cache.layers[1].stored_tokens(1) == [3, 1]
    assert cache.layers[1].stored_tokens(0) == [pre.n] * H
    assert cache.get_seq_length() == pre.n


def _sweep_all(eng, ctx, question, runs, full, batch, mode, eos=(), stop=()):
    return {(o.policy.name, str(o.budget_spec)): o for _, o in sweep(
        eng, ctx, question, runs, full, compress=mode, max_new_tokens=10, eos_ids=eos, stop=stop,
        batch_settings=batch)}


@pytest.mark.parametrize("mode", ["prompt", "context"])
def test_batched_sweep_equals_single_setting_decoding(tiny, mode):
    """Decoding all settings together gives each one the tokens, fidelity and memory it has alone."""
    from lukv_bench.registry import resolve_policy

    eng = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4))
    gen = torch.Generator().manual_seed(11)
    ctx = torch.randint(0, 250, (60,), generator=gen).tolist()
    question = torch.randint(0, 250, (6,), generator=gen).tolist()
    full = resolve_policy("full")
    names = ["snapkv", "streaming", "layer-uncertainty", "adakv", "h2o", "pyramidkv",
             "tova", "keydiff", "criticalkv", "defensivekv", "layer-defensivekv", "chunkkv",
             "expected-attention", "kvzip", "kvzip-plus"]
    runs = [(full, 1.0)] + [(resolve_policy(n), b) for n in names for b in (0.2, 0.5)]
    alone = _sweep_all(eng, ctx, question, runs, full, 1, mode)
    # an EOS that the first decoded answers hit early: settings leave the batch at different steps
    eos = [alone[("snapkv", "0.2")].generation.tokens[2]]
    for batch in (None, 4):
        together = _sweep_all(eng, ctx, question, runs, full, batch, mode)
        assert together.keys() == alone.keys()
        for key, a in alone.items():
            t = together[key]
            assert t.generation.tokens == a.generation.tokens, key
            assert t.compressed.kv_bytes == a.compressed.kv_bytes, key
            assert t.compressed.layer_budgets == a.compressed.layer_budgets, key
            if a.kl_mean is None:
                assert t.kl_mean is None
            else:
                assert abs(t.kl_mean - a.kl_mean) <= 1e-5 * max(1.0, a.kl_mean), key
                assert t.greedy_agreement == a.greedy_agreement, key
        assert together[("streaming", "0.2")].fidelity == "teacher-forced+decode-eviction"
    alone_eos = _sweep_all(eng, ctx, question, runs, full, 1, mode, eos=eos)
    together_eos = _sweep_all(eng, ctx, question, runs, full, None, mode, eos=eos)
    lengths = {len(o.generation.tokens) for o in alone_eos.values()}
    assert len(lengths) > 1  # some settings stopped early, others did not
    for key, a in alone_eos.items():
        assert together_eos[key].generation.tokens == a.generation.tokens, key
        assert together_eos[key].generation.stopped == a.generation.stopped, key


def test_streaming_fidelity_is_measured_with_its_decode_eviction(tiny):
    """The shadow row that follows FullKV's answer evicts exactly as a step-by-step replay does."""
    from lukv_bench.registry import resolve_policy
    from lukv_bench.runtime.fidelity import kl_divergence

    eng = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4))
    gen = torch.Generator().manual_seed(21)
    ctx = torch.randint(0, 250, (50,), generator=gen).tolist()
    question = torch.randint(0, 250, (5,), generator=gen).tolist()
    full, stream = resolve_policy("full"), resolve_policy("streaming")
    outs = {o.policy.name: o for _, o in sweep(eng, ctx, question, [(full, 1.0), (stream, 0.3)], full,
                                               compress="context", max_new_tokens=12)}
    ref, got = outs["full"].generation, outs["streaming"]
    assert got.fidelity == "teacher-forced+decode-eviction"
    # replay by hand: compress, feed the question, then FullKV's answer one token at a time, evicting
    pre = eng.prefill(torch.tensor([ctx]))
    cache, _ = eng.compress(pre, [(stream, Budget.resolve(0.3, pre.n))], headroom=20)
    rows = [eng.feed(cache, question)[0, -1]]
    sizes = cache.stored_tokens(0)
    hook = eng.decode_hook(stream, cache, 0)
    for step, tok in enumerate(ref.tokens[:-1], start=1):
        rows.append(eng.feed(cache, [tok])[0, -1])
        hook(cache, 0, step)
    want = float(kl_divergence(ref.logits, torch.stack(rows)).mean())
    assert got.kl_mean == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert len(ref.tokens) > 2 and cache.stored_tokens(0) == sizes  # it evicted: held at its size


@pytest.mark.parametrize("storage", ["kv", "query"])
def test_kv_bytes_are_against_fullkv_in_the_same_storage(tiny, storage):
    """Query-head storage keeps G copies of every kept token: a budget just below the context reports just
    below FullKV *in that storage*, not G times FullKV in KV-head storage; FullKV itself reports 1.0."""
    from lukv_bench.registry import resolve_policy

    eng = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4, storage=storage))
    ids = torch.randint(0, 250, (1, 100), generator=torch.Generator().manual_seed(3))
    pre = eng.prefill(ids)
    _, comps = eng.compress(pre, [(resolve_policy("full"), Budget.resolve(1.0, pre.n)),
                                  (resolve_policy("snapkv"), Budget.resolve(0.99, pre.n))])
    group = eng.n_q_heads // eng.n_kv_heads if storage == "query" else 1
    assert group == (2 if storage == "query" else 1)
    assert comps[0].kv_bytes == comps[0].kv_bytes_full == pre.kv_bytes_full() * group
    assert comps[1].kv_bytes / comps[1].kv_bytes_full == pytest.approx(0.99, abs=0.011)
