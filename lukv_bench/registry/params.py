"""Policy parameters: the schema of a scorer + allocator pair, and checking and coercing user values.

A scorer's and an allocator's parameters are their dataclass fields. A policy exposes both sets under
their bare names, plus its own (``sinks``); a name both parts use is written ``scorer.<name>`` or
``allocator.<name>``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from lukv_bench.errors import ConfigError

#: params that belong to the policy itself, not to its parts: name -> (type, default)
POLICY_PARAMS: dict[str, tuple[type, Any]] = {"sinks": (int, 0)}


def field_defaults(cls: type) -> dict[str, Any]:
    """A component class's parameters (its init dataclass fields) with their defaults (None: required)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


@dataclass
class Param:
    """One public parameter of a policy: which part takes it, under which field, its type and default."""

    target: str  #: "policy", "scorer" or "allocator"
    field: str
    type: Any
    default: Any


def param_table(scorer: type, allocator: type) -> dict[str, Param]:
    """Public param names of a scorer + allocator pair; a name both (or the policy) use is prefixed."""
    table: dict[str, Param] = {k: Param("policy", k, t, d) for k, (t, d) in POLICY_PARAMS.items()}
    parts = []
    for kind, cls in (("scorer", scorer), ("allocator", allocator)):
        hints = typing.get_type_hints(cls)
        parts.append((kind, {k: Param(kind, k, hints.get(k, Any), v) for k, v in field_defaults(cls).items()}))
    counts: dict[str, int] = {}
    for _, ps in parts:
        for k in ps:
            counts[k] = counts.get(k, 0) + 1
    for kind, ps in parts:
        for k, p in ps.items():
            clash = counts[k] > 1 or k in POLICY_PARAMS
            table[f"{kind}.{k}" if clash else k] = p
    return table


def coerce(value: Any, typ: Any, key: str, policy: str) -> Any:
    """Check ``value`` against a field type (bool, int, float, str, optionals); convert int->float."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return value
        typ = rest[0]

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"policy {policy!r}: parameter {key!r} must be {expected} (got {value!r})")

    if typ is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if typ is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


class ParamErrors(ConfigError):
    """Every problem with one policy's parameters; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(problems))


def problems_of(err: Exception) -> list[str]:
    """The problems an error stands for: each of a :class:`ParamErrors`, else its message alone."""
    return list(err.problems) if isinstance(err, ParamErrors) else [str(err)]


def apply_params(
    table: dict[str, Param], values: dict[str, Any], overrides: dict[str, Any], policy: str, where: str = ""
) -> None:
    """Check ``overrides`` against ``table`` and write them (coerced) into ``values``; :class:`ParamErrors` lists
    every bad one."""
    problems: list[str] = []
    for key, value in overrides.items():
        try:
            _apply_one(table, values, key, value, policy, where)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ParamErrors(problems)


def _apply_one(table: dict[str, Param], values: dict[str, Any], key: Any, value: Any, policy: str, where: str) -> None:
    """Check one parameter against ``table`` and write it (coerced) into ``values``."""
    name = key if key in table else None
    if name is None and isinstance(key, str) and "." in key:
        kind, _, bare = key.partition(".")
        if bare in table and table[bare].target == kind:
            name = bare  # an explicit prefix is always accepted
    if name is None:
        clashing = [k for k in (f"scorer.{key}", f"allocator.{key}") if k in table]
        if clashing:
            raise ConfigError(
                f"policy {policy!r}: parameter {key!r} is ambiguous{where}; write {' or '.join(clashing)}"
            )
        raise ConfigError(
            f"policy {policy!r}: unknown parameter {key!r}{where}. Known parameters: {', '.join(table)}"
        )
    values[name] = coerce(value, table[name].type, name, policy)
