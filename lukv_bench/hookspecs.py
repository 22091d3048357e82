"""The plugin contract: three registration hooks (pluggy project ``lukv_bench``).

A plugin is any module (or object) exposed through an entry point of group ``lukv_bench`` that
implements some of these hooks with ``@lukv_bench.hookspecs.hookimpl``. The built-in policies use
the same door (entry point ``builtin = "lukv_bench.policies"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("lukv_bench")
hookimpl = HookimplMarker("lukv_bench")


@hookspec
def register_scorers(register: Callable[[str, type], None]) -> None:
    """Register scorers: ``register(name: str, cls)``; cls is a dataclass implementing ``Scorer``."""


@hookspec
def register_allocators(register: Callable[[str, type], None]) -> None:
    """Register allocators: ``register(name: str, cls)``; cls is a dataclass implementing ``Allocator``."""


@hookspec
def register_policies(register: Callable[[Any], None]) -> None:
    """Register policies: ``register(spec: PolicySpec)`` names a scorer, an allocator and default params."""
