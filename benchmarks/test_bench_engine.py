"""pytest-benchmark: one captured prefill versus building many compressed caches from it.

The engine's promise is "prefill once, compress many": building the caches of 5 policies x 4
budgets should cost a fraction of the prefill. Both are timed in the same run on the same prompt
(2,000 tokens of real text on the embedded model); ``extra_info`` records the ratio.
Run: ``tox -e bench`` or ``pytest benchmarks/test_bench_engine.py --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

from lukv_bench.engine import Engine
from lukv_bench.policy import Budget
from lukv_bench.registry import resolve_policy

POLICIES = ["snapkv", "pyramidkv", "adakv", "layer-uncertainty", "cake"]
BUDGETS = [0.1, 0.2, 0.4, 0.8]
CONTEXT = 2000


@pytest.fixture(scope="module")
def setup():
    from lukv_bench.models import EmbeddedModelMissing, load_model
    from lukv_bench.profile import reference_text_ids

    try:
        lm = load_model("embedded")
    except EmbeddedModelMissing as e:
        pytest.skip(str(e))
    engine = Engine(lm.model, lm.tokenizer)
    ids = torch.tensor([reference_text_ids(lm.tokenizer, CONTEXT)])
    policies = [resolve_policy(p) for p in POLICIES]
    return engine, ids, policies, {}


def test_bench_prefill(benchmark, setup):
    engine, ids, _, shared = setup
    pre = benchmark.pedantic(lambda: engine.prefill(ids, set()), rounds=3, iterations=1)
    shared["pre"] = pre
    shared["prefill_s"] = benchmark.stats.stats.median


def test_bench_compress_20(benchmark, setup):
    engine, ids, policies, shared = setup
    pre = shared.get("pre") or engine.prefill(ids, set())

    def compress_all() -> int:
        total = 0
        for policy in policies:
            for b in BUDGETS:
                total += engine.compress(pre, policy, Budget.resolve(b, pre.n)).kv_bytes
        return total

    benchmark.pedantic(compress_all, rounds=3, iterations=1)
    if "prefill_s" in shared:
        benchmark.extra_info["ratio_to_prefill"] = benchmark.stats.stats.median / shared["prefill_s"]


def test_bench_decode_token(benchmark, setup):
    engine, ids, policies, shared = setup
    pre = shared.get("pre") or engine.prefill(ids, set())
    comp = engine.compress(pre, policies[3], Budget.resolve(0.2, pre.n))
    mark = comp.cache.mark()

    def step() -> None:
        engine.feed(comp.cache, [int(pre.last_logits.argmax())])
        comp.cache.rollback(mark)

    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)
