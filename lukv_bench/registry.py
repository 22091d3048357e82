"""Named scorers, allocators and policies from every plugin, and their resolution into a runnable Policy.

``resolve_policy("snapkv")`` or ``resolve_policy({"name": "mixed", "scorer": "h2o",
"allocator": "layer-uncertainty", "tau": 0.8})`` returns a :class:`Policy` whose ``plan()`` turns one
prefill's statistics and a budget into an :class:`~lukv_bench.policy.Allocation` and the kept
token indices of every layer.
"""

from __future__ import annotations

import dataclasses
import difflib
import json as _json
import types
import typing
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from lukv_bench import plugins
from lukv_bench.errors import ConfigError, UserError
from lukv_bench.policies.streaming import streaming_decode_keep
from lukv_bench.policy import Allocation, Budget, PolicySpec, PrefillStats
from lukv_bench.selection import KeepSet, select_all

#: Decode-time rules a PolicySpec may name in ``decode`` (see :meth:`Policy.decode_keep`).
DECODE_RULES = ("streaming",)

_POLICY_PARAMS = {"sinks": (int, 0)}  # params that belong to the policy itself, not its parts


def _key(name: str) -> str:
    """Lookup form of a name: case and ``_``/``-`` do not matter."""
    return name.strip().lower().replace("_", "-")


def _doc_line(obj: object) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass
class Component:
    """A registered scorer or allocator class and the plugin that registered it."""

    kind: str  #: "scorer" or "allocator"
    name: str
    cls: type
    plugin: str

    def defaults(self) -> dict[str, Any]:
        """The class's parameters (its dataclass fields) with their defaults."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self.cls):
            if not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = None
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: name, plugin, params with defaults, needs, description."""
        return {
            "name": self.name,
            "plugin": self.plugin,
            "params": self.defaults(),
            "needs": sorted(getattr(self.cls, "needs", frozenset())),
            "description": _doc_line(self.cls),
        }


@dataclass
class _Registry:
    scorers: dict[str, Component] = field(default_factory=dict)
    allocators: dict[str, Component] = field(default_factory=dict)
    policies: dict[str, PolicySpec] = field(default_factory=dict)
    lookup: dict[str, str] = field(default_factory=dict)  #: _key(name or alias) -> policy name


_cache: _Registry | None = None


def _ordered_impls(hook: Any) -> list[Any]:
    impls = list(hook.get_hookimpls())
    return sorted(impls, key=lambda impl: impl.plugin_name != plugins.BUILTIN_NAME)


def _collect_components(reg: _Registry, kind: str, hook: Any) -> None:
    table = reg.scorers if kind == "scorer" else reg.allocators
    method = "score" if kind == "scorer" else "allocate"
    for impl in _ordered_impls(hook):
        plugin = impl.plugin_name

        def register(name: str, cls: type, plugin: str = plugin) -> None:
            if not isinstance(name, str) or not name.strip():
                raise TypeError(f"{kind} name must be a non-empty string (got {name!r})")
            if not (
                dataclasses.is_dataclass(cls)
                and isinstance(cls, type)
                and callable(getattr(cls, method, None))
            ):
                raise TypeError(f"{kind} {name!r} must be a dataclass with a {method}() method")
            known = table.get(_key(name))
            if known is not None:
                plugins.record_broken(
                    plugin, f"{kind} {name!r} is already registered by plugin {known.plugin!r}"
                )
                return
            table[_key(name)] = Component(kind, name, cls, plugin)

        try:
            impl.function(register=register)
        except Exception as e:
            plugins.record_broken(plugin, f"register_{kind}s: {type(e).__name__}: {e}")


def _collect_policies(reg: _Registry, hook: Any) -> None:
    for impl in _ordered_impls(hook):
        plugin = impl.plugin_name

        def register(spec: PolicySpec, plugin: str = plugin) -> None:
            if not isinstance(spec, PolicySpec):
                raise TypeError(f"register_policies expects a PolicySpec (got {type(spec).__name__})")
            names = [spec.name, *spec.aliases]
            taken = [n for n in names if _key(n) in reg.lookup]
            if taken:
                owner = reg.policies[reg.lookup[_key(taken[0])]].plugin
                plugins.record_broken(
                    plugin, f"policy name {taken[0]!r} is already registered by plugin {owner!r}"
                )
                return
            if spec.decode is not None and spec.decode not in DECODE_RULES:
                plugins.record_broken(plugin, f"policy {spec.name!r}: unknown decode rule {spec.decode!r}")
                return
            spec = dataclasses.replace(
                spec, plugin=plugin, aliases=tuple(spec.aliases), params=dict(spec.params)
            )
            try:
                _build_policy(spec, {}, spec.name, reg)
            except UserError as e:
                plugins.record_broken(plugin, f"policy {spec.name!r}: {e}")
                return
            reg.policies[spec.name] = spec
            for n in names:
                reg.lookup[_key(n)] = spec.name

        try:
            impl.function(register=register)
        except Exception as e:
            plugins.record_broken(plugin, f"register_policies: {type(e).__name__}: {e}")


def _registry() -> _Registry:
    global _cache
    if _cache is None:
        pm = plugins.load_plugins()
        reg = _Registry()
        _collect_components(reg, "scorer", pm.hook.register_scorers)
        _collect_components(reg, "allocator", pm.hook.register_allocators)
        _collect_policies(reg, pm.hook.register_policies)
        _cache = reg
    return _cache


def reload_registry() -> None:
    """Forget every plugin and registration; the next call reloads the entry points (for tests)."""
    global _cache
    plugins.reset_plugins()
    _cache = None


def scorers() -> dict[str, type]:
    """Registered scorer classes by name."""
    return {c.name: c.cls for c in _registry().scorers.values()}


def allocators() -> dict[str, type]:
    """Registered allocator classes by name."""
    return {c.name: c.cls for c in _registry().allocators.values()}


def list_scorers() -> list[dict[str, Any]]:
    """Registered scorers: name, plugin, params with defaults, needs, description."""
    return [c.describe() for c in _registry().scorers.values()]


def list_allocators() -> list[dict[str, Any]]:
    """Registered allocators: name, plugin, params with defaults, needs, description."""
    return [c.describe() for c in _registry().allocators.values()]


def broken_plugins() -> list[tuple[str, str]]:
    """``(plugin, error)`` for every plugin that failed to load, or to register something."""
    _registry()
    return plugins.broken_plugins()


# --------------------------------------------------------------------------------------- resolution


def _unknown(kind: str, name: str, known: list[str]) -> UserError:
    close = difflib.get_close_matches(_key(name), [_key(k) for k in known], n=1, cutoff=0.4)
    hint = "."
    if close:
        hint = f"; did you mean {next(k for k in known if _key(k) == close[0])!r}?"
    plural = "policies" if kind == "policy" else f"{kind}s"
    return UserError(f"unknown {kind} {name!r}{hint} Known {plural}: {', '.join(sorted(known))}")


def _component(reg: _Registry, kind: str, name: Any, policy: str) -> Component:
    table = reg.scorers if kind == "scorer" else reg.allocators
    if not isinstance(name, str):
        raise ConfigError(f"policy {policy!r}: {kind} must be a name (got {name!r})")
    comp = table.get(_key(name))
    if comp is None:
        raise _unknown(kind, name, [c.name for c in table.values()])
    return comp


@dataclass
class _Param:
    target: str  #: "policy", "scorer" or "allocator"
    field: str
    type: Any
    default: Any


def _param_table(scorer: Component, allocator: Component) -> dict[str, _Param]:
    """Public param names of a scorer+allocator pair; a name both (or the policy) use is prefixed."""
    table: dict[str, _Param] = {k: _Param("policy", k, t, d) for k, (t, d) in _POLICY_PARAMS.items()}
    parts = []
    for comp in (scorer, allocator):
        hints = typing.get_type_hints(comp.cls)
        defaults = comp.defaults()
        parts.append(
            (comp.kind, {k: _Param(comp.kind, k, hints.get(k, Any), v) for k, v in defaults.items()})
        )
    counts: dict[str, int] = {}
    for _, ps in parts:
        for k in ps:
            counts[k] = counts.get(k, 0) + 1
    for kind, ps in parts:
        for k, p in ps.items():
            clash = counts[k] > 1 or k in _POLICY_PARAMS
            table[f"{kind}.{k}" if clash else k] = p
    return table


def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", str(typ))


def _coerce(value: Any, typ: Any, key: str, policy: str) -> Any:
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


def _apply(
    table: dict[str, _Param], values: dict[str, Any], overrides: dict[str, Any], policy: str, where: str
) -> None:
    for key, value in overrides.items():
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
        values[name] = _coerce(value, table[name].type, name, policy)


def _build_policy(
    spec: PolicySpec, overrides: dict[str, Any], name: str, reg: _Registry, raw: Any = None
) -> Policy:
    scorer = _component(reg, "scorer", spec.scorer, name)
    allocator = _component(reg, "allocator", spec.allocator, name)
    table = _param_table(scorer, allocator)
    values = {k: p.default for k, p in table.items()}
    _apply(table, values, spec.params, name, " (in the registered defaults)")
    _apply(table, values, overrides, name, "")
    sinks = values["sinks"]
    if sinks < 0:
        raise ConfigError(f"policy {name!r}: sinks must be >= 0 (got {sinks})")
    kwargs: dict[str, dict[str, Any]] = {"scorer": {}, "allocator": {}}
    for k, p in table.items():
        if p.target != "policy":
            kwargs[p.target][p.field] = values[k]
    try:
        scorer_obj = scorer.cls(**kwargs["scorer"])
        allocator_obj = allocator.cls(**kwargs["allocator"])
    except ConfigError as e:
        raise ConfigError(f"policy {name!r}: {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"policy {name!r}: invalid parameter: {e}") from e
    return Policy(
        name=name,
        spec=raw if raw is not None else name,
        scorer=scorer_obj,
        allocator=allocator_obj,
        sinks=sinks,
        params=values,
        scorer_name=scorer.name,
        allocator_name=allocator.name,
        plugin=spec.plugin,
        decode_rule=spec.decode,
    )


def resolve_policy(spec: str | dict[str, Any]) -> Policy:
    """A runnable :class:`Policy` from a name/alias or a dict.

    Dict forms: ``{name: <registered policy>, <param>: value, ...}`` overrides params;
    ``{name: <new label>, scorer: <scorer>, allocator: <allocator>, <params>}`` combines any scorer
    with any allocator. Raises UserError for unknown names (with the closest match) and
    ConfigError for unknown or invalid params.
    """
    reg = _registry()
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
    registered = reg.lookup.get(_key(name))
    if registered is not None:
        base = reg.policies[registered]
        for kind, given, expected in (
            ("scorer", scorer, base.scorer),
            ("allocator", allocator, base.allocator),
        ):
            if given is not None and _key(str(given)) != _key(expected):
                raise ConfigError(
                    f"policy {name!r} is registered with {kind} {expected!r}; to use {kind} {given!r} "
                    f"give the combination a new name (e.g. name: {name}-{given})"
                )
        return _build_policy(base, overrides, base.name, reg, raw=spec)
    if scorer is None and allocator is None:
        raise _unknown("policy", name, _names(reg))
    if scorer is None or allocator is None:
        raise ConfigError(f"custom policy {name!r} needs both a 'scorer' and an 'allocator'")
    custom = PolicySpec(name=name, scorer=scorer, allocator=allocator, plugin="")
    return _build_policy(custom, overrides, name, reg, raw=spec)


def _names(reg: _Registry) -> list[str]:
    out = []
    for spec in reg.policies.values():
        out.extend([spec.name, *spec.aliases])
    return out


# --------------------------------------------------------------------------------------- the policy


class AllocationError(RuntimeError):
    """An allocator returned counts that break the contract (a bug in it, not a user error)."""


@dataclass
class Plan:
    """What a policy keeps for one prefill at one budget."""

    allocation: Allocation
    keep: list[KeepSet]  #: per layer, ragged kept indices per storage head
    scores: list[torch.Tensor] | None = None  #: the scorer's [S, n] outputs (None when nothing is evicted)

    @property
    def total_kept(self) -> int:
        """Kept (layer, storage head, token) entries."""
        return sum(int(k.indices.numel()) for k in self.keep)


@dataclass
class Policy:
    """A resolved policy: scorer and allocator instances, always-kept tokens and the full params."""

    name: str
    spec: str | dict[str, Any]  #: what the user wrote
    scorer: Any
    allocator: Any
    sinks: int
    params: dict[str, Any]  #: every param with its value, defaults included (JSON-able, for results)
    scorer_name: str = ""
    allocator_name: str = ""
    plugin: str = ""  #: plugin that registered the policy ("" for a custom combination)
    #: decode-time eviction rule: None (append only) or "streaming" (sinks + most recent at the budget)
    decode_rule: str | None = None
    #: scores of the last prefill seen: they do not depend on the budget, so a sweep scores once
    _last_scores: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def needs(self) -> frozenset[str]:
        """Statistics the capture step must provide (union of scorer and allocator needs)."""
        return frozenset(getattr(self.scorer, "needs", frozenset())) | frozenset(
            getattr(self.allocator, "needs", frozenset())
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able identity for results: name, scorer, allocator, params, plugin, decode rule."""
        return {
            "name": self.name,
            "scorer": self.scorer_name,
            "allocator": self.allocator_name,
            "params": dict(self.params),
            "plugin": self.plugin,
            "decode": self.decode_rule,
        }

    def plan(self, stats: PrefillStats, budget: Budget | int, window: int = 32) -> Plan:
        """Allocation and kept indices for every layer, for a mean budget incl. ``window`` and sinks.

        A budget of at least the prompt length keeps everything (identical to FullKV) without
        scoring. ``window`` is the run's observation window: the newest tokens every head keeps.
        """
        tokens = budget.tokens if isinstance(budget, Budget) else int(budget)
        if tokens < 1:
            raise ConfigError(f"budget must be at least 1 token (got {tokens})")
        if window < 0:
            raise ConfigError(f"window must be >= 0 (got {window})")
        n, n_layers, n_heads = stats.n, stats.n_layers, stats.n_storage_heads
        if tokens >= n:
            everything = torch.arange(n, device=stats.layers[0].keys.device).repeat(n_heads)
            cu = torch.arange(n_heads + 1, dtype=torch.long, device=everything.device) * n
            keep = [KeepSet(indices=everything.clone(), cu_seqlens=cu.clone()) for _ in range(n_layers)]
            return Plan(allocation=Allocation(per_layer=[n] * n_layers), keep=keep)
        scores = self._scores(stats)
        allocation = self.allocator.allocate(stats, tokens, window, scores)
        self._check(allocation, stats, tokens)
        return Plan(
            allocation=allocation, keep=select_all(scores, allocation, self.sinks, window), scores=scores
        )

    def _scores(self, stats: PrefillStats) -> list[torch.Tensor]:
        """The scorer's [S, n] scores per layer, computed once per prefill (budgets share them)."""
        if self._last_scores is not None and self._last_scores[0]() is stats:
            return self._last_scores[1]
        n, n_heads = stats.n, stats.n_storage_heads
        scores = [self.scorer.score(layer, stats) for layer in stats.layers]
        for layer, s in enumerate(scores):
            if tuple(s.shape) != (n_heads, n):
                raise AllocationError(
                    f"scorer {self.scorer_name!r} returned shape {tuple(s.shape)} for layer {layer}; "
                    f"expected [{n_heads}, {n}]"
                )
        self._last_scores = (weakref.ref(stats), scores)
        return scores

    def _check(self, alloc: Allocation, stats: PrefillStats, tokens: int) -> None:
        n, n_layers, n_heads = stats.n, stats.n_layers, stats.n_storage_heads
        who = f"allocator {self.allocator_name!r}"

        def fail(msg: str) -> AllocationError:
            return AllocationError(f"{who} (policy {self.name!r}): {msg}")

        if len(alloc.per_layer) != n_layers:
            raise fail(f"{len(alloc.per_layer)} layer counts for {n_layers} layers")
        for layer, c in enumerate(alloc.per_layer):
            if not isinstance(c, int) or not 1 <= c <= n:
                raise fail(f"layer {layer} keeps {c!r} tokens; must be an int in [1, {n}]")
        if alloc.per_head is not None:
            if len(alloc.per_head) != n_layers:
                raise fail("per_head must have one list per layer")
            for layer, heads in enumerate(alloc.per_head):
                if len(heads) != n_heads or any(not isinstance(c, int) or not 1 <= c <= n for c in heads):
                    raise fail(f"layer {layer} per-head counts {heads!r} must be {n_heads} ints in [1, {n}]")
                if sum(heads) != n_heads * alloc.per_layer[layer]:
                    raise fail(f"layer {layer} per-head counts do not average to {alloc.per_layer[layer]}")
        if getattr(self.allocator, "exact_total", True) and sum(alloc.per_layer) != n_layers * min(tokens, n):
            raise fail(f"layer counts sum to {sum(alloc.per_layer)}, expected {n_layers * min(tokens, n)}")

    def decode_keep(
        self, lens_per_head: list[int], logical_len: int, budget_per_head: list[int]
    ) -> list[torch.Tensor] | None:
        """Decode-time eviction for one layer: per head, the segment positions to keep, or None.

        Only ``streaming`` has a rule: a head over its budget keeps its first ``sinks`` entries and
        its most recent ones, ``budget`` in all. ``logical_len`` (tokens seen so far) is accepted for
        rules that need absolute positions; the streaming rule does not.
        """
        if self.decode_rule == "streaming":
            return streaming_decode_keep(lens_per_head, budget_per_head, self.sinks)
        return None


# --------------------------------------------------------------------------------------- listing


def list_policies() -> list[dict[str, Any]]:
    """Every registered policy: name, aliases, scorer, allocator, params (defaults), description, plugin."""
    reg = _registry()
    out = []
    for spec in reg.policies.values():
        policy = _build_policy(spec, {}, spec.name, reg)
        out.append(
            {
                "name": spec.name,
                "aliases": list(spec.aliases),
                "scorer": policy.scorer_name,
                "allocator": policy.allocator_name,
                "params": policy.params,
                "description": spec.description,
                "plugin": spec.plugin,
                "decode": spec.decode,
            }
        )
    return out


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_json.dumps(v)}" for k, v in params.items())


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def format_policies(json: bool = False) -> str:
    """The text of ``lukv-bench policies`` (a human table) or ``lukv-bench policies --json``."""
    policies = list_policies()
    broken = broken_plugins()
    if json:
        data = {
            "policies": policies,
            "scorers": list_scorers(),
            "allocators": list_allocators(),
            "broken_plugins": [{"name": n, "error": e} for n, e in broken],
        }
        return _json.dumps(data, indent=2, default=str)
    lines = ["Policies"]
    rows = [["NAME", "SCORER", "ALLOCATOR", "PLUGIN", "DESCRIPTION"]]
    for p in policies:
        name = p["name"] + (f" ({', '.join(p['aliases'])})" if p["aliases"] else "")
        rows.append([name, p["scorer"], p["allocator"], p["plugin"], p["description"]])
    lines += ["  " + r for r in _table(rows)]
    lines += ["", "Policy parameters (defaults)"]
    lines += ["  " + r for r in _table([[p["name"], _fmt_params(p["params"])] for p in policies])]
    for title, items in (("Scorers", list_scorers()), ("Allocators", list_allocators())):
        lines += ["", title]
        rows = [[c["name"], c["plugin"], _fmt_params(c["params"]) or "-", c["description"]] for c in items]
        lines += ["  " + r for r in _table(rows)]
    if broken:
        lines += ["", "Broken plugins (skipped)"]
        lines += [f"  {n}: {e}" for n, e in broken]
    return "\n".join(lines) + "\n"
