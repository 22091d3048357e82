"""Resolving what a suite or a user wrote (a policy name, or a mapping) into a runnable Policy.

``resolve_in(cat, "snapkv")`` or ``resolve_in(cat, {"name": "mixed", "scorer": "h2o",
"allocator": "layer-uncertainty", "tau": 0.8})`` looks the parts up in the registries
(:func:`lukv_bench.registry.catalog.catalog`), checks and fills every parameter (:mod:`lukv_bench.registry.params`)
and returns a :class:`~lukv_bench.registry.policy.Policy` that knows where each part came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lukv_bench.errors import ConfigError
from lukv_bench.registry.components import Entry, name_key
from lukv_bench.registry.params import apply_params, param_table
from lukv_bench.registry.policy import Policy
from lukv_bench.runtime.contract import PolicySpec

if TYPE_CHECKING:
    from lukv_bench.registry.catalog import Catalog


def _part(cat: Catalog, kind: str, name: Any, policy: str) -> Entry:
    registry = cat.scorers if kind == "scorer" else cat.allocators
    if not isinstance(name, str):
        raise ConfigError(f"policy {policy!r}: {kind} must be a name (got {name!r})")
    return registry.lookup(name)


def build_policy(
    spec: PolicySpec, overrides: dict[str, Any], name: str, cat: Catalog, raw: Any = None,
    entry: Entry | None = None,
) -> Policy:
    """A :class:`Policy` from a spec plus user overrides; ``entry`` is the spec's registration (None: custom)."""
    scorer = _part(cat, "scorer", spec.scorer, name)
    allocator = _part(cat, "allocator", spec.allocator, name)
    table = param_table(scorer.obj, allocator.obj)
    values = {k: p.default for k, p in table.items()}
    apply_params(table, values, spec.params, name, " (in the registered defaults)")
    apply_params(table, values, overrides, name)
    sinks = values["sinks"]
    if sinks < 0:
        raise ConfigError(f"policy {name!r}: sinks must be >= 0 (got {sinks})")
    kwargs: dict[str, dict[str, Any]] = {"scorer": {}, "allocator": {}}
    for k, p in table.items():
        if p.target != "policy":
            kwargs[p.target][p.field] = values[k]
    try:
        scorer_obj = scorer.obj(**kwargs["scorer"])
        allocator_obj = allocator.obj(**kwargs["allocator"])
    except ConfigError as e:
        raise ConfigError(f"policy {name!r}: {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"policy {name!r}: invalid parameter: {e}") from e
    rule = cat.decode_rules.lookup(spec.decode) if spec.decode is not None else None
    return Policy(
        name=name,
        spec=raw if raw is not None else name,
        scorer=scorer_obj,
        allocator=allocator_obj,
        sinks=sinks,
        params=values,
        scorer_name=scorer.name,
        allocator_name=allocator.name,
        decode_rule=rule.name if rule is not None else None,
        decode_fn=rule.obj if rule is not None else None,
        origins={
            "policy": entry.origin if entry is not None else None,
            "scorer": scorer.origin,
            "allocator": allocator.origin,
            "decode": rule.origin if rule is not None else None,
        },
    )


def resolve_in(cat: Catalog, spec: str | dict[str, Any]) -> Policy:
    """A runnable :class:`Policy` from a name/alias or a dict, looked up in ``cat``.

    Dict forms: ``{name: <registered policy>, <param>: value, ...}`` overrides params;
    ``{name: <new label>, scorer: <scorer>, allocator: <allocator>, <params>}`` combines any scorer
    with any allocator. Raises UserError for unknown names (with the closest match) and
    ConfigError for unknown or invalid params.
    """
    if isinstance(spec, str):
        name, overrides, scorer, allocator = spec, {}, None, None
    elif isinstance(spec, dict):
        overrides = dict(spec)
        name = overrides.pop("name", None)
        scorer = overrides.pop("scorer", None)
        allocator = overrides.pop("allocator", None)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a policy given as a mapping needs a 'name' (got {spec!r})")
    else:
        raise ConfigError(f"a policy must be a name or a mapping with a 'name' (got {spec!r})")
    entry = cat.policies.get(name)
    if entry is not None:
        base: PolicySpec = entry.obj
        for kind, given, expected in (("scorer", scorer, base.scorer), ("allocator", allocator, base.allocator)):
            if given is not None and name_key(str(given)) != name_key(expected):
                raise ConfigError(
                    f"policy {name!r} is registered with {kind} {expected!r}; to use {kind} {given!r} "
                    f"give the combination a new name (e.g. name: {name}-{given})"
                )
        return build_policy(base, overrides, base.name, cat, raw=spec, entry=entry)
    if scorer is None and allocator is None:
        raise cat.policies.unknown(name)
    if scorer is None or allocator is None:
        raise ConfigError(f"custom policy {name!r} needs both a 'scorer' and an 'allocator'")
    custom = PolicySpec(name=name, scorer=scorer, allocator=allocator)
    return build_policy(custom, overrides, name, cat, raw=spec)
