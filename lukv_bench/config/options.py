"""Command-line options of a run (``--policies``, ``--budgets``, ``--task``, ...): the suite keys they set.

``lukv-bench run`` takes them with or without a suite file. :class:`Overrides` turns what was typed into
the values a suite file would hold (:meth:`Overrides.data`); :func:`~lukv_bench.config.suite.load_suite`
lays them over the file's keys, :func:`~lukv_bench.config.suite.suite_from_options` over
:func:`default_data`, and both validate the result in one pass, naming the option (``--budgets:
budgets[1]: ...``) instead of a file and line for the keys an option set.

``--task`` takes, comma-separated: a built-in task name (:func:`builtin_tasks`: ``passkey``, the offline
families, the offline LongBench-like subsets), a ``.jsonl`` file of ``{id, context, question, answers}``
rows, or any other name, taken as an lm-eval task (checked against lm-eval's task index).
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lukv_bench.config.schema import Checker, join_path
from lukv_bench.data.families import FAMILIES
from lukv_bench.data.longbench import OFFLINE_SUBSETS

__all__ = ["DEFAULT_BUDGETS", "DEFAULT_POLICIES", "DEFAULT_TASK", "OPTION_OF", "Overrides", "builtin_tasks",
           "check_option_tasks", "default_data"]

#: suite key -> the option of ``lukv-bench run`` that sets it
OPTION_OF = {
    "policies": "--policies",
    "budgets": "--budgets",
    "tasks": "--task",
    "limit": "--limit",
    "model": "--model",
    "device": "--device",
    "dtype": "--dtype",
    "compress": "--compress",
}
DEFAULT_POLICIES = "snapkv,kvzip-plus"  #: the common baseline and the recommended default; FullKV always runs
DEFAULT_BUDGETS = "0.1,0.2"
DEFAULT_TASK = "passkey"
_TOKENS_PREFIX = "tokens:"

#: the pass-key task: a 5-digit key hidden at five depths of 500- and 1000-token prose (10 samples)
PASSKEY = {"type": "needle", "lengths": [500, 1000], "depths": [0.1, 0.3, 0.5, 0.7, 0.9], "max_new_tokens": 16}


def builtin_tasks() -> dict[str, dict[str, Any]]:
    """``--task`` name -> the task entry it stands for (offline, nothing downloaded); sized like the shipped suites."""
    out: dict[str, dict[str, Any]] = {"passkey": PASSKEY}
    out.update({f: {"type": "family", "family": f, "context_tokens": 500} for f in FAMILIES})
    out.update({s: {"type": "longbench", "subsets": [s], "source": "offline", "context_tokens": 900}
                for s in OFFLINE_SUBSETS})
    return out


def _items(text: str) -> list[str]:
    """The comma-separated items of an option, stripped (an empty item stays, for the check to name it)."""
    return [part.strip() for part in text.split(",")]


def _number(text: str, integer: bool) -> Any:
    """``text`` as an int or float when it reads as one, else unchanged (the suite's check names it)."""
    for kind in ((int,) if integer else (int, float)):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def task_entry(name: str) -> dict[str, Any]:
    """The suite task entry ``--task NAME`` stands for: a built-in task, a JSONL file, else an lm-eval task."""
    if name.endswith(".jsonl"):
        path = Path(name).expanduser().resolve()
        return {"name": path.stem, "type": "jsonl", "path": str(path)}
    preset = builtin_tasks().get(name)
    if preset is not None:
        return {"name": name, **preset}
    return {"name": name, "type": "lm_eval", "tasks": [name]}


@functools.cache
def _lm_eval_tasks() -> frozenset[str]:
    """Every task and group name lm-eval knows (indexing its task files takes a few seconds)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def check_option_tasks(c: Checker, tasks: list[dict[str, Any]]) -> None:
    """Record a problem for each ``--task`` name that is neither built in nor an lm-eval task."""
    builtin = builtin_tasks()
    for i, entry in enumerate(tasks):
        if entry["type"] != "lm_eval" or not entry["name"] or entry["name"] in _lm_eval_tasks():
            continue
        name = entry["name"]
        close = difflib.get_close_matches(name, [*builtin, *_lm_eval_tasks()], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        c.fail(join_path("tasks", i), f"unknown task {name!r}: not a built-in task, a .jsonl file or an lm-eval task; "
                                      f"{hint}built-in tasks: {', '.join(builtin)} (lm-eval's: lm-eval ls tasks)")


@dataclass
class Overrides:
    """What was typed for ``lukv-bench run``'s suite options (None: not given); each replaces a suite key."""

    policies: str | None = None  #: comma-separated policy names
    budgets: str | None = None  #: comma-separated ratios, or ``tokens:128,256``
    task: str | None = None  #: comma-separated task names (see the module docstring)
    limit: int | None = None  #: samples per task (every task entry's own limit too)
    model: str | None = None  #: embedded, a hub id, or a folder / .gguf file relative to the working directory
    device: str | None = None
    dtype: str | None = None
    compress: str | None = None  #: prompt (context + question compressed together) or context (question unseen)

    def data(self) -> dict[str, Any]:
        """The suite keys these options set, as a suite file would write them (not yet checked)."""
        out: dict[str, Any] = {}
        if self.policies is not None:
            out["policies"] = _items(self.policies)
        if self.budgets is not None:
            text = self.budgets.strip()
            if text.startswith(_TOKENS_PREFIX):
                out["budgets"] = {"tokens": [_number(t, integer=True) for t in _items(text[len(_TOKENS_PREFIX):])]}
            else:
                out["budgets"] = [_number(b, integer=False) for b in _items(text)]
        if self.task is not None:
            out["tasks"] = [task_entry(name) for name in _items(self.task)]
        if self.limit is not None:
            out["limit"] = self.limit
        if self.model is not None:
            out["model"] = _from_working_dir(self.model)
        if self.device is not None:
            out["device"] = self.device
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.compress is not None:
            out["compress"] = self.compress
        return out


def _from_working_dir(model: str) -> str:
    """A model path as typed, made absolute against the working directory (a suite file's paths are relative to
    the file's folder; an option's to where it was typed); ``embedded`` and hub ids unchanged."""
    if model == "embedded" or not model.strip():
        return model
    path = Path(model).expanduser()
    local = path.is_absolute() or path.exists() or model.startswith((".", "~")) or model.endswith(".gguf")
    return str(path.resolve()) if local else model


def default_data(overrides: Overrides) -> dict[str, Any]:
    """The suite a run without a suite file starts from (the options' keys laid over it): the embedded model,
    ``snapkv`` and ``kvzip-plus`` (the recommended default) at budgets 0.1 and 0.2 on the pass-key task; named
    after its tasks."""
    tasks = Overrides(task=overrides.task or DEFAULT_TASK).data()["tasks"]
    return {
        "name": "-".join(str(t["name"]) for t in tasks) or "run",
        "model": "embedded",
        "policies": _items(DEFAULT_POLICIES),
        "budgets": [float(b) for b in _items(DEFAULT_BUDGETS)],
        "tasks": tasks,
    }
