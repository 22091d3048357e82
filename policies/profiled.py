"""Budgets from an offline profile (docs/policies.md §19): ``lukv-bench profile`` output becomes a policy.

The profile's ``profile.json`` holds, per measure (``lmba``, ``lmbo``, ``ablation``), parameter, layer and
KV head, the mean over the profiled samples. Layer ``l`` gets ``B_l = B_min + (L * B - L * B_min) * u_l``
with ``u_l`` the measure's layer means normalised to sum 1 and ZigZagKV's floor ``B_min`` (§10: caps at
``n``, water-filling, largest remainders); with ``heads: true`` each layer's selectable tokens are split
over its heads in proportion to the per-head means the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from lukv_bench.errors import ConfigError
from lukv_bench.runtime.contract import Allocation, PrefillStats

from ._allocation import layer_floor, proportional_split
from ._checks import check_choice, check_range

MEASURES = ("lmba", "lmbo", "ablation")
_FIX = "run `lukv-bench profile --out DIR` for this model and pass DIR or DIR/profile.json as `profile`"


@dataclass
class ProfileShares:
    """The layer (and KV-head) weights one measure of a profile gives, read from its ``profile.json``."""

    path: Path
    n_layers: int
    n_kv_heads: int
    layer: list[float]  #: [L] mean of the measure per layer (head "all")
    head: list[list[float]] | None  #: [L][Hkv] per KV head, None when the profile has no per-head rows


def read_profile(path: str, measure: str, param: str) -> ProfileShares:
    """Read ``measure`` at ``param`` ("" = the first one profiled) from a profile folder or its ``profile.json``."""
    where = Path(path)
    if where.is_dir():
        where = where / "profile.json"
    try:
        doc = json.loads(where.read_text(encoding="utf-8"))
        n_layers, n_kv = int(doc["n_layers"]), int(doc["n_kv_heads"])
        rows = [r for r in doc["measures"] if r["measure"] == measure]
    except FileNotFoundError as e:
        raise ConfigError(f"profiled allocator: profile file {str(where)!r} does not exist; {_FIX}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"profiled allocator: cannot read profile {str(where)!r} ({e}); {_FIX}") from e
    params = list(dict.fromkeys(str(r["param"]) for r in rows))
    if not params:
        raise ConfigError(f"profiled allocator: profile {str(where)!r} has no {measure!r} rows; choose another "
                          f"measure ({', '.join(MEASURES)}) or {_FIX} with that measure")
    chosen = param or params[0]
    if chosen not in params:
        raise ConfigError(f"profiled allocator: profile {str(where)!r} has {measure} at {', '.join(params)}, "
                          f"not {param!r}; set `param` to one of them")
    layer: list[float | None] = [None] * n_layers
    head: list[list[float | None]] = [[None] * n_kv for _ in range(n_layers)]
    for r in rows:
        if str(r["param"]) != chosen or not 0 <= int(r["layer"]) < n_layers:
            continue
        if r["head"] == "all":
            layer[int(r["layer"])] = r["mean"]
        elif 0 <= int(r["head"]) < n_kv:
            head[int(r["layer"])][int(r["head"])] = r["mean"]
    if any(v is None for v in layer):
        raise ConfigError(f"profiled allocator: profile {str(where)!r} lacks a {measure} {chosen} mean for some "
                          f"layer (no samples profiled?); {_FIX}")
    complete = all(v is not None for row in head for v in row)
    return ProfileShares(
        path=where, n_layers=n_layers, n_kv_heads=n_kv, layer=[float(v) for v in layer],  # type: ignore[arg-type]
        head=[[float(v) for v in row] for row in head] if complete else None,  # type: ignore[arg-type]
    )


@dataclass
class ProfiledAllocator:
    """Layer (and head) budgets in proportion to a measure of an offline ``lukv-bench profile``."""

    profile: str = ""  #: a profile folder or its profile.json
    measure: str = "lmbo"  #: lmba | lmbo | ablation
    param: str = ""  #: the measure's parameter as written in the profile ("0.9"); "" = the first profiled
    heads: bool = False  #: also split each layer over its heads by the per-head means
    floor_ratio: float = 0.2  #: ZigZagKV's floor share of the mean budget (§10)

    name: ClassVar[str] = "profiled"
    needs: ClassVar[frozenset[str]] = frozenset()
    exact_total: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_choice("profiled allocator", "measure", self.measure, MEASURES)
        check_range("profiled allocator", "floor_ratio", self.floor_ratio, lo=0.0, hi=1.0)
        if not self.profile:
            raise ConfigError(f"profiled allocator: set `profile` to a profile folder or profile.json; {_FIX}")
        self._shares = read_profile(self.profile, self.measure, self.param)
        if self.heads and self._shares.head is None:
            raise ConfigError(f"profiled allocator: profile {str(self._shares.path)!r} has no per-head "
                              f"{self.measure} means; set heads: false")

    def allocate(
        self, stats: PrefillStats, budget: int, window: int, scores: list[torch.Tensor]
    ) -> Allocation:
        """Per-layer counts in proportion to the profile (and per-head counts with ``heads``), exact totals."""
        shares = self._shares
        if stats.n_layers != shares.n_layers or (self.heads and stats.n_kv_heads != shares.n_kv_heads):
            raise ConfigError(
                f"profiled allocator: profile {str(shares.path)!r} is for {shares.n_layers} layers and "
                f"{shares.n_kv_heads} KV heads, the model has {stats.n_layers} and {stats.n_kv_heads}; {_FIX}"
            )
        n, n_layers = stats.n, stats.n_layers
        b, w = min(budget, n), min(window, n)
        info: dict[str, Any] = {"profile": str(shares.path), "measure": self.measure, "weights": shares.layer}
        floor = layer_floor(b, self.floor_ratio, w, n)
        per_layer = proportional_split(n_layers * b, shares.layer, lo=floor, hi=n)
        if not self.heads or shares.head is None or b >= n:
            return Allocation(per_layer=per_layer, info=info)
        heads = stats.n_storage_heads
        group = heads // stats.n_kv_heads  # query-head storage: a KV head's share goes to each of its heads
        per_head = []
        for layer, keep in enumerate(per_layer):
            if keep <= w:
                per_head.append([keep] * heads)
                continue
            weights = [shares.head[layer][h // group] for h in range(heads)]
            counts = proportional_split(heads * (keep - w), weights, lo=1 if w == 0 else 0, hi=n - w)
            per_head.append([w + c for c in counts])
        return Allocation(per_layer=per_layer, per_head=per_head, info=info)
