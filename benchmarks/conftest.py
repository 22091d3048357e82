"""Shared pieces of the pytest-benchmark suite: same-run ratios for the regression gate.

A benchmark takes part in the gate (``benchmarks/gate.py``) by setting
``benchmark.extra_info["ratio"]``: a timing (or memory figure) divided by another one taken in the
same run, lower is better. The :func:`bench_ratio` fixture does this for "fast path vs reference"
pairs: it interleaves the two round by round, so machine load hits both alike. A ratio too noisy
for the gate (which must catch a 2x regression) is made steadier, not given a looser tolerance:
more rounds, ``stat="min"``, and the :func:`one_thread` and :func:`warm_heap` fixtures.

``LUKV_BENCH_GATE_SLOWDOWN=SECONDS`` adds a sleep to every timed call of the measured side: a
synthetic regression that must trip the gate (``tests/unit/test_bench_gate.py`` uses it). Never set it
for real runs.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

SLOWDOWN_ENV = "LUKV_BENCH_GATE_SLOWDOWN"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  #: glibc's mallopt() parameters


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """Record what the ratios depend on: CPU model, core count, torch version (copied into the baseline)."""
    import torch

    machine_info["cpu_model"] = _cpu_model()
    machine_info["cores"] = os.cpu_count()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()


@pytest.fixture(scope="session")
def gate_slowdown() -> float:
    """Seconds of synthetic slowdown per timed call, from ``LUKV_BENCH_GATE_SLOWDOWN`` (default 0)."""
    raw = os.environ.get(SLOWDOWN_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{SLOWDOWN_ENV}={raw!r}: expected a number of seconds") from None
    if value < 0:
        raise pytest.UsageError(f"{SLOWDOWN_ENV}={raw!r}: must be >= 0")
    return value


def _measure_ratio(
    benchmark,
    measured: Callable[[], object],
    reference: Callable[[], object],
    *,
    desc: str,
    rounds: int,
    slowdown: float = 0.0,
    warmup_rounds: int = 1,
    stat: Literal["paired", "min"] = "paired",
) -> float:
    """Time ``measured`` with pytest-benchmark and ``reference`` between its rounds; record their ratio.

    Each round runs ``reference`` (timed here, in pytest-benchmark's untimed ``setup``) and then
    ``measured`` (timed by pytest-benchmark, whose absolute figures go to its storage as usual).
    Sets ``extra_info["ratio"]`` to the median over rounds of measured / the reference run just before
    it (pairing neighbours in time cancels most of a shared machine's load swings: on 2 busy cores
    its run-to-run spread was about half that of median / median), ``extra_info["ratio_desc"]`` to
    ``desc``, and returns the ratio. ``slowdown`` seconds are slept inside every timed ``measured`` call.

    ``stat="min"`` takes the fastest measured round / the fastest reference round instead: for work
    whose rounds are hit by sporadic slow outliers on either side independently (page faults of fresh
    buffers, a neighbour's burst), where a disturbed reference would spoil its pair; each side's
    fastest round is its least disturbed one.
    """
    ref_times: list[float] = []

    def time_reference() -> None:
        t0 = time.perf_counter()
        reference()
        ref_times.append(time.perf_counter() - t0)

    def target() -> None:
        measured()
        if slowdown:
            time.sleep(slowdown)

    benchmark.pedantic(target, setup=time_reference, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    if benchmark.disabled:  # --benchmark-disable: one untimed call, nothing to compare
        return float("nan")
    refs = ref_times[warmup_rounds:]
    times = benchmark.stats.stats.data
    if stat == "min":
        ratio = min(times) / min(refs)
    else:
        ratio = statistics.median(m / r for m, r in zip(times, refs, strict=True))
    benchmark.extra_info["ratio"] = ratio
    benchmark.extra_info["ratio_stat"] = stat
    benchmark.extra_info["torch_threads"] = _torch_threads()
    benchmark.extra_info["ratio_desc"] = desc
    benchmark.extra_info["reference_median_s"] = statistics.median(refs)
    return ratio


def _torch_threads() -> int:
    """torch's intra-op thread count now."""
    import torch

    return torch.get_num_threads()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with torch on one thread (the count before is restored after it).

    On a 2-core shared machine a team of 2 threads stalls whenever a neighbour takes a core: with a
    test suite running beside it, ``test_bench_ragged_decode_batched`` gave 0.07-0.53 in four runs at
    2 threads and 0.70-0.73 in five at 1 thread. A benchmark whose ratio must not swing that way uses it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def warm_heap() -> Iterator[bool]:
    """Keep freed memory in the process (glibc), so that each round reuses the buffers the one before faulted in.

    Work that allocates fresh buffers pays the kernel (in a VM, also the host) for every page it
    touches first, and that price varied from process to process: compressing 20 caches faults in
    185,000 pages per call, and its ratio to a prefill moved 0.12-0.21 between runs on a shared
    2-core VM. With the heap kept (no trimming; blocks up to 32 MiB from the heap, not mmap), the
    warm-up rounds fault the memory in once and the timed rounds fault none (0.078-0.088 in two
    processes). After the test the heap is trimmed and the trim threshold set back to glibc's own
    after large frees. Yields False, changing nothing, where glibc's ``mallopt`` is not available.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield False
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's own ceiling for its dynamic threshold
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # never
    try:
        yield True
    finally:
        mallopt(M_TRIM_THRESHOLD, 64 << 20)  # twice the mmap threshold, as glibc sets it itself
        malloc_trim(0)


@pytest.fixture
def bench_ratio(benchmark, gate_slowdown: float) -> Callable[..., float]:
    """``bench_ratio(measured, reference, desc=..., rounds=...)``: time both and record the gate's ratio.

    See :func:`_measure_ratio`; the synthetic slowdown of ``LUKV_BENCH_GATE_SLOWDOWN`` is applied.
    """

    def run(measured: Callable[[], object], reference: Callable[[], object], **kwargs) -> float:
        return _measure_ratio(benchmark, measured, reference, slowdown=gate_slowdown, **kwargs)

    return run
