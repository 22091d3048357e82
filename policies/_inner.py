"""Scorer modifiers (``critical``, ``chunk``) build the scorer they modify from its registered name.

The inner scorer is looked up in the registry like any part of a policy (a plugin's scorer works too)
and built with ``inner_params``, each checked against its fields and coerced as a policy's own params.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from lukv_bench.errors import ConfigError, UserError
from lukv_bench.runtime.contract import Scorer


def build_inner(owner: str, inner: str, params: Mapping[str, Any] | None) -> Scorer:
    """The registered scorer ``inner`` with ``params``; ConfigError naming ``owner``'s bad key otherwise."""
    # imported here: the registry loads this package as a plugin, so a module-level import would be circular
    from lukv_bench.registry.catalog import catalog
    from lukv_bench.registry.params import coerce, field_defaults

    if not isinstance(inner, str):
        raise ConfigError(f"{owner}: inner must be a scorer name (got {inner!r})")
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"{owner}: inner_params must be a mapping of {inner} parameters (got {params!r})")
    try:
        cls = catalog().scorers.lookup(inner).obj
    except UserError as e:
        raise ConfigError(f"{owner}: inner: {e}") from e
    known = field_defaults(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in (params or {}).items():
        if key not in known:
            listed = ", ".join(known) or "none"
            raise ConfigError(f"{owner}: inner_params has no parameter {key!r} for scorer {inner!r} (known: {listed})")
        kwargs[key] = coerce(value, hints.get(key, Any), f"inner_params.{key}", owner)
    return cls(**kwargs)

