"""Cache buffers reused across samples (``Engine(arena=True)``) against fresh buffers (the reference path)."""

from __future__ import annotations

import pytest
import torch
from lukv_bench.kernels.ops import RaggedStore

from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.arena import BufferArena
from lukv_bench.runtime.contract import Budget
from lukv_bench.runtime.engine import Engine, EngineSettings, sweep
from lukv_bench.runtime.memory import PeakMemory
from lukv_bench.testing import tiny_model

#: prompt lengths of successive samples: the arena is built, reused smaller, grown, reused at its size
LENGTHS = (60, 40, 80, 80)


def _outcomes(engine: Engine, compress: str, batch: int | None, policies=("streaming", "snapkv", "h2o")) -> list:
    runs = [(resolve_policy(p), b) for p in policies for b in (0.3, 0.6)]
    out = []
    for n in LENGTHS:
        ctx = torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        out += [o for _, o in sweep(engine, ctx, [5, 6, 7], runs, resolve_policy("full"), compress=compress,
                                    max_new_tokens=6, batch_settings=batch)]
    return out


def _same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert (a.policy.name, a.budget) == (b.policy.name, b.budget)
        assert a.generation.tokens == b.generation.tokens
        assert torch.equal(a.generation.logits, b.generation.logits)
        assert a.compressed.kv_bytes == b.compressed.kv_bytes
        assert a.compressed.kv_bytes_full == b.compressed.kv_bytes_full
        assert [k.indices.tolist() for k in a.compressed.keep] == [k.indices.tolist() for k in b.compressed.keep]
        assert (a.kl_mean, a.greedy_agreement, a.fidelity) == (b.kl_mean, b.greedy_agreement, b.fidelity)


@pytest.mark.parametrize(("compress", "batch"), [("prompt", None), ("context", 2)])
def test_sweeps_with_an_arena_give_the_same_outcomes(tiny, compress: str, batch: int | None) -> None:
    settings = EngineSettings(window=4)
    fresh = _outcomes(Engine(tiny.model, tiny.tokenizer, settings), compress, batch)
    engine = Engine(tiny.model, tiny.tokenizer, settings, arena=True)
    _same(_outcomes(engine, compress, batch), fresh)
    arena = engine.arena
    assert arena is not None and arena.reused > 0 and arena.grown > 0
    assert arena.fresh == 0  # the sweep drops each batch's cache before building the next
    assert arena.nbytes() > 0 and arena.idle_bytes() == arena.nbytes()  # nothing lent once the sweeps are done


def test_layers_held_at_their_window_with_an_arena() -> None:
    """A sliding-window model: the layers held at their window are built in arena buffers too."""
    lm = tiny_model(family="gemma2", sliding_window=24)
    settings = EngineSettings(window=4)
    fresh = _outcomes(Engine(lm.model, lm.tokenizer, settings), "prompt", None, ("snapkv",))
    engine = Engine(lm.model, lm.tokenizer, settings, arena=True)
    _same(_outcomes(engine, "prompt", None, ("snapkv",)), fresh)
    assert engine.arena is not None and engine.arena.reused > 0


def test_a_live_cache_never_shares_its_buffers(tiny) -> None:
    engine = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4), arena=True)
    ids = torch.randint(0, 250, (1, 40), generator=torch.Generator().manual_seed(3))
    pre = engine.prefill(ids)
    cells = [(resolve_policy(p), Budget.resolve(0.5, pre.n)) for p in ("snapkv", "streaming")]
    first, _ = engine.compress(pre, cells, headroom=4)
    before = [(la.store.k.clone(), la.store.v.clone()) for la in first.layers]
    second, _ = engine.compress(pre, cells[::-1], headroom=4)  # the first is still alive: fresh buffers
    assert engine.arena.fresh == len(first.layers)  # counted per layer (its K and V)
    for la, lb, (k, v) in zip(first.layers, second.layers, before):
        assert la.store.k.data_ptr() != lb.store.k.data_ptr()
        assert torch.equal(la.store.k, k) and torch.equal(la.store.v, v)
    del first, la, lb
    third, _ = engine.compress(pre, cells, headroom=4)  # now the first's buffers are free again
    assert engine.arena.reused == len(third.layers)


def test_without_arena_frees_the_buffers_and_builds_fresh_ones(tiny) -> None:
    engine = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4), arena=True)
    _outcomes(engine, "prompt", None, ("snapkv",))
    arena = engine.arena
    assert arena.nbytes() > 0
    with engine.without_arena():
        assert engine.arena is None and arena.nbytes() == 0
        assert engine.peak_memory().idle is None
    assert engine.arena is arena


def test_arena_take_is_zeroed_and_sized() -> None:
    arena = BufferArena()
    k, v = arena.take(0, 10, 4, torch.float32, "cpu")
    k.fill_(3.0)
    v.fill_(float("nan"))
    del k, v
    k, v = arena.take(0, 6, 4, torch.float32, "cpu")  # smaller: a zeroed view of the same buffer
    assert k.shape == (6, 4) and not k.any() and not v.any() and (arena.reused, arena.grown) == (1, 1)
    assert arena.idle_bytes() == arena.nbytes() - 2 * 6 * 4 * 4
    del k, v
    k, _ = arena.take(0, 12, 4, torch.float16, "cpu")  # larger, other dtype: replaced
    assert k.dtype == torch.float16 and arena.grown == 2 and arena.nbytes() == 2 * 12 * 4 * 2
    store = RaggedStore.empty([3, 2], 4, torch.float32, "cpu", headroom=1, alloc=lambda r, d, dt, dev: (
        torch.zeros(r, d, dtype=dt), torch.zeros(r, d, dtype=dt)))
    assert store.k.shape == (7, 4)
    with pytest.raises(ValueError, match="alloc returned"):
        RaggedStore.empty([3], 4, torch.float32, "cpu", alloc=lambda r, d, dt, dev: (
            torch.zeros(r + 1, d, dtype=dt), torch.zeros(r, d, dtype=dt)))


def test_peak_memory_leaves_out_what_the_arena_holds_idle() -> None:
    arena = BufferArena()
    k, v = arena.take(0, 2**20, 32, torch.float32, "cpu")  # 2 x 128 MiB, resident (zero-filled)
    del k, v
    idle = arena.idle_bytes()
    assert idle == 2 * 2**27
    with PeakMemory("cpu") as plain:
        pass
    with PeakMemory("cpu", idle=arena.idle_bytes) as corrected:
        pass
    # the same process state, less the idle buffers (other allocations of the process may move a few MiB)
    assert abs((plain.peak - corrected.peak) - idle) < 32 * 2**20
    k, v = arena.take(0, 2**19, 32, torch.float32, "cpu")  # half of it lent out: only the other half is left out
    with PeakMemory("cpu", idle=arena.idle_bytes) as lent:
        pass
    assert abs((plain.peak - lent.peak) - idle // 2) < 32 * 2**20
