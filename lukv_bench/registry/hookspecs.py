"""The plugin contract: one registration hook per component kind (pluggy project ``lukv_bench``).

A plugin is any module (or object) exposed through an entry point of group ``lukv_bench`` that
implements some of these hooks with ``@lukv_bench.registry.hookspecs.hookimpl``. Every hook receives a
``register(obj, name=None, aliases=None)`` function: a class registers under its ``name`` ClassVar, a
function needs ``name=``. The built-in components use the same door (entry points ``builtin``,
``builtin-tasks`` and ``builtin-metrics``). The protocols each kind implements are in
:mod:`lukv_bench.runtime.contract` (Scorer, Allocator, DecodeRule, PolicySpec), :mod:`lukv_bench.tasks.base`
(TaskType) and :mod:`lukv_bench.tasks.metrics` (Metric).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("lukv_bench")
hookimpl = HookimplMarker("lukv_bench")

#: the ``register`` callable every hook receives
Register = Callable[..., Any]


@hookspec
def register_scorers(register: Register) -> None:
    """Register scorers: ``register(cls)``, cls a dataclass implementing ``policy.Scorer``."""


@hookspec
def register_allocators(register: Register) -> None:
    """Register allocators: ``register(cls)``, cls a dataclass implementing ``policy.Allocator``."""


@hookspec
def register_decode_rules(register: Register) -> None:
    """Register decode-time eviction rules: ``register(fn, name=...)``, fn implementing ``policy.DecodeRule``."""


@hookspec
def register_policies(register: Register) -> None:
    """Register policies: ``register(PolicySpec(...))`` names a scorer, an allocator and default params."""


@hookspec
def register_task_types(register: Register) -> None:
    """Register suite task types: ``register(cls)``, cls implementing ``tasks.base.TaskType``."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register task metrics: ``register(fn, name=...)``, fn implementing ``metrics.Metric``."""
