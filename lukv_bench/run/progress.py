"""The run's progress bar: samples finished, the task and sample in flight, and an ETA from measured sample costs.

The runner writes records one by one, but they come back a sample at a time (every cell of a sample shares
one prefill; an lm-eval unit returns all its documents per cell). So the bar counts samples: a sample is
done when the records of all its planned cells are back. Each finished sample's cost is the time since the
previous one finished (with several workers that is the run's throughput, which is what an ETA needs), and
:class:`EtaEstimator` prices the samples left per task at that task's mean cost: samples of one task cost
alike, those of another (a longer context, a latency sweep) may not.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from tqdm.auto import tqdm

from lukv_bench.units import Unit

__all__ = ["EtaEstimator", "RunProgress", "describe_plan"]


class EtaEstimator:
    """Seconds left from the measured cost of finished samples, per task."""

    def __init__(self) -> None:
        self._seconds: dict[str, list[float]] = defaultdict(list)

    def add(self, task: str, seconds: float) -> None:
        """One sample of ``task`` finished after ``seconds``."""
        self._seconds[task].append(seconds)

    def eta(self, remaining: Mapping[str, int]) -> float | None:
        """Seconds the ``remaining`` samples (per task) should take: each task's at its own mean cost, a task
        with none finished yet at the mean of every finished sample; None before any sample finished."""
        every = [s for costs in self._seconds.values() for s in costs]
        if not every:
            return None
        overall = statistics.fmean(every)
        return sum(n * (statistics.fmean(self._seconds[t]) if self._seconds.get(t) else overall)
                   for t, n in remaining.items())


class RunProgress:
    """A bar over the samples a run still has to evaluate; the runner reports units started and records back.

    ``clock`` (seconds, monotonic) is there for tests.
    """

    def __init__(self, units: Iterable[Unit], enabled: bool = True, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._waiting: dict[tuple[str, str], int] = {}  # (task, sample) -> records still to come
        self.remaining: dict[str, int] = defaultdict(int)  #: task -> samples still to finish
        for unit in units:
            for sample in unit.samples:
                self._waiting[(unit.task, sample)] = len(unit.cells)
                self.remaining[unit.task] += 1
        self.estimator = EtaEstimator()
        self.total = len(self._waiting)  #: samples to finish
        self.finished = 0  #: samples finished
        self._running: dict[tuple[str, str], Unit] = {}
        self._last = clock()
        self.bar = tqdm(total=self.total, desc="samples", unit="sample", disable=not enabled,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self._show()

    def started(self, unit: Unit) -> None:
        """``unit`` is being evaluated now."""
        self._running[(unit.task, unit.id)] = unit
        self._show()

    def record(self, task: str, sample: str) -> None:
        """A record of (``task``, ``sample``) came back; the sample is done once all its cells' records are."""
        key = (task, str(sample))
        if key not in self._waiting:
            return
        self._waiting[key] -= 1
        if self._waiting[key] > 0:
            return
        del self._waiting[key]
        now = self._clock()
        self.estimator.add(task, now - self._last)
        self._last = now
        self.remaining[task] -= 1
        for k, unit in list(self._running.items()):
            if all((unit.task, s) not in self._waiting for s in unit.samples):
                del self._running[k]
        self.finished += 1
        self.bar.update(1)
        self._show()

    def eta(self) -> float | None:
        """Seconds left by the estimator (None until a sample finished)."""
        return self.estimator.eta({t: n for t, n in self.remaining.items() if n > 0})

    def status(self) -> str:
        """What the bar shows after the elapsed time: the ETA and the task and sample in flight."""
        eta = self.eta()
        parts = [f"ETA {tqdm.format_interval(eta) if eta is not None else '?'}"]
        if self._running:
            unit = list(self._running.values())[-1]
            more = f" (+{len(self._running) - 1} more)" if len(self._running) > 1 else ""
            parts.append(f"now {unit.task}: {unit.id}{more}")
        return ", ".join(parts)

    def _show(self) -> None:
        self.bar.set_postfix_str(self.status())

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


def describe_plan(total: int, done: int, units: list[Unit], results: Path) -> str:
    """The line a run prints before it starts: records already done and to run, or that nothing is left."""
    if not units:
        return f"all {total} records are already in {results}: nothing to run"
    samples = sum(len(u.samples) for u in units)
    tasks = len({u.task for u in units})
    return (f"{done} records already done, {total - done} to run ({_count(samples, 'sample')} of "
            f"{_count(tasks, 'task')})")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
