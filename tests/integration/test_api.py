"""``lukv_bench.compress``: a policy inside plain ``generate()`` gives the suite engine's tokens."""

from __future__ import annotations

import warnings

import pytest
import torch
from support import TINY

import lukv_bench
from lukv_bench.errors import UserError
from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.engine import Engine, EngineSettings, sweep

PROMPT = ("The blue key is under the mat. The red box holds seven apples and a map of the old town. " * 3).encode()
NEW = 12


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok.encode(PROMPT.decode())])


def _engine_tokens(lm, ids: torch.Tensor, policy, budget, window: int) -> list[int]:
    engine = Engine(lm.model, lm.tokenizer, EngineSettings(window=window))
    runs = [(resolve_policy(policy), budget)]
    outs = list(sweep(engine, ids[0].tolist(), [], runs, resolve_policy("full"), compress="prompt",
                      max_new_tokens=NEW, eos_ids=engine.eos_ids(), batch_settings=1))
    [(_, out)] = [(pre, o) for pre, o in outs if o.policy.name == runs[0][0].name]
    return out.generation.tokens


def _generate(model, ids: torch.Tensor) -> list[int]:
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize(("policy", "budget"), [("snapkv", 0.2), ("streaming", {"tokens": 40}),
                                                ({"name": "mix", "scorer": "h2o", "allocator": "pyramid"}, 0.3)])
def test_generate_under_compress_matches_the_engine(tiny, policy, budget) -> None:
    model, ids = tiny.model, _ids(tiny.tokenizer)
    with lukv_bench.compress(model, policy=policy, budget=budget, window=8) as session:
        tokens = _generate(model, ids)
    assert session.prefills == 1
    assert tokens == _engine_tokens(tiny, ids, policy, budget, window=8)
    kept = session.last
    n = ids.shape[1]
    expected = (budget if isinstance(budget, float) else budget["tokens"] / n)
    assert abs(kept.kv_bytes / kept.kv_bytes_full - expected) < 0.02  # measured from the cache's buffers
    assert kept.kv_bytes_full == 2 * 4 * 2 * n * 16 * 4  # K+V x layers x KV heads x tokens x head dim x fp32


def test_full_budget_is_plain_generate_and_the_model_is_restored(tiny) -> None:
    model, ids = tiny.model, _ids(tiny.tokenizer)
    plain, short = _generate(model, ids), _generate(model, ids[:, :50])
    impl = model.config._attn_implementation
    with lukv_bench.compress(model, policy="snapkv", budget=1.0) as session:
        assert model.config._attn_implementation == "lukv"
        assert _generate(model, ids) == plain
        assert _generate(model, ids[:, :50]) == short  # a second prompt in the same block: compressed afresh
    assert session.prefills == 2 and session.last.kv_bytes == session.last.kv_bytes_full
    assert "forward" not in model.__dict__ and model.config._attn_implementation == impl
    assert _generate(model, ids) == plain


def test_bad_use_is_a_user_error(tiny) -> None:
    model, ids = tiny.model, _ids(tiny.tokenizer)
    impl = model.config._attn_implementation
    with pytest.raises(UserError, match="unknown policy 'snapk'; did you mean 'snapkv'"):
        with lukv_bench.compress(model, policy="snapk"):
            pass
    for budget, why in ((0, r"ratio must be in \(0, 1\]"), (1.5, r"ratio must be in \(0, 1\]"),
                        ({"tokens": 8}, "budget 8 is not above the observation window"), ("0.2", "expected a ratio")):
        with pytest.raises(UserError, match=f"compress\\(\\): budget: {why}"):
            with lukv_bench.compress(model, budget=budget, window=8):
                pass
    with pytest.raises(UserError, match="batch size 1"):
        with lukv_bench.compress(model, budget=0.5):
            model.generate(input_ids=ids.repeat(2, 1), max_new_tokens=2, do_sample=False)
    assert "forward" not in model.__dict__ and model.config._attn_implementation == impl


def test_a_budget_inside_the_window_warns_like_a_suite(tiny) -> None:
    """0.01 of a ~70-token prompt is 1 token, below the window: every policy would keep the same newest tokens."""
    model, ids = tiny.model, _ids(tiny.tokenizer)
    with pytest.warns(UserWarning, match="at or below the observation window \\(8\\)"):
        with lukv_bench.compress(model, policy="snapkv", budget=0.01, window=8):
            _generate(model, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lukv_bench.compress(model, policy="snapkv", budget=0.5, window=8):
            _generate(model, ids)


def test_load_model_is_the_one_line_loader(tiny) -> None:
    """``lukv_bench.load_model`` gives the model and tokenizer a README snippet needs."""
    lm = lukv_bench.load_model(TINY)
    ids = lm.tokenizer(PROMPT.decode(), return_tensors="pt").input_ids
    with lukv_bench.compress(lm.model, policy="snapkv", budget=0.5, window=8) as session:
        lm.model.generate(input_ids=ids, max_new_tokens=2, do_sample=False)
    assert session.prefills == 1 and session.last.kv_bytes < session.last.kv_bytes_full


def test_kv_dtype_halves_the_bytes_under_compress(tiny) -> None:
    model, ids = tiny.model, _ids(tiny.tokenizer)
    with lukv_bench.compress(model, policy="snapkv", budget=0.5, window=8) as full_precision:
        _generate(model, ids)
    with lukv_bench.compress(model, policy="snapkv", budget=0.5, window=8, kv_dtype="bfloat16") as half:
        _generate(model, ids)
    assert half.last.kv_bytes * 2 == full_precision.last.kv_bytes
    with pytest.raises(UserError, match="kv_dtype must be one of"):
        with lukv_bench.compress(model, kv_dtype="int8"):
            pass
