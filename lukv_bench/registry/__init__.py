"""The public face of the component registries: resolve policies, list and format what is registered.

The work is split by concern: :mod:`lukv_bench.registry.components` (the generic registry),
:mod:`lukv_bench.registry.plugins` (entry-point loading), :mod:`lukv_bench.registry.catalog` (collecting every kind from
the plugins), :mod:`lukv_bench.registry.params` (parameter schema and coercion), :mod:`lukv_bench.registry.resolve`
(names and mappings to a policy), :mod:`lukv_bench.registry.policy` (the runtime policy) and
:mod:`lukv_bench.registry.listing` (what the CLI prints). This module re-exports what callers need.
"""

from __future__ import annotations

from lukv_bench.registry.catalog import broken_plugins, catalog, reload_catalog, resolve_policy
from lukv_bench.registry.listing import (
    format_plugins,
    format_policies,
    list_allocators,
    list_components,
    list_policies,
    list_scorers,
)
from lukv_bench.registry.policy import AllocationError, Plan, Policy

__all__ = [
    "AllocationError",
    "Plan",
    "Policy",
    "allocators",
    "broken_plugins",
    "format_plugins",
    "format_policies",
    "list_allocators",
    "list_components",
    "list_policies",
    "list_scorers",
    "reload_catalog",
    "resolve_policy",
    "scorers",
]


def scorers() -> dict[str, type]:
    """Registered scorer classes by name."""
    return {e.name: e.obj for e in catalog().scorers}


def allocators() -> dict[str, type]:
    """Registered allocator classes by name."""
    return {e.name: e.obj for e in catalog().allocators}
