"""The run's progress: samples counted when all their cells are back, the ETA from measured per-sample costs, the
unit in flight, and the line a run starts with. A fake clock stands in for time."""

from __future__ import annotations

from pathlib import Path

import pytest

from lukv_bench.run.progress import EtaEstimator, RunProgress, describe_plan
from lukv_bench.units import Unit


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def unit(task: str, sample: str, cells: int = 3) -> Unit:
    return Unit(task=task, entry=task, id=sample, samples=(sample,), cells=[("p", b) for b in range(cells)])


def test_eta_prices_each_task_at_its_own_mean_cost():
    est = EtaEstimator()
    assert est.eta({"a": 3}) is None  # nothing measured yet
    est.add("a", 2.0)
    est.add("a", 4.0)
    est.add("b", 30.0)
    assert est.eta({"a": 2}) == pytest.approx(6.0)
    assert est.eta({"a": 1, "b": 2}) == pytest.approx(3.0 + 60.0)
    # a task with no finished sample yet costs the mean of every finished one
    assert est.eta({"c": 2}) == pytest.approx(2 * 12.0)
    assert est.eta({}) == 0


def test_a_sample_counts_once_all_its_cells_are_back_and_its_cost_is_measured():
    clock = Clock()
    units = [unit("a", "s1"), unit("a", "s2"), unit("b", "t1", cells=1)]
    progress = RunProgress(units, enabled=False, clock=clock)
    assert progress.total == 3 and progress.eta() is None
    assert progress.status() == "ETA ?"
    progress.started(units[0])
    assert progress.status() == "ETA ?, now a: s1"
    clock.now += 10
    progress.record("a", "s1")
    progress.record("a", "s1")
    assert progress.finished == 0  # two of three cells: not done yet
    progress.record("a", "s1")
    progress.record("a", "unknown")  # a record the plan did not expect is ignored
    assert progress.finished == 1
    assert progress.remaining == {"a": 1, "b": 1}
    assert progress.eta() == pytest.approx(20.0)  # one more "a" at 10 s, "b" at the mean, 10 s
    assert progress.status() == "ETA 00:20"  # the finished unit is no longer shown
    progress.started(units[1])
    clock.now += 4
    for _ in range(3):
        progress.record("a", "s2")
    assert progress.eta() == pytest.approx(7.0)  # "b": the mean of 10 s and 4 s
    progress.started(units[2])
    clock.now += 1
    progress.record("b", "t1")
    assert progress.finished == 3 and progress.eta() == 0
    progress.close()


def test_status_names_the_latest_unit_in_flight_and_how_many_more():
    units = [unit("a", "s1"), unit("a", "s2"), unit("b", "t1")]
    progress = RunProgress(units, enabled=False, clock=Clock())
    for u in units:
        progress.started(u)
    assert progress.status() == "ETA ?, now b: t1 (+2 more)"
    lm_eval = Unit(task="r/niah", entry="r", id="niah", samples=("0", "1"), cells=[("p", 0.1)])
    progress = RunProgress([lm_eval], enabled=False, clock=Clock())
    progress.started(lm_eval)
    progress.record("r/niah", "0")
    assert progress.status().endswith("now r/niah: niah")  # one document left: still in flight
    progress.record("r/niah", "1")
    assert "now" not in progress.status()


def test_the_line_a_run_starts_with():
    units = [unit("a", "s1"), unit("b", "t1")]
    assert describe_plan(30, 12, units, Path("o/results.jsonl")) == (
        "12 records already done, 18 to run (2 samples of 2 tasks)")
    assert describe_plan(12, 12, [], Path("o/results.jsonl")) == (
        "all 12 records are already in o/results.jsonl: nothing to run")
    assert describe_plan(3, 0, units[:1], Path("x")) == "0 records already done, 3 to run (1 sample of 1 task)"
