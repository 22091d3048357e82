"""The task contract: a task yields samples and scores predictions.

Prompts are split in two blocks so the engine can run both protocols: ``compress: prompt``
(context and question prefilled together and compressed; the observation window sees the question)
and ``compress: context`` (only the context block is compressed; the question is fed afterwards).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from lukv_bench.registry.task_contract import Key
from lukv_bench.sample import Sample

if TYPE_CHECKING:
    from lukv_bench.config.schema import TaskContext
    from lukv_bench.config.suite import Suite


@runtime_checkable
class Task(Protocol):
    """A named source of samples with a metric. ``data_source`` says exactly which data was used."""

    name: str
    metric: str
    data_source: str
    limit: int | None  #: samples a suite run uses (None: all); the runner passes it to ``samples``

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        """Yield up to ``limit`` samples in a fixed (seeded) order."""
        ...

    def score(self, prediction: str, sample: Sample) -> float:
        """Score one prediction in [0, 1] (or the metric's natural range)."""
        ...


class BaseTaskType:
    """Convenience base for task types: no keys and no cross-key checks unless a subclass declares them."""

    name: ClassVar[str] = ""
    keys: ClassVar[Mapping[str, Key]] = {}

    def check(self, task: dict[str, Any], report: Callable[[str, str], None], ctx: TaskContext) -> None:
        """Nothing beyond the schema."""


def task_limit(task: dict[str, Any], suite: Suite | None) -> int | None:
    """Samples to use: the entry's ``limit``, else the suite's (None: all)."""
    limit = task.get("limit")
    return limit if limit is not None else (suite.limit if suite is not None else None)


#: the ``max_new_tokens`` key of sample-based task types: tokens to generate per sample (None: the
#: suite's ``generation.max_new_tokens``)
MAX_NEW_TOKENS = Key("int", None, minimum=1, nullable=True)
