"""Shared pieces of the pytest-benchmark suite: same-run ratios for the regression gate.

A benchmark takes part in the gate (``benchmarks/gate.py``) by setting
``benchmark.extra_info["ratio"]``: a timing (or memory figure) divided by another one taken in the
same run, lower is better. The :func:`bench_ratio` fixture does this for "fast path vs reference"
pairs: it interleaves the two round by round, so machine load hits both alike.

``LUKV_BENCH_GATE_SLOWDOWN=SECONDS`` adds a sleep to every timed call of the measured side: a
synthetic regression that must trip the gate (``tests/test_bench_gate.py`` uses it). Never set it
for real runs.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SLOWDOWN_ENV = "LUKV_BENCH_GATE_SLOWDOWN"


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
) -> float:
    """Time ``measured`` with pytest-benchmark and ``reference`` between its rounds; record their ratio.

    Each round runs ``reference`` (timed here, in pytest-benchmark's untimed ``setup``) and then
    ``measured`` (timed by pytest-benchmark, whose absolute figures go to its storage as usual).
    Sets ``extra_info["ratio"]`` to the median over rounds of measured / the reference run just before
    it (pairing neighbours in time cancels most of a shared machine's load swings: on 2 busy cores
    its run-to-run spread was about half that of median / median), ``extra_info["ratio_desc"]`` to
    ``desc``, and returns the ratio. ``slowdown`` seconds are slept inside every timed ``measured`` call.
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
    ratio = statistics.median(m / r for m, r in zip(benchmark.stats.stats.data, refs, strict=True))
    benchmark.extra_info["ratio"] = ratio
    benchmark.extra_info["ratio_desc"] = desc
    benchmark.extra_info["reference_median_s"] = statistics.median(refs)
    return ratio


@pytest.fixture
def bench_ratio(benchmark, gate_slowdown: float) -> Callable[..., float]:
    """``bench_ratio(measured, reference, desc=..., rounds=...)``: time both and record the gate's ratio.

    See :func:`_measure_ratio`; the synthetic slowdown of ``LUKV_BENCH_GATE_SLOWDOWN`` is applied.
    """

    def run(measured: Callable[[], object], reference: Callable[[], object], **kwargs) -> float:
        return _measure_ratio(benchmark, measured, reference, slowdown=gate_slowdown, **kwargs)

    return run
