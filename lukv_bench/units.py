"""Units: the pieces of work every task type yields, and what evaluating one may use.

A suite entry builds one or more :class:`UnitSource` s (a sample-based task is wrapped into one by
:class:`~lukv_bench.tasks.base.SampleUnits`). Each source lists its :class:`Unit` s: a sample, an
lm-eval task, a context length... The one runner (:mod:`lukv_bench.run.runner`) plans them (which
*cells* — (policy, budget) pairs — still lack records), has an executor evaluate them in a session
that holds the model (:class:`UnitContext`), and writes the records they yield. Units are small and
picklable: a remote worker gets the unit, looks up its source in its own session and evaluates it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lukv_bench.records import Record

#: a cell of a run: (policy name, budget as written in the suite)
Cell = tuple[str, Any]


@dataclass
class Unit:
    """One unit of work: what it is, which records it writes, and the cells it still needs.

    ``samples`` are the sample ids of the records it writes (one per cell each); ``reference_only``
    units evaluate FullKV alone (a no-context control); ``alone`` units measure the machine they run
    on, so no other unit may run beside them. ``cells`` is filled by the planner; ``attempt`` counts
    the runs of this unit (an executor whose worker died runs it again with ``attempt + 1``).
    """

    task: str  #: the task name of its records
    entry: str  #: the suite task entry it comes from (whose settings are part of the records' digest)
    id: str  #: unique within its task
    samples: tuple[str, ...]
    reference_only: bool = False
    alone: bool = False
    cells: list[Cell] = field(default_factory=list)
    attempt: int = 1

    def __str__(self) -> str:
        what = "sample" if self.samples == (self.id,) else "unit"
        return f"task {self.task!r}, {what} {self.id!r}"


class UnitContext(Protocol):
    """What evaluating a unit may use: the loaded model's engine, the suite, and its cells and records."""

    engine: Any  #: a :class:`~lukv_bench.runtime.engine.Engine` on the suite's model
    suite: Any  #: the :class:`~lukv_bench.config.suite.Suite`
    chat: bool  #: whether prompts use the model's chat template
    full: Any  #: the FullKV policy (reference for fidelity and for every ratio)

    def cells(self, unit: Unit) -> list[tuple[Any, Any]]:
        """The unit's cells as (resolved policy, budget as written), in the suite's order."""
        ...

    def record(self, unit: Unit, sample_id: Any, policy: Any, budget: Any, **fields: Any) -> Record:
        """A record of ``unit`` with its identity and the run's settings filled; results go in ``fields``."""
        ...


@runtime_checkable
class UnitSource(Protocol):
    """What a task entry stands for at run time: a named list of units, and how to evaluate one."""

    name: str

    def units(self) -> list[Unit]:
        """Every unit, in a fixed order (the planner leaves out cells already recorded)."""
        ...

    def evaluate(self, unit: Unit, ctx: UnitContext) -> Iterator[Record]:
        """The records of ``unit.cells``, yielded as each batch finishes."""
        ...
