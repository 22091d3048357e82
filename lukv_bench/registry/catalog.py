"""Every registered component, collected once per process from the plugins' registration hooks.

:func:`catalog` loads the entry points (:mod:`lukv_bench.registry.plugins`) and calls each ``register_*`` hook
with a ``register`` function bound to that kind's :class:`~lukv_bench.registry.components.Registry`. The
built-in plugins go first, so a third-party component cannot take a built-in name; a plugin whose
hook raises, or whose component breaks its protocol or takes a used name, is recorded as broken and
the others still load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lukv_bench.errors import UserError
from lukv_bench.registry import plugins
from lukv_bench.registry.components import Origin, Registry, missing_members
from lukv_bench.registry.policy import Policy
from lukv_bench.registry.resolve import build_policy, resolve_in
from lukv_bench.registry.task_contract import TaskType, check_keys
from lukv_bench.runtime.contract import DECODE_NEEDS, Allocator, PolicySpec, Scorer, decode_needs


@dataclass
class Catalog:
    """One :class:`Registry` per component kind."""

    scorers: Registry = field(default_factory=lambda: Registry("scorer"))
    allocators: Registry = field(default_factory=lambda: Registry("allocator"))
    decode_rules: Registry = field(default_factory=lambda: Registry("decode rule"))
    metrics: Registry = field(default_factory=lambda: Registry("metric"))
    task_types: Registry = field(default_factory=lambda: Registry("task type"))
    policies: Registry = field(default_factory=lambda: Registry("policy", "policies"))

    def kinds(self) -> dict[str, Registry]:
        """Hook suffix (``register_<kind>``) -> registry, in collection order."""
        return {
            "scorers": self.scorers,
            "allocators": self.allocators,
            "decode_rules": self.decode_rules,
            "metrics": self.metrics,
            "task_types": self.task_types,
            "policies": self.policies,
        }


_cache: Catalog | None = None


def _check_class(protocol: type, dataclass_needed: bool) -> Callable[[Any], str | None]:
    def check(obj: Any) -> str | None:
        if not isinstance(obj, type):
            return f"expected a class, got {type(obj).__name__}"
        if dataclass_needed and not dataclasses.is_dataclass(obj):
            return "must be a dataclass (its fields are its parameters)"
        missing = missing_members(obj, protocol)
        return f"lacks {', '.join(missing)} (see {protocol.__module__}.{protocol.__name__})" if missing else None

    return check


def _check_callable(obj: Any) -> str | None:
    return None if callable(obj) else f"expected a function, got {type(obj).__name__}"


def _check_decode_rule(obj: Any) -> str | None:
    if not callable(obj):
        return f"expected a function, got {type(obj).__name__}"
    unknown = sorted(decode_needs(obj) - DECODE_NEEDS)
    return f"needs {unknown}, which no decode step provides (known: {sorted(DECODE_NEEDS)})" if unknown else None


def _check_task_type(obj: Any) -> str | None:
    problem = _check_class(TaskType, dataclass_needed=False)(obj)
    return problem or check_keys(obj.keys)


def _check_policy(cat: Catalog) -> Callable[[Any], str | None]:
    def check(spec: Any) -> str | None:
        if not isinstance(spec, PolicySpec):
            return f"expected a PolicySpec, got {type(spec).__name__}"
        try:
            build_policy(spec, {}, spec.name, cat)
        except UserError as e:
            return str(e)
        return None

    return check


def _collect(hook: Any, registry: Registry, check: Callable[[Any], str | None], hook_name: str) -> None:
    impls = sorted(hook.get_hookimpls(), key=lambda impl: not plugins.is_builtin(impl.plugin_name))
    for impl in impls:
        plugin = impl.plugin_name
        origin: Origin = plugins.origin(plugin)

        def register(obj: Any, name: str | None = None, aliases: Any = None, description: str | None = None,
                     origin: Origin = origin, plugin: str = plugin) -> None:
            if isinstance(obj, str):  # the old register("name", cls) form
                plugins.record_broken(plugin, f"{registry.kind} {obj!r}: call register(obj) (a class's `name` "
                                      f"ClassVar is its name) or register(obj, name=...), not register(name, obj)")
                return
            label = name or getattr(obj, "name", None) or getattr(obj, "__name__", repr(obj))
            problem = check(obj)
            if problem is not None:
                plugins.record_broken(plugin, f"{registry.kind} {label!r}: {problem}")
                return
            entry = registry.register(obj, origin, name=name, aliases=aliases, description=description)
            if entry is None:
                plugins.record_broken(plugin, registry.conflicts[-1].message())

        try:
            impl.function(register=register)
        except Exception as e:
            plugins.record_broken(plugin, f"{hook_name}: {type(e).__name__}: {e}")


def catalog() -> Catalog:
    """The registries of every component kind (loaded on first use)."""
    global _cache
    if _cache is None:
        pm = plugins.load_plugins()
        # visible while it fills, kind by kind: a policy checked at registration may build a scorer that
        # looks up another one by name (the critical and chunk modifiers), and every scorer is in by then
        cat = _cache = Catalog()
        checks = {
            "scorers": _check_class(Scorer, dataclass_needed=True),
            "allocators": _check_class(Allocator, dataclass_needed=True),
            "decode_rules": _check_decode_rule,
            "metrics": _check_callable,
            "task_types": _check_task_type,
            "policies": _check_policy(cat),
        }
        for kind, registry in cat.kinds().items():
            hook_name = f"register_{kind}"
            _collect(getattr(pm.hook, hook_name), registry, checks[kind], hook_name)
    return _cache


def resolve_policy(spec: str | dict[str, Any]) -> Policy:
    """A runnable :class:`~lukv_bench.registry.policy.Policy` from a name/alias or a mapping, looked up in
    the registries of every loaded plugin (see :func:`~lukv_bench.registry.resolve.resolve_in`)."""
    return resolve_in(catalog(), spec)


def reload_catalog() -> None:
    """Forget every plugin and registration; the next :func:`catalog` reloads the entry points (for tests)."""
    global _cache
    plugins.reset_plugins()
    _cache = None


def broken_plugins() -> list[tuple[str, str]]:
    """``(plugin, error)`` for every plugin that failed to load, or to register something."""
    catalog()
    return plugins.broken_plugins()
