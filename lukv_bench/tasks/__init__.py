"""Tasks: build them from suite task entries, keyed by ``type`` (a registered task type).

The built-in task types (this module is the ``builtin-tasks`` plugin):

* ``jsonl`` — :class:`~lukv_bench.tasks.jsonl.JsonlTask` (the user's file);
* ``longbench`` — one :class:`~lukv_bench.tasks.longbench.LongBenchTask` per subset, named
  ``<name>/<subset>``;
* ``lm_eval`` — a :class:`~lukv_bench.tasks.lm_eval.task_type.LmEvalTaskConfig`: one unit per lm-eval task;
* ``needle`` — :class:`lukv_bench.tasks.needle.NeedleTask` (gets the tokenizer);
* ``family`` — :class:`lukv_bench.data.families.FamilyTask`, a generated family whose answers only
  the context holds (gets the tokenizer);
* ``latency`` — a :class:`~lukv_bench.tasks.latency.LatencyTaskConfig`: one unit per context length,
  each run alone (memory and latency of every cell).

Sample-based tasks run as :class:`~lukv_bench.tasks.base.SampleUnits` (one unit per sample); the
others are :class:`~lukv_bench.units.UnitSource` s themselves (:func:`unit_sources`).

Plugins add types through the ``register_task_types`` hook (:class:`~lukv_bench.registry.task_contract.TaskType`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lukv_bench.config.schema import TaskContext, normalize_task
from lukv_bench.errors import UserError
from lukv_bench.registry.catalog import catalog
from lukv_bench.registry.hookspecs import Register, hookimpl
from lukv_bench.registry.task_contract import TaskType
from lukv_bench.sample import Sample
from lukv_bench.tasks.base import BaseTaskType, SampleUnits, Task
from lukv_bench.tasks.control import NoContextTask, without_context
from lukv_bench.tasks.family import FamilyTaskType
from lukv_bench.tasks.jsonl import JsonlTaskType
from lukv_bench.tasks.latency import LatencyTaskType
from lukv_bench.tasks.lm_eval.task_type import LmEvalTaskConfig, LmEvalTaskType
from lukv_bench.tasks.longbench import LongBenchTaskType
from lukv_bench.tasks.needle import NeedleTaskType
from lukv_bench.units import UnitSource

if TYPE_CHECKING:
    from lukv_bench.config.suite import Suite

__all__ = [
    "BaseTaskType",
    "LmEvalTaskConfig",
    "SampleUnits",
    "Sample",
    "Task",
    "TaskLike",
    "TaskType",
    "build_task",
    "build_tasks",
    "expand_task",
    "register_task_types",
    "task_type",
    "unit_sources",
]

#: what a task entry turns into: sample-based tasks, or sources of other units (lm-eval, latency, a plugin's)
TaskLike = Task | UnitSource


@hookimpl
def register_task_types(register: Register) -> None:
    """The built-in task types."""
    for cls in (JsonlTaskType, LongBenchTaskType, LmEvalTaskType, NeedleTaskType, LatencyTaskType, FamilyTaskType):
        register(cls)


def task_type(name: str) -> TaskType:
    """An instance of the registered task type ``name`` (UserError naming the closest one if unknown)."""
    return catalog().task_types.lookup(name).obj()


def expand_task(task: dict[str, Any], suite: Suite | None = None, tokenizer: Any = None) -> list[TaskLike]:
    """Build every task a suite task entry stands for (a LongBench entry gives one per subset).

    The entry is checked against its type's schema first (a no-op for entries of a loaded suite;
    entries built in code get their defaults here). The type's cross-key checks are skipped: building
    reads the data and reports its problems itself.
    """
    if not isinstance(task, dict) or "name" not in task or "type" not in task:
        raise UserError(f"a task needs at least 'name' and 'type' (got {task!r})")
    kind = task_type(task["type"])
    ctx = TaskContext(suite.folder if suite is not None else Path.cwd(), {"seed": suite.seed if suite else 0})
    built = kind.build(normalize_task(task, kind, ctx, deep=False), suite, tokenizer)
    return list(built) if isinstance(built, list) else [built]


def build_task(task: dict[str, Any], suite: Suite | None = None, tokenizer: Any = None) -> TaskLike:
    """Build the single task of a suite task entry (use :func:`expand_task` for multi-subset entries)."""
    built = expand_task(task, suite, tokenizer)
    if len(built) != 1:
        raise UserError(
            f"task {task['name']!r} stands for {len(built)} tasks ({', '.join(t.name for t in built)}); "
            "use expand_task/build_tasks"
        )
    return built[0]


def build_tasks(suite: Suite, tokenizer: Any = None) -> list[TaskLike]:
    """All tasks of a suite, in file order, LongBench subsets expanded."""
    return [t for task in suite.tasks for t in expand_task(task, suite, tokenizer)]



def unit_sources(task: dict[str, Any], suite: Suite | None = None, tokenizer: Any = None) -> list[UnitSource]:
    """What a suite task entry stands for at run time: its tasks as unit sources, sample-based tasks
    wrapped by :class:`SampleUnits`, each followed by its no-context control when the entry sets ``control``."""
    out: list[UnitSource] = []
    for built in expand_task(task, suite, tokenizer):
        if isinstance(built, UnitSource):
            out.append(built)
            continue
        units = SampleUnits(built, task["name"])
        out.append(units)
        if task.get("control"):
            control = NoContextTask(built)
            out.append(SampleUnits(control, task["name"], reference_only=True,
                                   samples=[without_context(s) for s in units.samples.values()]))
    return out
