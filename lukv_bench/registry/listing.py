"""What ``lukv-bench policies`` and ``lukv-bench plugins`` print: every registered component and its origin."""

from __future__ import annotations

import json as _json
from typing import Any

from lukv_bench.registry.catalog import broken_plugins, catalog
from lukv_bench.registry.components import Entry
from lukv_bench.registry.params import field_defaults
from lukv_bench.registry.resolve import build_policy


def _part(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        **entry.origin.describe(),
        "params": field_defaults(entry.obj),
        "needs": sorted(entry.obj.needs),
        "description": entry.description,
    }


def list_scorers() -> list[dict[str, Any]]:
    """Registered scorers: name, plugin, distribution, version, params with defaults, needs, description."""
    return [_part(e) for e in catalog().scorers]


def list_allocators() -> list[dict[str, Any]]:
    """Registered allocators: name, plugin, distribution, version, params with defaults, needs, description."""
    return [_part(e) for e in catalog().allocators]


def list_policies() -> list[dict[str, Any]]:
    """Every registered policy: name, aliases, scorer, allocator, params (defaults), decode rule, description
    and origin (plugin, distribution, version)."""
    cat = catalog()
    out = []
    for entry in cat.policies:
        policy = build_policy(entry.obj, {}, entry.name, cat, entry=entry)
        out.append(
            {
                "name": entry.name,
                "aliases": list(entry.aliases),
                "scorer": policy.scorer_name,
                "allocator": policy.allocator_name,
                "params": policy.params,
                "description": entry.description,
                "decode": policy.decode_rule,
                **entry.origin.describe(),
            }
        )
    return out


def list_components() -> dict[str, list[dict[str, Any]]]:
    """Every component kind -> its entries (name, aliases, description, plugin, distribution, version)."""
    return {kind: [e.describe() for e in registry] for kind, registry in catalog().kinds().items()}


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_json.dumps(v)}" for k, v in params.items())


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _broken_lines(broken: list[tuple[str, str]]) -> list[str]:
    if not broken:
        return []
    return ["", "Broken plugins (skipped)", *[f"  {n}: {e}" for n, e in broken]]


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
    lines += _table(rows)
    lines += ["", "Policy parameters (defaults)"]
    lines += _table([[p["name"], _fmt_params(p["params"])] for p in policies])
    for title, items in (("Scorers", list_scorers()), ("Allocators", list_allocators())):
        lines += ["", title]
        lines += _table([[c["name"], c["plugin"], _fmt_params(c["params"]) or "-", c["description"]] for c in items])
    lines += _broken_lines(broken)
    return "\n".join(lines) + "\n"


def format_plugins(json: bool = False) -> str:
    """The text of ``lukv-bench plugins``: every component of every kind with its plugin, distribution and
    version, then the plugins that failed."""
    components = list_components()
    broken = broken_plugins()
    if json:
        data = {"components": components, "broken_plugins": [{"name": n, "error": e} for n, e in broken]}
        return _json.dumps(data, indent=2, default=str)
    rows = [["KIND", "NAME", "PLUGIN", "DISTRIBUTION", "VERSION", "DESCRIPTION"]]
    for items in components.values():
        for c in items:
            name = c["name"] + (f" ({', '.join(c['aliases'])})" if c["aliases"] else "")
            rows.append([c["kind"], name, c["plugin"],
                         c["distribution"] or "-", c["version"] or "-", c["description"]])
    return "\n".join(["Components", *_table(rows), *_broken_lines(broken)]) + "\n"
