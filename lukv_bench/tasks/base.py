"""The task contract: a task yields samples and scores predictions.

Prompts are split in two blocks so the engine can run both protocols: ``compress: prompt``
(context and question prefilled together and compressed; the observation window sees the question)
and ``compress: context`` (only the context block is compressed; the question is fed afterwards).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from lukv_bench.schema import Key

if TYPE_CHECKING:
    from lukv_bench.schema import TaskContext
    from lukv_bench.suite import Suite


@dataclass
class Sample:
    """One evaluation item."""

    id: str
    context: str  #: the long document(s) to be compressed
    question: str  #: the query, asked after the context
    answers: list[str]  #: gold answers (any match counts, metric-dependent)
    instruction: str = ""  #: task instruction placed before the context
    all_classes: list[str] | None = None  #: label set for classification metrics
    meta: dict[str, Any] = field(default_factory=dict)  #: e.g. needle depth/length for heatmaps
    #: tokens to generate for this sample (the task's ``max_new_tokens``, or LongBench's per-subset
    #: length); None: the suite's ``generation.max_new_tokens``
    max_new_tokens: int | None = None

    def blocks(self) -> tuple[str, str]:
        """(context block, question block) of the user message, in that order."""
        head = f"{self.instruction}\n\n" if self.instruction else ""
        return f"{head}{self.context}\n\n", self.question


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


@runtime_checkable
class TaskType(Protocol):
    """A ``type:`` of suite task entry: its config schema, its cross-key checks and how to build it.

    Registered as a class (``register(cls)`` in a plugin's ``register_task_types`` hook; the class's
    ``name`` is the ``type:`` value). Suite validation walks ``keys`` (see :mod:`lukv_bench.schema`)
    with file and line numbers, then calls ``check``; ``build`` gets the checked entry (defaults
    filled, paths absolute) and returns sample-based :class:`Task` objects, or any other object a
    runner knows (an lm-eval configuration).
    """

    name: str
    keys: Mapping[str, Key]  #: the entry's keys besides name, type and limit

    def check(self, task: dict[str, Any], report: Callable[[str, str], None], ctx: TaskContext) -> None:
        """Checks one key cannot express; ``task`` holds only the keys that passed; ``report(key, problem)``."""
        ...

    def build(self, task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> Any:
        """The task (or a list of tasks) this entry stands for."""
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
