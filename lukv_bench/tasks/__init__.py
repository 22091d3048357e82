"""Tasks: build them from suite task dicts, keyed by ``type``.

* ``jsonl`` — :class:`~lukv_bench.tasks.jsonl.JsonlTask` (the user's file);
* ``longbench`` — one :class:`~lukv_bench.tasks.longbench.LongBenchTask` per subset, named
  ``<name>/<subset>``;
* ``lm_eval`` — a :class:`~lukv_bench.tasks.lm_eval_tasks.LmEvalTaskConfig` (run by the lm-eval
  adapter, not through the :class:`Task` protocol);
* ``needle`` — :class:`lukv_bench.tasks.needle.NeedleTask` (``from_config``; gets the tokenizer).

Other packages may add types with :func:`register_task_type`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lukv_bench.errors import UserError
from lukv_bench.tasks.base import Sample, Task
from lukv_bench.tasks.lm_eval_tasks import LmEvalTaskConfig

if TYPE_CHECKING:
    from lukv_bench.suite import Suite

__all__ = [
    "LmEvalTaskConfig",
    "Sample",
    "Task",
    "TaskLike",
    "build_task",
    "build_tasks",
    "expand_task",
    "register_task_type",
]

#: what a task dict turns into: a sample-based Task, or an lm-eval configuration
TaskLike = Task | LmEvalTaskConfig
#: builder(task_dict, suite or None) -> one or more tasks; builders that accept a ``tokenizer``
#: keyword get the model's tokenizer (e.g. to measure context lengths in tokens)
TaskBuilder = Callable[..., "list[TaskLike] | TaskLike"]

_BUILDERS: dict[str, TaskBuilder] = {}


def register_task_type(type_name: str, builder: TaskBuilder) -> None:
    """Make ``type: <type_name>`` buildable (the builder may return one task or a list)."""
    _BUILDERS[type_name] = builder


def _limit(task: dict[str, Any], suite: Suite | None) -> int | None:
    limit = task.get("limit")
    return limit if limit is not None else (suite.limit if suite is not None else None)


def _folder(suite: Suite | None) -> Path:
    return suite.folder if suite is not None else Path.cwd()


def _jsonl(task: dict[str, Any], suite: Suite | None) -> TaskLike:
    from lukv_bench.tasks.jsonl import JsonlTask

    if "path" not in task:
        raise UserError(f"jsonl task {task.get('name')!r} needs a 'path'")
    path = Path(str(task["path"])).expanduser()
    if not path.is_absolute():
        path = _folder(suite) / path
    return JsonlTask(
        name=str(task["name"]),
        path=path,
        metric=task.get("metric", "substring"),
        instruction=task.get("instruction", ""),
        shuffle=bool(task.get("shuffle", False)),
        seed=suite.seed if suite is not None else 0,
        limit=_limit(task, suite),
        max_new_tokens=task.get("max_new_tokens"),
    )


def _longbench(task: dict[str, Any], suite: Suite | None) -> list[TaskLike]:
    from lukv_bench.tasks.longbench import DEFAULT_CONTEXT_TOKENS, HUB_REPO, LongBenchTask

    subsets = task.get("subsets")
    if isinstance(subsets, str):
        subsets = [subsets]
    if not subsets:
        raise UserError(f"longbench task {task.get('name')!r} needs 'subsets'")
    seed = task.get("seed")
    if seed is None:
        seed = suite.seed if suite is not None else 0
    return [
        LongBenchTask(
            name=f"{task['name']}/{subset}",
            subset=subset,
            source=task.get("source", "auto"),
            hub_repo=task.get("hub_repo", HUB_REPO),
            seed=seed,
            context_tokens=task.get("context_tokens", DEFAULT_CONTEXT_TOKENS),
            num_samples=task.get("num_samples"),
            shuffle=bool(task.get("shuffle", False)),
            limit=_limit(task, suite),
            max_new_tokens=task.get("max_new_tokens"),
        )
        for subset in subsets
    ]


def _lm_eval(task: dict[str, Any], suite: Suite | None) -> TaskLike:
    return LmEvalTaskConfig.from_dict(task, suite)


def _needle(task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> list[TaskLike] | TaskLike:
    from lukv_bench.tasks.needle import NeedleTask

    built = NeedleTask.from_config(task, tokenizer=tokenizer)
    if getattr(built, "limit", None) is None:
        built.limit = _limit(task, suite)  # type: ignore[attr-defined]
    return built


register_task_type("jsonl", _jsonl)
register_task_type("longbench", _longbench)
register_task_type("lm_eval", _lm_eval)
register_task_type("needle", _needle)


def expand_task(task: dict[str, Any], suite: Suite | None = None, tokenizer: Any = None) -> list[TaskLike]:
    """Build every task a suite task dict stands for (a LongBench dict gives one per subset)."""
    if not isinstance(task, dict) or "name" not in task or "type" not in task:
        raise UserError(f"a task needs at least 'name' and 'type' (got {task!r})")
    builder = _BUILDERS.get(task["type"])
    if builder is None:
        raise UserError(f"unknown task type {task['type']!r}; known: {', '.join(_BUILDERS)}")
    if tokenizer is not None and "tokenizer" in inspect.signature(builder).parameters:
        built = builder(task, suite, tokenizer=tokenizer)
    else:
        built = builder(task, suite)
    return list(built) if isinstance(built, list) else [built]


def build_task(task: dict[str, Any], suite: Suite | None = None, tokenizer: Any = None) -> TaskLike:
    """Build the single task of a suite task dict (use :func:`expand_task` for multi-subset dicts)."""
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
