"""pytest-benchmark timings of the kernel ops at realistic one-layer sizes.

Not collected by the default ``pytest`` run (testpaths = tests); run explicitly:
``pytest benchmarks/test_bench_kernels.py --benchmark-only``. One layer of a SmolLM2/Llama-like model
(3 KV heads, 9 query heads, head dim 64) at prompt lengths 2k/8k/32k. The ops dispatch as in
production: torch on CPU, Triton on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from lukv_bench.kernels import (
    RaggedStore,
    accumulated_attention,
    append,
    compact,
    ragged_attention,
    truncate,
    window_stats,
)

S, HQ, D, W = 3, 9, 64, 32
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
LENGTHS = [2048, 8192, 32768]


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE).to(DTYPE)


def _store(T: int, keep: float = 0.5, headroom: int = 64) -> RaggedStore:
    counts = [max(1, int(T * keep * f)) for f in (0.5, 1.0, 1.5)][:S]
    st = RaggedStore.empty(counts, D, DTYPE, DEVICE, headroom=headroom)
    st.k.normal_()
    st.v.normal_()
    return st


@pytest.mark.parametrize("T", LENGTHS)
def test_bench_ragged_decode(benchmark, T: int) -> None:
    st = _store(T)
    q = _rand(HQ, 1, D)

    def run() -> None:
        ragged_attention(q, st.k, st.v, st.starts, st.lens, D**-0.5)
        _sync()

    benchmark(run)


@pytest.mark.parametrize("T", LENGTHS)
def test_bench_window_stats(benchmark, T: int) -> None:
    q, k = _rand(HQ, W, D), _rand(S, T, D)

    def run() -> None:
        window_stats(q, k, D**-0.5, prefix_len=T - W)
        _sync()

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("T", LENGTHS[:2])
def test_bench_accumulated_attention(benchmark, T: int) -> None:
    q, k = _rand(HQ, T, D), _rand(S, T, D)

    def run() -> None:
        accumulated_attention(q, k, D**-0.5, block=256)
        _sync()

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("T", LENGTHS)
def test_bench_compact(benchmark, T: int) -> None:
    src_k, src_v = _rand(1, T, S, D)[0].transpose(0, 1), _rand(S, T, D)
    counts = [T // 8, T // 4, T // 2]
    idx = torch.cat([torch.randperm(T, device=DEVICE)[:c] for c in counts])
    cu = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()], device=DEVICE)
    st = RaggedStore.empty(counts, D, DTYPE, DEVICE)

    def run() -> None:
        compact(src_k, src_v, idx, cu, st.starts, st.k, st.v)
        _sync()

    benchmark(run)


@pytest.mark.parametrize("T", LENGTHS)
def test_bench_append_decode(benchmark, T: int) -> None:
    st = _store(T, headroom=64)
    lens = st.lens.clone()
    new_k, new_v = _rand(S, 1, D), _rand(S, 1, D)

    def run() -> None:
        append(st, new_k, new_v)
        truncate(st, lens)  # stay inside the headroom: time the in-place path, not regrowth
        _sync()

    benchmark(run)
