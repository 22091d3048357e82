"""No-context controls: the same questions without their context, answered by FullKV only.

A task whose entry sets ``control: true`` gets a companion task ``<task>:no-context``. Its samples are
the task's samples with an empty context (instruction and question unchanged) and it is scored by the
task's own metric. The runner evaluates it with FullKV alone; the report puts its score next to
FullKV's and flags a task whose FullKV is not clearly above it: the model may then answer from memory
or from the question, and the task says little about what compression removes from the context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from lukv_bench.registry.task_contract import Key
from lukv_bench.sample import Sample
from lukv_bench.tasks.base import Task

SUFFIX = ":no-context"  #: appended to the task name of a control


def control_key(default: bool) -> Key:
    """The ``control`` key of a sample-based task type, with the type's default."""
    return Key("bool", default)


def control_name(task: str) -> str:
    """The name of ``task``'s no-context control."""
    return task + SUFFIX


def is_control(task: str) -> bool:
    """True for the name of a no-context control task."""
    return task.endswith(SUFFIX)


def base_task(task: str) -> str:
    """The task a control belongs to (the name itself when it is not a control)."""
    return task[: -len(SUFFIX)] if is_control(task) else task


def without_context(sample: Sample) -> Sample:
    """``sample`` with an empty context; ``meta.control`` says so."""
    return dataclasses.replace(sample, context="", meta={**sample.meta, "control": "no-context"})


class NoContextTask:
    """The no-context control of a sample-based task: same samples and metric, empty context."""

    def __init__(self, task: Task) -> None:
        """Wrap ``task``; the control's name is ``<task name>:no-context``."""
        self.task = task
        self.name = control_name(task.name)
        self.metric = task.metric
        self.data_source = f"{task.data_source} (no-context control: the questions without their context)"
        self.limit = task.limit

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        """The task's samples, each without its context."""
        for sample in self.task.samples(limit):
            yield without_context(sample)

    def score(self, prediction: str, sample: Sample) -> float:
        """The task's own score."""
        return self.task.score(prediction, sample)
