"""pytest-benchmark: the engine's promises, each as a ratio of two timings taken in the same run.

* prefill once, compress many: building 20 compressed caches / one captured prefill;
* the ragged cache: one decode step at 20% KV / one dense FullKV step (plain transformers SDPA);
* batched decoding: one decode step for 32 settings / one step for 1 setting (issue target <= 6);
* the batched sweep: a sample's whole sweep (1 prefill, 32 settings, new tokens, fidelity) /
  the same sweep decoded one setting at a time (``batch_settings=1``; target <= 0.25, i.e. 4x);
* the model itself: one decode step / a fixed workload (an fp32 matmul and a memory copy of fixed
  size). Ratios of two engine paths cannot see a slowdown that hits both sides, such as a slower
  forward; this one can, since the fixed workload does not run through the model;
* the buffer arena: the sweeps of 3 samples in a row with the cache buffers reused from sample to
  sample / with fresh buffers for every cache (``Engine(arena=True)`` vs the default);
* batching across samples (a measurement for issue 23, not an engine path): decoding 3 settings of
  each of 4 samples as one batch of 12 / each sample's 3 settings as a batch of their own.

All on the embedded model over real text shipped with Python. Ratios go to ``extra_info["ratio"]``
for the regression gate (``benchmarks/gate.py``). The sweep runs at CI size (1,000 tokens, 16 new
tokens); ``LUKV_BENCH_SWEEP_FULL=1`` runs it at 2,000 tokens and 32 new tokens.
Run: ``tox -e bench`` or ``pytest benchmarks/test_bench_engine.py --benchmark-only``.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import DynamicCache

from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.arena import BufferArena
from lukv_bench.runtime.cache import RaggedCache, RaggedLayer
from lukv_bench.runtime.contract import Budget, repeat_need
from lukv_bench.runtime.engine import Engine, sweep

POLICIES = ["streaming", "h2o", "snapkv", "pyramidkv", "adakv", "layer-uncertainty", "cake", "random"]
BUDGETS = [0.1, 0.2, 0.4, 0.8]
CONTEXT = 2000
FIXED_MATMUL = 1024  #: side of the fixed workload's square fp32 matmul (2.1 GFLOP)
FIXED_COPY_MIB = 512  #: size of the fixed workload's memory copy: weighs DRAM bandwidth as a decode step does
FULL_SWEEP = os.environ.get("LUKV_BENCH_SWEEP_FULL", "") not in ("", "0")


@pytest.fixture(scope="module")
def setup():
    from lukv_bench.data.corpus import reference_text_ids
    from lukv_bench.runtime.models import EmbeddedModelMissing, load_model

    try:
        lm = load_model("embedded")
    except EmbeddedModelMissing as e:
        pytest.skip(str(e))
    engine = Engine(lm.model, lm.tokenizer)
    ids = torch.tensor([reference_text_ids(lm.tokenizer, CONTEXT)])
    policies = [resolve_policy(p) for p in POLICIES]
    pre = engine.prefill(ids, set().union(*(p.needs for p in policies)))
    return engine, ids, policies, pre


def _settings(policies, pre, budgets, count: int):
    grid = [(p, Budget.resolve(b, pre.n)) for b in budgets for p in policies]
    return (grid * (count // len(grid) + 1))[:count]


@pytest.mark.usefixtures("one_thread", "warm_heap")
def test_bench_compress_many(bench_ratio, setup):
    engine, ids, policies, pre = setup
    settings = _settings(policies[2:7], pre, BUDGETS, 20)  # 5 window-scored policies x 4 budgets
    needs = set().union(*(p.needs for p in policies[2:7]))
    # one thread, a warm heap and the min of rounds: the median of 5 pairs on torch's default threads,
    # faulting in fresh buffers every call, spread 0.22-0.54 over the recorded runs (too wide for the gate)
    bench_ratio(lambda: engine.compress(pre, settings), lambda: engine.prefill(ids, needs),
                desc="compress 5 policies x 4 budgets / one captured prefill (2,000 tokens)",
                rounds=5, warmup_rounds=2, stat="min")


def test_bench_ragged_vs_dense_decode(bench_ratio, setup):
    engine, ids, policies, pre = setup
    cache, _ = engine.compress(pre, _settings(policies[5:6], pre, [0.2], 1), headroom=4)
    mark = cache.mark()
    tok = [int(pre.last_logits.argmax())]

    def ragged() -> None:
        engine.feed(cache, tok)
        cache.rollback(mark)

    dense_cache = DynamicCache(config=engine.model.config)
    for i, (k, v) in enumerate(zip(pre.keys, pre.values)):
        dense_cache.update(k, v, i)
    tok_t = torch.tensor([tok])

    def dense() -> None:
        with torch.no_grad():
            engine.model(input_ids=tok_t, past_key_values=dense_cache, use_cache=True)
        dense_cache.crop(-1)

    bench_ratio(ragged, dense, desc="ragged decode step at 20% KV / dense FullKV step (SDPA), 2,000 tokens",
                rounds=10)


def test_bench_batched_decode_step(bench_ratio, setup):
    engine, ids, policies, pre = setup
    many, _ = engine.compress(pre, _settings(policies, pre, [0.2], 32), headroom=4)
    one, _ = engine.compress(pre, _settings(policies[2:3], pre, [0.2], 1), headroom=4)
    marks = many.mark(), one.mark()
    tok = [int(pre.last_logits.argmax())]

    def step(cache, mark) -> None:
        engine.feed(cache, tok)
        cache.rollback(mark)

    bench_ratio(lambda: step(many, marks[0]), lambda: step(one, marks[1]),
                desc="one decode step for 32 settings / for 1 setting (2,000 tokens, 20% KV)", rounds=5)


def test_bench_sweep_batched_vs_serial(bench_ratio, setup):
    engine, ids, policies, _ = setup
    n, new = (CONTEXT, 32) if FULL_SWEEP else (1000, 16)
    context = ids[0, :n].tolist()
    full = resolve_policy("full")
    runs = [(p, b) for b in BUDGETS for p in policies]  # 32 settings (+ FullKV, the reference)

    def run(batch: int | None) -> int:
        return sum(1 for _ in sweep(engine, context, [], runs, full, max_new_tokens=new, batch_settings=batch))

    bench_ratio(lambda: run(None), lambda: run(1), rounds=1, warmup_rounds=0,
                desc=f"whole sweep of a sample, 32 settings batched / one at a time ({n} tokens, {new} new)")


@pytest.mark.usefixtures("one_thread")
def test_bench_decode_step_vs_fixed_work(bench_ratio, setup):
    engine, ids, policies, pre = setup
    cache, _ = engine.compress(pre, _settings(policies[2:3], pre, [0.2], 1), headroom=4)
    mark = cache.mark()
    tok = [int(pre.last_logits.argmax())]
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(FIXED_MATMUL, FIXED_MATMUL, generator=g) for _ in range(2))
    product = torch.empty(FIXED_MATMUL, FIXED_MATMUL)
    src = torch.randn(FIXED_COPY_MIB * 2**18, generator=g)
    dst = torch.zeros_like(src)  # written once here: the copy then times bandwidth, not page faults

    def step() -> None:
        engine.feed(cache, tok)
        cache.rollback(mark)

    def fixed_work() -> None:
        torch.mm(a, b, out=product)
        dst.copy_(src)

    # min of rounds: a neighbour's bursts of memory traffic slow the step (weights read from DRAM) more
    # than the matmul, so pairs taken under load drift; the fastest rounds of each do not
    bench_ratio(step, fixed_work, rounds=20, warmup_rounds=2, stat="min",
                desc=f"one decode step, 1 setting (2,000 tokens, 20% KV) / fixed work ({FIXED_MATMUL}^3 fp32 matmul "
                     f"+ {FIXED_COPY_MIB} MiB copy)")


@pytest.mark.usefixtures("one_thread")
def test_bench_sweep_arena(bench_ratio, setup):
    engine, ids, policies, _ = setup
    n, new = (CONTEXT, 32) if FULL_SWEEP else (1000, 8)
    full = resolve_policy("full")
    runs = [(p, b) for b in BUDGETS for p in policies]  # 32 settings (+ FullKV)
    # 3 samples of other text and lengths (the largest first, as a run's arena meets it sooner or later)
    samples = [ids[0, s * 200 : s * 200 + n - s * 100].tolist() for s in range(3)]
    reused = Engine(engine.model, engine.tokenizer, arena=True)

    def run(eng: Engine) -> None:
        if eng.arena is not None:
            eng.arena = BufferArena()  # a fresh run: its first sample faults the buffers in
        for context in samples:
            for _ in sweep(eng, context, [], runs, full, max_new_tokens=new):
                pass
        if eng.arena is not None:
            eng.arena.release()  # the reference side must not run beside the held buffers

    bench_ratio(lambda: run(reused), lambda: run(engine), rounds=3, warmup_rounds=0,
                desc=f"sweeps of 3 samples ({n}-{n - 200} tokens, 33 settings, {new} new) with the buffer arena "
                     "/ with fresh buffers")


def _merged(caches: list[RaggedCache]) -> RaggedCache:
    """One cache holding every cell of ``caches`` (prompts of one length): their stores side by side."""
    layers = []
    for parts in zip(*(c.layers for c in caches)):
        offsets, rows = [], 0
        for la in parts:
            offsets.append(rows)
            rows += la.store.k.shape[0]
        st = parts[0].store
        store = type(st)(
            k=torch.cat([la.store.k for la in parts]), v=torch.cat([la.store.v for la in parts]),
            starts=torch.cat([la.store.starts + off for la, off in zip(parts, offsets)]),
            lens=torch.cat([la.store.lens for la in parts]), caps=torch.cat([la.store.caps for la in parts]),
        )
        layers.append(RaggedLayer(store, heads=parts[0].heads, repeat=parts[0].repeat))
    first = caches[0]
    return RaggedCache(layers, n_cells=sum(c.n_cells for c in caches), n_q_heads=first.n_q_heads,
                       storage=first.storage, logical_len=first.logical[0],
                       compressed=[row for c in caches for row in c.compressed])


def test_bench_decode_across_samples(bench_ratio, setup):
    """Issue 23's question: do a few settings per sample decode faster batched with other samples' settings?"""
    engine, ids, policies, _ = setup
    m, n, new = 4, CONTEXT // 2, 16
    cells = [(resolve_policy("full"), 1.0), (policies[2], 0.2), (policies[2], 0.5)]  # FullKV + 1 policy x 2 budgets
    caches, firsts = [], []
    for s in range(m):  # m samples of one length (the merged cache needs one position per row)
        pre = engine.prefill(ids[:, s * 300 : s * 300 + n], set().union(*(p.needs for p, _ in cells)))
        cache, _ = engine.compress(pre, [(p, Budget.resolve(b, pre.n)) for p, b in cells], headroom=new + 1)
        caches.append(cache)
        firsts.append(pre.last_logits.expand(len(cells), -1))
    together = _merged(caches)
    marks = [c.mark() for c in caches]
    mark_together = together.mark()
    first_together = torch.cat(firsts)

    def batched() -> None:
        engine.generate(together, first_together, new)
        together.rollback(mark_together)
        together.set_active(range(together.n_cells))

    def alone() -> None:
        for c, mk, f in zip(caches, marks, firsts):
            engine.generate(c, f, new)
            c.rollback(mk)
            c.set_active(range(c.n_cells))

    bench_ratio(batched, alone, rounds=5, warmup_rounds=1,
                desc=f"decode {len(cells)} settings x {m} samples as one batch / each sample's {len(cells)} alone "
                     f"({n} tokens, {new} new)")


@pytest.mark.usefixtures("one_thread")
def test_bench_kvzip_repeat_pass(bench_ratio, setup):
    engine, ids, _, _ = setup
    prompt = ids[:, :1000]
    bench_ratio(lambda: engine.prefill(prompt, {repeat_need(2048)}), lambda: engine.prefill(prompt, ()),
                rounds=3, stat="min",
                desc="prefill plus KVzip's repeat pass / the prefill alone (1,000 tokens, one thread)")
