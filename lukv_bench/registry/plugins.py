"""The plugin loader: registers every ``lukv_bench`` entry point, one at a time, and remembers failures.

The built-in components arrive through the same entry point group as third-party plugins
(:data:`BUILTINS`). When the package metadata is missing (a source tree that was never installed), the
built-ins are registered directly instead, once. Each plugin's :class:`~lukv_bench.registry.components.Origin`
(distribution and version, from the entry point's metadata) is kept for provenance.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from typing import Any

import pluggy

from lukv_bench.registry import hookspecs
from lukv_bench.registry.components import Origin
from lukv_bench.version import __version__

#: built-in plugins: entry point name -> module (pyproject declares the same pairs)
BUILTINS = {
    "builtin": "lukv_bench.policies",
    "builtin-tasks": "lukv_bench.tasks",
    "builtin-metrics": "lukv_bench.tasks.metrics",
}
DISTRIBUTION = "lukv-bench"

pm = pluggy.PluginManager("lukv_bench")
pm.add_hookspecs(hookspecs)

_broken: list[tuple[str, str]] = []
_origins: dict[str, Origin] = {}
_loaded = False


def _entry_points() -> list[Any]:
    """The entry points of group ``lukv_bench`` (a function so tests can substitute fakes)."""
    return list(importlib.metadata.entry_points(group="lukv_bench"))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _own_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return __version__


def _origin_of(ep: Any) -> Origin:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return Origin(ep.name)
    return Origin(ep.name, dist.metadata["Name"], dist.version)


def record_broken(name: str, error: str) -> None:
    """Remember that plugin ``name`` failed (shown by ``lukv-bench plugins``) and warn once."""
    if (name, error) in _broken:
        return
    _broken.append((name, error))
    warnings.warn(
        f"lukv-bench plugin {name!r} is broken and was skipped: {error}", RuntimeWarning, stacklevel=3
    )


def _register(plugin: object, name: str, origin: Origin) -> None:
    if pm.is_registered(plugin) or pm.get_plugin(name) is not None:
        return  # the same entry point seen twice (e.g. duplicate metadata): register it once
    pm.register(plugin, name=name)
    _origins[name] = origin


def load_plugins() -> pluggy.PluginManager:
    """Register every entry point plugin (once per process) and return the plugin manager.

    Each entry point is loaded and registered on its own; one that raises is recorded in
    :func:`broken_plugins` and the others still load.
    """
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    try:
        eps = _entry_points()
    except Exception as e:  # pragma: no cover - broken metadata on the path
        record_broken("<entry points>", _describe(e))
        eps = []
    for ep in eps:
        try:
            _register(ep.load(), ep.name, _origin_of(ep))
        except Exception as e:
            record_broken(ep.name, _describe(e))
    for name, module_name in BUILTINS.items():
        if pm.get_plugin(name) is None:  # not already registered from its entry point (an installed copy)
            _register(importlib.import_module(module_name), name, Origin(name, DISTRIBUTION, _own_version()))
    return pm


def is_builtin(plugin: str) -> bool:
    """Whether ``plugin`` is one of lukv-bench's own built-in plugins."""
    return plugin in BUILTINS


def origin(plugin: str) -> Origin:
    """Where plugin ``plugin`` came from (distribution and version when its metadata says)."""
    load_plugins()
    return _origins.get(plugin, Origin(plugin))


def broken_plugins() -> list[tuple[str, str]]:
    """``(plugin name, error)`` for every plugin that failed to load or register."""
    load_plugins()
    return list(_broken)


def reset_plugins() -> None:
    """Unregister everything and forget failures, so the next :func:`load_plugins` starts afresh."""
    global _loaded
    for plugin in list(pm.get_plugins()):
        pm.unregister(plugin)
    _broken.clear()
    _origins.clear()
    _loaded = False
