"""The statistics behind KVzip and Expected Attention on the tiny random models.

KVzip's repeat pass against a plain recomputation (the prompt and the repeat request in one eager forward,
attention weights read off); the pre-RoPE queries against the model's own ``q_proj`` and, for every model
family, against the queries its RoPE receives; the pass's time in every evicting cell's ``compress_s``.
"""

from __future__ import annotations

import sys

import pytest
import torch

from lukv_bench.errors import UserError
from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.capture import REPEAT_FIRST, REPEAT_LATER, repeat_inputs
from lukv_bench.runtime.contract import Budget, repeat_need
from lukv_bench.runtime.engine import Engine, EngineSettings
from lukv_bench.testing import FAMILIES, tiny_model


@pytest.fixture()
def model(tiny):
    """The tiny model; its attention implementation is restored afterwards (the Engine and eager switch it)."""
    before = tiny.model.config._attn_implementation
    yield tiny
    tiny.model.set_attn_implementation(before)


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _eager_repeat_max(lm, ids: list[int], requests: list[list[int]]) -> list[torch.Tensor]:
    """Per layer [Hq, n]: the largest attention weight on each prompt token from any repeat query, each
    request run with the prompt in one plain forward with eager attention."""
    n = len(ids)
    lm.set_attn_implementation("eager")
    per_request = []
    with torch.no_grad():
        for req in requests:
            out = lm(torch.tensor([ids + req]), output_attentions=True)
            per_request.append([attn[0, :, n:, :n].amax(dim=1).float() for attn in out.attentions])
    return [torch.stack(layer).amax(dim=0) for layer in zip(*per_request)]


@pytest.mark.parametrize("chunk", [2048, 12])
def test_repeat_statistic_equals_an_eager_recomputation(model, chunk: int) -> None:
    ids = _prompt(30, seed=4)
    eng = Engine(model.model, model.tokenizer, EngineSettings(window=4))
    pre = eng.prefill(torch.tensor([ids]), {repeat_need(chunk)})
    requests = repeat_inputs(model.tokenizer, ids, chunk)
    assert len(requests) == -(-30 // chunk)
    want = _eager_repeat_max(model.model, ids, requests)
    for layer, ref in zip(pre.stats.layers, want):
        assert torch.allclose(layer.repeat_max[chunk], ref, atol=1e-5), layer.layer
    # the pass leaves the prompt's K/V as they were: a budget covering the prompt is still FullKV
    plain = Engine(model.model, model.tokenizer, EngineSettings(window=4)).prefill(torch.tensor([ids]))
    for k, k0 in zip(pre.keys, plain.keys):
        assert torch.equal(k, k0)


def test_repeat_requests_follow_kvzip() -> None:
    from lukv_bench.testing import byte_tokenizer

    tok = byte_tokenizer()
    ids = list(range(60, 90))
    first, second, third = repeat_inputs(tok, ids, 12)
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    newline = enc("\n")  # the byte tokenizer has no chat template: the request ends with a newline
    assert first == enc(REPEAT_FIRST) + newline + ids[:12]
    assert second == enc(REPEAT_LATER) + ids[4:12] + newline + ids[12:24]  # quoting the previous chunk's last 8
    assert third == enc(REPEAT_LATER) + ids[16:24] + newline + ids[24:]


def test_queries_statistic_is_the_pre_rope_query(model) -> None:
    lm = model.model
    ids = torch.tensor([_prompt(25, seed=6)])
    seen: dict[int, torch.Tensor] = {}
    hooks = [layer.self_attn.q_proj.register_forward_hook(
        lambda mod, args, out, i=i: seen.__setitem__(i, out.detach())) for i, layer in enumerate(lm.model.layers)]
    try:
        eng = Engine(lm, model.tokenizer, EngineSettings(window=4))
        pre = eng.prefill(ids, resolve_policy("expected-attention").needs)
    finally:
        for h in hooks:
            h.remove()
    d = lm.config.head_dim
    for layer in pre.stats.layers:
        want = seen[layer.layer][0].view(25, -1, d).transpose(0, 1).float()  # [Hq, n, D]
        assert torch.allclose(layer.queries, want, atol=1e-5)
    positions = torch.arange(25, 30)
    cos, sin = lm.model.rotary_emb(torch.zeros(1), positions[None])
    got_cos, got_sin = pre.stats.layers[0].rotary(positions)
    assert torch.allclose(got_cos, cos[0]) and torch.allclose(got_sin, sin[0])
    plain = eng.prefill(ids)
    assert all(layer.queries is None and layer.repeat_max is None for layer in plain.stats.layers)


def test_the_repeat_pass_is_charged_to_every_evicting_cell(model) -> None:
    eng = Engine(model.model, model.tokenizer, EngineSettings(window=4))
    kvzip, snapkv = resolve_policy("kvzip"), resolve_policy("snapkv")
    pre = eng.prefill(torch.tensor([_prompt(40, seed=8)]), kvzip.needs | snapkv.needs)
    assert set(pre.stat_s) == {"repeat:2048"} and pre.stat_s["repeat:2048"] > 0
    pre.stat_s["repeat:2048"] = 1000.0  # a marker no planning time comes near
    cells = [(kvzip, Budget.resolve(0.5, pre.n)), (kvzip, Budget.resolve(0.25, pre.n)),
             (kvzip, Budget.resolve(1.0, pre.n)), (snapkv, Budget.resolve(0.5, pre.n))]
    _, comps = eng.compress(pre, cells)
    assert [c.compress_s >= 1000.0 for c in comps] == [True, True, False, False]


# ------------------------------------------------------------------------------- model families


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_queries_statistic_undoes_each_familys_rope(family: str) -> None:
    """Partial rotary (Phi-3, GPT-NeoX), q/k norms (Qwen3, OLMo2, Gemma 3), per-layer RoPE (Gemma 3), RoPE scaling."""
    lm = tiny_model(family=family)
    modeling = sys.modules[type(lm.model).__module__]
    rotate = modeling.apply_rotary_pos_emb
    seen: list[torch.Tensor] = []

    def spy(q, k, cos, sin, *args, **kwargs):
        seen.append(q.detach()[0].float())  # [Hq, n, D] as the model rotates it
        return rotate(q, k, cos, sin, *args, **kwargs)

    modeling.apply_rotary_pos_emb = spy
    try:
        pre = Engine(lm.model, lm.tokenizer, EngineSettings(window=4)).prefill(
            torch.tensor([_prompt(20, seed=9)]), resolve_policy("expected-attention").needs)
    finally:
        modeling.apply_rotary_pos_emb = rotate
    assert len(seen) == len(pre.stats.layers)
    for layer, want in zip(pre.stats.layers, seen):
        assert torch.allclose(layer.queries, want, atol=1e-5), (family, layer.layer)


@pytest.mark.parametrize("family", ["llama3", "qwen3", "olmo2", "gpt_neox"])
def test_repeat_statistic_on_other_families(family: str) -> None:
    lm = tiny_model(family=family)
    ids = _prompt(24, seed=10)
    pre = Engine(lm.model, lm.tokenizer, EngineSettings(window=4)).prefill(torch.tensor([ids]), {repeat_need(16)})
    want = _eager_repeat_max(lm.model, ids, repeat_inputs(lm.tokenizer, ids, 16))
    for layer, ref in zip(pre.stats.layers, want):
        assert torch.allclose(layer.repeat_max[16], ref, atol=1e-5), (family, layer.layer)


def test_the_repeat_pass_refuses_sliding_window_layers() -> None:
    lm = tiny_model(family="mistral")
    eng = Engine(lm.model, lm.tokenizer, EngineSettings(window=4))
    with pytest.raises(UserError, match="sliding window .* the kvzip scorer does not support it"):
        eng.prefill(torch.tensor([_prompt(80, seed=11)]), resolve_policy("kvzip").needs)


def test_the_repeat_pass_without_a_tokenizer_says_why(model) -> None:
    eng = Engine(model.model, None, EngineSettings(window=4))  # as lukv_bench.compress() builds it
    with pytest.raises(UserError, match="tokenizer"):
        eng.prefill(torch.tensor([_prompt(20, seed=12)]), resolve_policy("kvzip").needs)
