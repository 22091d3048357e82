"""Every supported model family runs through the cache runtime exactly (issue 20).

For a tiny random model of each family (``lukv_bench.testing.FAMILIES``): FullKV and every policy at a
budget that keeps the whole prompt reproduce the model's own ``generate()``; a compressed cell's next
steps equal eager attention over the kept tokens only (with the model's own sliding windows); batching
cells changes nothing; sliding-window layers are held at their window outside the budget; half
precision matches the model's own half-precision generation; every built-in policy runs through
``lukv_bench.compress()``; GQA ratios 1 to 8 are exact; unsupported families are refused.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lukv_bench.errors import UserError
from lukv_bench.runtime.contract import Budget
from lukv_bench.runtime.engine import Engine, EngineSettings, held_at_window, sweep
from lukv_bench.runtime.selection import KeepSet
from lukv_bench.testing import save_tiny_model, tiny_model

#: every family of lukv_bench.testing (gemma2 soft-caps its attention logits, at 5 in the tiny model)
FAMILIES = ["llama", "llama3", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "olmo2", "gpt_neox"]
#: families with sliding-window layers (the tiny models' window is 24 tokens, prompts are longer)
SLIDING = {"mistral": "all", "qwen2": "upper half", "phi3": "all", "gemma2": "every other", "gemma3": "every other"}
WINDOW = 24
#: a spread of scorers and allocators, including ragged per-head ones and a decode-time rule
POLICIES = ["snapkv", "streaming", "adakv", "h2o", "pyramidkv", "tova", "criticalkv", "layer-uncertainty"]
NEW_TOKENS = 8


@functools.cache
def _model(family: str, dtype: torch.dtype = torch.float32, window: int = WINDOW):
    return tiny_model(family=family, sliding_window=window, dtype=dtype)


def _ids(seed: int, n: int) -> list[int]:
    return torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _own_attention(model) -> str:
    """The model's own attention implementation: SDPA, or eager where transformers has no SDPA path
    (Gemma 2, whose soft-capping SDPA cannot compute)."""
    return "sdpa" if model._supports_sdpa else "eager"


def _own_generate(model, ids: list[int], new: int) -> tuple[list[int], torch.Tensor]:
    """The model's own greedy tokens and the logits each was chosen from, without lukv."""
    model.set_attn_implementation(_own_attention(model))
    x = torch.tensor([ids])
    eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, None
    try:  # decode all `new` tokens, as the engine does without eos_ids
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, do_sample=False,
                                 pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    finally:
        model.generation_config.eos_token_id = eos
    return out.sequences[0, len(ids):].tolist(), torch.stack(out.logits, 1)[0].float()


def _sweep(eng, ctx, question, runs, batch, mode):
    from lukv_bench.registry import resolve_policy

    full = resolve_policy("full")
    return {(o.policy.name, str(o.budget_spec)): o for _, o in sweep(
        eng, ctx, question, [(full, 1.0)] + runs, full, compress=mode, max_new_tokens=NEW_TOKENS,
        batch_settings=batch)}


@pytest.mark.parametrize("mode", ["prompt", "context"])
@pytest.mark.parametrize("family", FAMILIES)
def test_budget_above_context_equals_own_generate(family, mode):
    """(a, d) FullKV and every policy at a budget >= the context reproduce the model's own generate()."""
    from lukv_bench.registry import resolve_policy

    lm = _model(family)
    ctx, question = _ids(1, 50), _ids(2, 6)
    tokens, logits = _own_generate(lm.model, ctx + question, NEW_TOKENS)
    eng = Engine(lm.model, lm.tokenizer, EngineSettings(window=4))
    runs = [(resolve_policy(name), 1.0) for name in POLICIES]
    outs = _sweep(eng, ctx, question, runs, None, mode)
    assert len(outs) == len(POLICIES) + 1
    for key, out in outs.items():
        assert out.generation.tokens == tokens, key
        assert (out.generation.logits - logits).abs().max().item() <= 1e-4, key


def _reference_steps(model, prompt: list[int], keep: list[KeepSet], next_ids: list[int]) -> torch.Tensor:
    """Logits of ``next_ids`` after ``prompt`` when each layer and storage head (KV or query head) attends
    only to its kept prompt tokens: plain eager attention (with the layer's sliding window and causality)
    over a full cache."""
    n = len(prompt)

    def kept_only(module, q, k, v, attention_mask, scaling=None, dropout=0.0, sliding_window=None, softcap=None,
                  **kw):
        hq, qn, tot = q.shape[1], q.shape[2], k.shape[2]
        g = hq // k.shape[1]
        ks = keep[module.layer_idx]
        heads = len(ks.counts)
        allow = torch.zeros(heads, tot, dtype=torch.bool)
        for h in range(heads):
            allow[h, ks.indices[ks.cu_seqlens[h] : ks.cu_seqlens[h + 1]]] = True
        allow[:, n:] = True
        qpos = torch.arange(tot - qn, tot)[:, None]
        kpos = torch.arange(tot)[None, :]
        visible = kpos <= qpos
        if sliding_window is not None:
            visible &= kpos > qpos - sliding_window
        allow = allow.repeat_interleave(hq // heads, 0)[:, None, :] & visible[None]  # [Hq, Q, tot]
        s = (q.float() @ k.float().repeat_interleave(g, 1).transpose(-1, -2)) * scaling
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        s = s.masked_fill(~allow[None], float("-inf"))
        out = s.softmax(-1) @ v.float().repeat_interleave(g, 1)
        return out.to(q.dtype).transpose(1, 2), None

    AttentionInterface.register("lukv_test_kept", kept_only)
    AttentionMaskInterface.register("lukv_test_kept", sdpa_mask)
    model.set_attn_implementation(_own_attention(model))
    cache = DynamicCache()  # full layers: the reference attention applies the windows itself
    with torch.no_grad():
        model(torch.tensor([prompt]), cache=cache)
        model.set_attn_implementation("lukv_test_kept")
        out = model(torch.tensor([next_ids]), cache=cache).logits[0].float()
    model.set_attn_implementation(_own_attention(model))
    return out


#: families whose every layer slides hold everything at a 24-token window (nothing to compress): their
#: compressed case uses a window that covers prompt and new tokens
_COMPRESSIBLE = [(f, 64 if SLIDING.get(f) == "all" else WINDOW) for f in FAMILIES]


@pytest.mark.parametrize(("policy", "storage"), [("snapkv", "kv"), ("adakv", "kv"), ("pyramidkv", "kv"),
                                                  ("adakv", "query")])
@pytest.mark.parametrize(("family", "window"), _COMPRESSIBLE)
def test_compressed_steps_equal_eager_attention_over_kept_tokens(family, window, policy, storage):
    """(b) Eviction, gather and positions: a compressed cell's next steps equal eager attention over its kept
    tokens at their true positions (several tokens at once, so windows slide within the step); per KV head
    and per query head."""
    from lukv_bench.registry import resolve_policy

    lm = _model(family, window=window)
    prompt, next_ids = _ids(3, 48), _ids(4, 5)
    eng = Engine(lm.model, lm.tokenizer, EngineSettings(window=4, storage=storage))
    pre = eng.prefill(torch.tensor([prompt]))
    cache, (comp,) = eng.compress(pre, [(resolve_policy(policy), Budget.resolve(0.3, pre.n))],
                                  headroom=len(next_ids))
    assert comp.kv_bytes < comp.kv_bytes_full
    ours = eng.feed(cache, next_ids)[0]
    ref = _reference_steps(lm.model, prompt, comp.keep, next_ids)
    assert (ours - ref).abs().max().item() <= 1e-4
    assert cache.get_seq_length() == pre.n + len(next_ids)


@pytest.mark.parametrize("mode", ["prompt", "context"])
@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "gpt_neox"])
def test_batched_sweep_equals_one_setting_at_a_time(family, mode):
    """(c, d) Decoding all cells together gives each the tokens, bytes and fidelity it has alone."""
    from lukv_bench.registry import resolve_policy

    lm = _model(family)
    eng = Engine(lm.model, lm.tokenizer, EngineSettings(window=4))
    ctx, question = _ids(5, 50), _ids(6, 6)
    runs = [(resolve_policy(name), b) for name in POLICIES for b in (0.2, 0.5)]
    alone = _sweep(eng, ctx, question, runs, 1, mode)
    together = _sweep(eng, ctx, question, runs, None, mode)
    assert together.keys() == alone.keys()
    for key, a in alone.items():
        t = together[key]
        assert t.generation.tokens == a.generation.tokens, key
        assert t.compressed.kv_bytes == a.compressed.kv_bytes, key
        assert t.compressed.layer_budgets == a.compressed.layer_budgets, key
        if a.kl_mean is not None:
            assert abs(t.kl_mean - a.kl_mean) <= 1e-5 * max(1.0, a.kl_mean), key


@pytest.mark.parametrize("family", sorted(SLIDING))
def test_sliding_layers_are_held_at_their_window_outside_the_budget(family):
    """A sliding layer whose window cuts holds its newest window - 1 tokens (what the model's own cache holds),
    the budget is the mean over the other layers, and kv_bytes (FullKV's too) count what is held."""
    from lukv_bench.registry import resolve_policy

    lm = _model(family)
    eng = Engine(lm.model, lm.tokenizer, EngineSettings(window=4))
    pre = eng.prefill(torch.tensor([_ids(7, 60)]))
    sliding = [i for i, w in enumerate(pre.windows) if w is not None]
    assert sliding and all(pre.windows[i] == WINDOW for i in sliding)
    assert held_at_window(pre, headroom=10) == tuple(sliding)
    budget = Budget.resolve(0.25, pre.n)
    cache, (full, comp) = eng.compress(pre, [(resolve_policy("full"), Budget.resolve(1.0, pre.n)),
                                             (resolve_policy("snapkv"), budget)], headroom=10)
    row = 2 * eng.n_kv_heads * pre.keys[0].shape[-1] * pre.keys[0].element_size()
    for c in (full, comp):
        assert all(c.layer_budgets[i] == WINDOW - 1 for i in sliding)
        assert c.kv_bytes == sum(c.layer_budgets) * row
        assert c.kv_bytes_full == full.kv_bytes
        for i in sliding:  # the newest tokens, every head
            assert c.keep[i].indices.tolist() == list(range(pre.n - WINDOW + 1, pre.n)) * eng.n_kv_heads
    planned = [b for i, b in enumerate(comp.layer_budgets) if i not in sliding]
    assert planned == [] or sum(planned) / len(planned) == pytest.approx(budget.tokens, abs=1)
    assert all(b == pre.n for i, b in enumerate(full.layer_budgets) if i not in sliding)
    # a window that covers the prompt and every new token leaves the layer ordinary (compressed)
    short = eng.prefill(torch.tensor([_ids(8, 12)]))
    assert held_at_window(short, headroom=WINDOW - 12) == ()
    assert held_at_window(short, headroom=WINDOW - 11) == tuple(sliding)


def test_a_window_cutting_into_a_compressed_layer_fails_loudly():
    """A sliding layer compressed because prompt + headroom fitted in its window cannot attend correctly once
    more tokens than the headroom arrive: an error, never attention over the wrong tokens."""
    from lukv_bench.registry import resolve_policy

    lm = _model("mistral", window=64)
    eng = Engine(lm.model, lm.tokenizer, EngineSettings(window=4))
    pre = eng.prefill(torch.tensor([_ids(11, 48)]))
    cache, (comp,) = eng.compress(pre, [(resolve_policy("snapkv"), Budget.resolve(0.3, pre.n))], headroom=5)
    assert comp.kv_bytes < comp.kv_bytes_full  # compressed: the window was not held
    eng.feed(cache, _ids(12, 16))  # 64 tokens seen: the window still covers them all
    with pytest.raises(RuntimeError, match="sliding window .* cuts into a compressed"):
        eng.feed(cache, _ids(13, 1))


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen3", "gemma2", "gemma3"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_fullkv_equals_own_generate(family, dtype):
    """bf16/fp16 end to end: the cache stores the model dtype, statistics stay fp32, FullKV equals the
    model's own half-precision generate()."""
    from lukv_bench.registry import resolve_policy

    lm = _model(family, dtype)
    ctx, question = _ids(9, 50), _ids(10, 6)
    tokens, logits = _own_generate(lm.model, ctx + question, NEW_TOKENS)
    eng = Engine(lm.model, lm.tokenizer, EngineSettings(window=4))
    pre = eng.prefill(torch.tensor([ctx + question]))
    assert pre.keys[0].dtype == dtype and pre.stats.layers[0].win_sum.dtype == torch.float32
    cache, _ = eng.compress(pre, [(resolve_policy("snapkv"), Budget.resolve(0.3, pre.n))])
    assert cache.layers[0].store.k.dtype == dtype
    outs = _sweep(eng, ctx, question, [(resolve_policy("snapkv"), 1.0)], None, "prompt")
    # a few units in the last place of the largest logit: attention accumulates in fp32 in both paths,
    # but SDPA and the ragged kernel round in different orders
    tol = 3 * torch.finfo(dtype).eps * 2 ** math.floor(math.log2(logits.abs().max().item()))
    top2 = logits.topk(2, dim=-1).values
    for key, out in outs.items():
        ours = out.generation.tokens
        # greedy tokens agree until the reference meets a near tie (within rounding, either token is right)
        same = next((i for i, (a, b) in enumerate(zip(ours, tokens)) if a != b), len(tokens))
        if same < len(tokens):
            assert top2[same, 0] - top2[same, 1] <= 2 * tol, (key, same)
        err = (out.generation.logits[: same + 1] - logits[: same + 1]).abs().max().item()
        assert err <= tol, key


def test_other_layer_kinds_are_refused():
    """A layer type lukv-bench does not reproduce (e.g. chunked attention) is named in the refusal."""
    lm = tiny_model(family="qwen3")
    lm.model.config.layer_types = ["full_attention", "chunked_attention"] * 2
    with pytest.raises(UserError, match="chunked_attention"):
        Engine(lm.model, lm.tokenizer)


def _cli_run(tmp_path: Path, family: str, dtype: str) -> tuple[int, str, list[dict]]:
    """``lukv-bench run`` on a saved tiny ``family`` model in ``dtype``: (exit code, output, records)."""
    from lukv_bench.cli import main

    folder = save_tiny_model(tmp_path / family, family=family, sliding_window=WINDOW)
    res = CliRunner().invoke(main, [
        "run", "--model", str(folder), "--policies", "snapkv", "--budgets", "0.5", "--task", "passkey",
        "--limit", "1", "--device", "cpu", "--dtype", dtype, "--out", str(tmp_path / "out")])
    results = tmp_path / "out" / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    return res.exit_code, res.output + repr(res.exception), records


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3"])
def test_cli_run_in_bfloat16_holds_model_dtype_bytes(tmp_path, family):
    """``--dtype bfloat16`` end to end: records come back, and kv_bytes count 2-byte entries with the sliding
    layers held at their window (FullKV too)."""
    code, output, records = _cli_run(tmp_path, family, "bfloat16")
    assert code == 0, output
    cfg = _model(family).model.config
    row = 2 * cfg.num_key_value_heads * cfg.head_dim * 2  # K and V, bf16
    # mistral has no layer_types: its window applies to every layer
    sliding = [t == "sliding_attention" for t in getattr(cfg, "layer_types", None) or ["sliding_attention"] * 4]
    for rec in records:
        assert rec["layer_budgets"] is not None
        n = rec["context_tokens"]
        held = min(n, WINDOW - 1)
        full = sum(held if s else n for s in sliding) * row
        assert rec["kv_bytes_full"] == full, rec["policy"]
        assert rec["kv_bytes"] == sum(rec["layer_budgets"]) * row, rec["policy"]
        assert all(b == held for b, s in zip(rec["layer_budgets"], sliding) if s), rec["policy"]
    assert {r["policy"] for r in records} >= {"full", "snapkv"}


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"s_aux": torch.zeros(4)}, "attention sinks"),
    ({"position_bias": torch.zeros(1)}, "position bias"),
    ({"is_causal": False}, "bidirectionally"),
])
def test_attention_calls_lukv_cannot_compute_are_refused(kwargs, why):
    """An attention call that asks for sinks, soft-capping, a position bias or bidirectional attention is
    refused with the model type, with or without a capture: never silently computed as plain attention."""
    from lukv_bench.runtime.capture import Capture, lukv_attention

    lm = _model("llama")
    module = lm.model.model.layers[0].self_attn
    q = torch.zeros(1, 4, 3, 16)
    kv = torch.zeros(1, 2, 3, 16)
    for handler in ({"lukv": Capture()}, {}):
        with pytest.raises(UserError, match=f"'llama'.*{why}"):
            lukv_attention(module, q, kv, kv, None, scaling=0.25, **kwargs, **handler)


def test_softcap_reaches_only_handlers_that_compute_it():
    """A soft-capping attention call is refused without a handler (plain SDPA cannot cap) and by a handler
    whose ``attention`` takes no ``softcap``; the capture takes it."""
    from lukv_bench.runtime.capture import Capture, lukv_attention

    class PlainHandler:
        def attention(self, module, query, key, value, scaling):
            raise AssertionError("must not be called with a soft-capping model")

    module = _model("llama").model.model.layers[0].self_attn
    q, kv = torch.randn(1, 4, 3, 16), torch.randn(1, 2, 3, 16)
    for handler in ({}, {"lukv": PlainHandler()}):
        with pytest.raises(UserError, match="'llama'.*soft-caps"):
            lukv_attention(module, q, kv, kv, None, scaling=0.25, softcap=50.0, **handler)
    out, _ = lukv_attention(module, q, kv, kv, None, scaling=0.25, softcap=50.0, lukv=Capture(window=2))
    assert out.shape == (1, 3, 4, 16)


def test_latent_attention_is_refused():
    """Multi-head latent attention (DeepSeek V3's config) is refused before any forward."""
    from transformers import DeepseekV3Config

    from lukv_bench.runtime.models import check_architecture

    model = SimpleNamespace(config=DeepseekV3Config())
    with pytest.raises(UserError, match="'deepseek_v3'.*latent attention"):
        check_architecture(model)


@functools.cache
def _gqa_model(ratio: int):
    """A tiny Llama with 8 query heads and ``8 // ratio`` KV heads (``ratio`` query heads per KV head)."""
    return tiny_model(n_heads=8, n_kv_heads=8 // ratio)


@pytest.mark.parametrize("ratio", [1, 2, 4, 8])
def test_gqa_ratios_fullkv_equals_own_generate_and_compressed_equals_eager(ratio):
    """1, 2, 4 and 8 query heads per KV head (MHA to MQA-like): FullKV reproduces the model's own generate(),
    and a compressed cell (per KV head and per query head) equals eager attention over its kept tokens."""
    from lukv_bench.registry import resolve_policy

    lm = _gqa_model(ratio)
    assert lm.model.config.num_attention_heads // lm.model.config.num_key_value_heads == ratio
    ctx, question = _ids(14, 50), _ids(15, 6)
    tokens, logits = _own_generate(lm.model, ctx + question, NEW_TOKENS)
    eng = Engine(lm.model, lm.tokenizer, EngineSettings(window=4))
    for key, out in _sweep(eng, ctx, question, [(resolve_policy("snapkv"), 1.0)], None, "prompt").items():
        assert out.generation.tokens == tokens, key
        assert (out.generation.logits - logits).abs().max().item() <= 1e-4, key
    prompt, next_ids = _ids(16, 48), _ids(17, 5)
    for policy, storage in (("snapkv", "kv"), ("adakv", "kv"), ("adakv", "query")):
        eng = Engine(lm.model, lm.tokenizer, EngineSettings(window=4, storage=storage))
        pre = eng.prefill(torch.tensor([prompt]))
        cache, (comp,) = eng.compress(pre, [(resolve_policy(policy), Budget.resolve(0.3, pre.n))],
                                      headroom=len(next_ids))
        heads = 8 if storage == "query" else 8 // ratio
        assert all(len(k.counts) == heads for k in comp.keep)
        assert comp.kv_bytes < comp.kv_bytes_full
        ours = eng.feed(cache, next_ids)[0]
        ref = _reference_steps(lm.model, prompt, comp.keep, next_ids)
        assert (ours - ref).abs().max().item() <= 1e-4, (policy, storage)


def _builtin_policies() -> list[str]:
    """Every policy the package itself registers (plugins excluded)."""
    from lukv_bench.registry.listing import list_policies

    return [p["name"] for p in list_policies() if p["distribution"] == "lukv-bench"]


@pytest.mark.parametrize(("family", "window"), _COMPRESSIBLE)
def test_every_builtin_policy_runs_through_compress(family, window):
    """``lukv_bench.compress()`` around the model's own ``generate()`` gives, for every built-in policy, the
    tokens, logits, kept bytes and per-layer budgets of the suite engine's cell; the kvzip scorer's policies
    refuse (the repeat pass needs a tokenizer)."""
    import lukv_bench
    from lukv_bench.registry import resolve_policy

    lm = _model(family, window=window)
    model, prompt = lm.model, _ids(18, 48)
    names = _builtin_policies()
    assert {"full", "snapkv", "streaming", "kvzip", "expected-attention"} <= set(names)
    eng = Engine(model, lm.tokenizer, EngineSettings(window=4))
    repeat = {name for name in names if resolve_policy(name).scorer_name == "kvzip"}
    assert repeat >= {"kvzip", "kvzip-plus"}
    runs = [(resolve_policy(name), 1.0 if name == "full" else 0.4) for name in names if name not in repeat]
    cells = {o.policy.name: o for _, o in sweep(
        eng, prompt, [], runs, resolve_policy("full"), compress="prompt", max_new_tokens=NEW_TOKENS,
        batch_settings=1)}
    model.set_attn_implementation(_own_attention(model))
    ids = torch.tensor([prompt])
    eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, None
    try:
        for policy, spec in runs:
            with lukv_bench.compress(model, policy=policy.name, budget=spec, window=4,
                                     headroom=NEW_TOKENS) as session, torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                     do_sample=False, pad_token_id=0, output_logits=True,
                                     return_dict_in_generate=True)
            cell = cells[policy.name]
            assert session.prefills == 1, policy.name
            assert out.sequences[0, len(prompt):].tolist() == cell.generation.tokens, policy.name
            logits = torch.stack(out.logits, 1)[0].float()
            assert (logits - cell.generation.logits).abs().max().item() <= 1e-4, policy.name
            assert session.last.kv_bytes == cell.compressed.kv_bytes, policy.name
            assert session.last.layer_budgets == cell.compressed.layer_budgets, policy.name
            assert (session.last.kv_bytes < session.last.kv_bytes_full) == (policy.name != "full"), policy.name
        for name in sorted(repeat):
            with pytest.raises(UserError, match="tokenizer"), lukv_bench.compress(model, policy=name, budget=0.4):
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                               pad_token_id=0)
    finally:
        model.generation_config.eos_token_id = eos


def test_gemma2_prefill_capture_soft_caps_like_the_models_eager_attention():
    """Gemma 2's prefill through the capture: logits equal the model's own eager attention (soft-capped,
    with its sliding layers and ``query_pre_attn_scalar`` scaling), and the statistics of its global layers
    equal the column sums, rows and maxima of the eager (capped) attention weights."""
    from lukv_bench.runtime.capture import ATTN_IMPLEMENTATION, Capture, register
    from lukv_bench.runtime.contract import ACCUMULATED, LAST_QUERY, WINDOW_MAX

    lm = _model("gemma2")
    model, cfg = lm.model, lm.model.config
    assert cfg.attn_logit_softcapping is not None
    assert model.model.layers[0].self_attn.scaling == cfg.query_pre_attn_scalar**-0.5 != cfg.head_dim**-0.5
    ids = torch.tensor([_ids(19, 40)])  # longer than the 24-token window of the sliding layers
    n, w = ids.shape[1], 4
    model.set_attn_implementation("eager")  # Gemma 2 has no SDPA path in transformers
    cap = Capture(window=w, needs={ACCUMULATED, LAST_QUERY, WINDOW_MAX})
    attns = [layer.self_attn for layer in model.model.layers]
    try:
        with torch.no_grad():
            eager = model(ids, output_attentions=True, use_cache=False)
            for attn in attns:
                attn.attn_logit_softcapping = None
            plain = model(ids, use_cache=False).logits
            for attn in attns:
                attn.attn_logit_softcapping = cfg.attn_logit_softcapping
            register()
            model.set_attn_implementation(ATTN_IMPLEMENTATION)
            ours = model(ids, lukv=cap, use_cache=False)
    finally:
        for attn in attns:
            attn.attn_logit_softcapping = cfg.attn_logit_softcapping
        model.set_attn_implementation("eager")
    assert (plain - eager.logits).abs().max().item() > 1e-2  # the cap matters for this model
    assert (ours.logits - eager.logits).abs().max().item() <= 1e-4
    for layer, kind in enumerate(cfg.layer_types):
        if kind != "full_attention":
            continue  # statistics score global layers; a sliding layer whose window cuts is held, not scored
        a = eager.attentions[layer][0].float()  # [Hq, n, n], soft-capped, causal
        rec = cap.layers[layer]
        torch.testing.assert_close(rec["win_sum"], a[:, n - w :].sum(1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rec["acc_attn"], a.sum(1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rec["last_attn"], a[:, -1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rec["win_max"], a[:, n - w :].amax(1), atol=1e-5, rtol=1e-4)


def test_gemma2_repeat_pass_soft_caps_like_eager_attention():
    """KVzip's repeat statistic on Gemma 2 (a window wider than prompt and repeat, so no layer cuts): the
    largest capped attention weight each prompt token receives from the repeat queries, as in eager."""
    from lukv_bench.runtime.capture import repeat_inputs
    from lukv_bench.runtime.contract import repeat_need

    lm = _model("gemma2", window=256)
    ids = _ids(20, 24)
    pre = Engine(lm.model, lm.tokenizer, EngineSettings(window=4)).prefill(torch.tensor([ids]), {repeat_need(16)})
    lm.model.set_attn_implementation("eager")
    want = []
    with torch.no_grad():
        for req in repeat_inputs(lm.tokenizer, ids, 16):
            out = lm.model(torch.tensor([ids + req]), output_attentions=True, use_cache=False)
            want.append([a[0, :, len(ids):, : len(ids)].amax(dim=1).float() for a in out.attentions])
    for layer, ref in zip(pre.stats.layers, [torch.stack(x).amax(0) for x in zip(*want)], strict=True):
        assert torch.allclose(layer.repeat_max[16], ref, atol=1e-5), layer.layer
