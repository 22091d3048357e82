"""A compressed cache stored in float16/bfloat16: half the bytes, attention against the torch reference."""

from __future__ import annotations

import pytest
import torch
from lukv_bench.kernels.ops import ragged_attention
from lukv_bench.kernels.ragged_attention import ragged_attention_naive

from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.contract import Budget
from lukv_bench.runtime.engine import Engine, EngineSettings, sweep


@pytest.mark.parametrize("kv_dtype", ["float16", "bfloat16"])
def test_half_cache_holds_half_the_bytes_and_attends_like_the_reference(tiny, kv_dtype: str) -> None:
    ids = torch.randint(0, 250, (1, 48), generator=torch.Generator().manual_seed(5))
    budget = Budget.resolve(0.5, 48)
    cells = [(resolve_policy("snapkv"), budget), (resolve_policy("streaming"), budget)]
    full = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4))
    half = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4, kv_dtype=kv_dtype))
    pre = full.prefill(ids)
    cache32, comp32 = full.compress(pre, cells, headroom=4)
    cache16, comp16 = half.compress(pre, cells, headroom=4)
    assert cache16.layers[0].store.k.dtype == getattr(torch, kv_dtype)
    for c32, c16 in zip(comp32, comp16):
        assert c16.kv_bytes * 2 == c32.kv_bytes and c16.kv_bytes_full * 2 == c32.kv_bytes_full
        assert [k.indices.tolist() for k in c16.keep] == [k.indices.tolist() for k in c32.keep]  # fp32 scoring
    # one decode step: the model's attention over the half store equals the reference over its rows
    q = torch.randn(2 * tiny.model.config.num_attention_heads, 1, 16, generator=torch.Generator().manual_seed(6))
    st = cache16.layers[1].store
    half_attention = ragged_attention(q, st.k, st.v, st.starts, st.lens, 0.25)
    got = ragged_attention_naive(q, st.k.float(), st.v.float(), st.starts, st.lens, 0.25)
    assert half_attention.dtype == torch.float32
    torch.testing.assert_close(half_attention, got, rtol=1e-5, atol=1e-6)
    # the logits of the half cache stay close to fp32's (rounding of the stored K/V only)
    l32 = full.feed(cache32, [7])
    l16 = half.feed(cache16, [7])
    torch.testing.assert_close(l16, l32, rtol=0, atol=0.05 if kv_dtype == "float16" else 0.3)


def test_sweep_with_half_cache_runs_every_path(tiny) -> None:
    """Decode-time eviction, the held rows and fidelity all work on a float16 store."""
    eng = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4, kv_dtype="float16"))
    ctx = torch.randint(0, 250, (40,), generator=torch.Generator().manual_seed(9)).tolist()
    runs = [(resolve_policy("streaming"), 0.3), (resolve_policy("snapkv"), 0.3)]
    outs = {o.policy.name: o for _, o in sweep(eng, ctx, [5, 6], runs, resolve_policy("full"), compress="context",
                                                  max_new_tokens=6)}
    assert outs["streaming"].fidelity == "teacher-forced+decode-eviction"
    assert outs["snapkv"].kl_mean is not None and outs["snapkv"].kl_mean >= 0
    assert outs["snapkv"].compressed.kv_bytes < outs["snapkv"].compressed.kv_bytes_full
