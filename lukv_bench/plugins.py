"""The plugin manager: loads every ``lukv_bench`` entry point, one at a time, and remembers failures.

Built-in policies arrive through the same entry point group as third-party plugins. When the
package metadata is missing (running from a source tree that was never installed), the built-ins
are registered directly instead, once.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from typing import Any

import pluggy

from lukv_bench import hookspecs

BUILTIN_NAME = "builtin"
BUILTIN_MODULE = "lukv_bench.policies"

pm = pluggy.PluginManager("lukv_bench")
pm.add_hookspecs(hookspecs)

_broken: list[tuple[str, str]] = []
_loaded = False


def _entry_points() -> list[Any]:
    """The entry points of group ``lukv_bench`` (a function so tests can substitute fakes)."""
    return list(importlib.metadata.entry_points(group="lukv_bench"))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def record_broken(name: str, error: str) -> None:
    """Remember that plugin ``name`` failed (shown by ``lukv-bench policies``) and warn once."""
    if (name, error) in _broken:
        return
    _broken.append((name, error))
    warnings.warn(
        f"lukv-bench plugin {name!r} is broken and was skipped: {error}", RuntimeWarning, stacklevel=3
    )


def _register(plugin: object, name: str) -> None:
    if pm.is_registered(plugin) or pm.get_plugin(name) is not None:
        return  # the same entry point seen twice (e.g. duplicate metadata): register it once
    pm.register(plugin, name=name)


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
            _register(ep.load(), ep.name)
        except Exception as e:
            record_broken(ep.name, _describe(e))
    builtin = importlib.import_module(BUILTIN_MODULE)
    if not pm.is_registered(builtin) and pm.get_plugin(BUILTIN_NAME) is None:
        pm.register(builtin, name=BUILTIN_NAME)
    return pm


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
    _loaded = False
