"""The registry: resolving policies, validating params, listing, and loading plugins one by one."""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import lukv_bench.policies
import pytest
import torch
from support import make_stats

from lukv_bench import registry
from lukv_bench.errors import ConfigError, UserError
from lukv_bench.registry import format_policies, list_policies, plugins, resolve_policy
from lukv_bench.registry.hookspecs import hookimpl
from lukv_bench.runtime.contract import ACCUMULATED, WINDOW, Budget, PolicySpec

BUILTIN = ["full", "random", "streaming", "h2o", "snapkv", "pyramidkv", "adakv", "layer-uncertainty", "cake"]


def test_builtins_are_registered_by_the_builtin_plugin() -> None:
    listed = {p["name"]: p for p in list_policies()}
    assert set(BUILTIN) <= set(listed)
    assert all(listed[name]["plugin"] == "builtin" for name in BUILTIN)
    assert listed["layer-uncertainty"]["aliases"] == ["zigzag", "zigzagkv"]
    assert listed["streaming"]["params"]["sinks"] == 4
    assert listed["pyramidkv"]["params"]["beta"] == 20.0
    assert {"random", "recency", "h2o", "snapkv", "cake"} <= set(registry.scorers())
    assert {"full", "uniform", "pyramid", "adakv", "layer-uncertainty", "cake"} <= set(registry.allocators())
    assert all(s["plugin"] == "builtin" for s in registry.list_scorers() if s["name"] in registry.scorers())


def test_resolve_by_name_alias_and_spelling() -> None:
    p = resolve_policy("zigzag")
    assert p.name == "layer-uncertainty" and p.spec == "zigzag"
    assert p.scorer_name == "snapkv" and p.allocator_name == "layer-uncertainty"
    assert p.params == {"sinks": 0, "kernel": 7, "pooling": "max", "tau": 0.9, "floor_ratio": 0.2}
    assert resolve_policy("Layer_Uncertainty").name == "layer-uncertainty"
    assert resolve_policy("streaming").sinks == 4
    assert resolve_policy("h2o").needs == frozenset({ACCUMULATED})
    assert resolve_policy("full").needs == frozenset()


def test_overrides_and_custom_combinations() -> None:
    p = resolve_policy({"name": "snapkv", "kernel": 5, "pooling": "avg", "sinks": 2})
    assert p.params == {"sinks": 2, "kernel": 5, "pooling": "avg"} and p.sinks == 2
    assert p.scorer.kernel == 5
    assert resolve_policy({"name": "pyramidkv", "beta": 4}).allocator.beta == 4.0  # int -> float
    mixed = resolve_policy({"name": "mixed", "scorer": "h2o", "allocator": "layer-uncertainty", "tau": 0.8})
    assert mixed.name == "mixed" and mixed.plugin == ""
    assert mixed.needs == frozenset({ACCUMULATED, WINDOW})
    assert mixed.params == {"sinks": 0, "normalize": False, "tau": 0.8, "floor_ratio": 0.2}
    json.dumps(mixed.describe())
    # same scorer/allocator as registered is fine; a different one needs a new name
    assert resolve_policy({"name": "snapkv", "scorer": "snapkv"}).name == "snapkv"
    with pytest.raises(ConfigError, match="new name"):
        resolve_policy({"name": "snapkv", "allocator": "pyramid"})


def test_shared_param_names_are_prefixed() -> None:
    p = resolve_policy({"name": "x", "scorer": "h2o", "allocator": "adakv", "scorer.normalize": True})
    assert p.params["scorer.normalize"] is True and p.params["allocator.normalize"] is True
    assert p.scorer.normalize is True
    with pytest.raises(ConfigError, match="ambiguous.*scorer.normalize or allocator.normalize"):
        resolve_policy({"name": "x", "scorer": "h2o", "allocator": "adakv", "normalize": False})
    # an explicit prefix is also accepted when there is no clash
    assert resolve_policy({"name": "adakv", "allocator.alpha": 0.5}).allocator.alpha == 0.5


def test_unknown_names() -> None:
    with pytest.raises(UserError, match=r"unknown policy 'snapk'; did you mean 'snapkv'\?") as e:
        resolve_policy("snapk")
    assert "Known policies:" in str(e.value)
    assert "layer-uncertainty" in str(e.value) and "zigzag" in str(e.value)
    assert not isinstance(e.value, ConfigError)
    with pytest.raises(UserError, match="unknown scorer 'snapvk'.*did you mean 'snapkv'"):
        resolve_policy({"name": "mine", "scorer": "snapvk", "allocator": "uniform"})
    with pytest.raises(UserError, match="unknown allocator 'pyramd'.*'pyramid'"):
        resolve_policy({"name": "mine", "scorer": "snapkv", "allocator": "pyramd"})
    with pytest.raises(ConfigError, match="both a 'scorer' and an 'allocator'"):
        resolve_policy({"name": "mine", "scorer": "snapkv"})
    with pytest.raises(UserError, match=r"unknown policy 'qqqq'\. Known policies: adakv, cake"):
        resolve_policy("qqqq")
    with pytest.raises(ConfigError, match="needs a 'name'"):
        resolve_policy({"kernel": 3})
    with pytest.raises(ConfigError):
        resolve_policy(3)  # type: ignore[arg-type]


def test_unknown_param_names_param_policy_and_known() -> None:
    with pytest.raises(ConfigError) as e:
        resolve_policy({"name": "snapkv", "kernal": 5})
    msg = str(e.value)
    assert "'kernal'" in msg and "'snapkv'" in msg and "kernel" in msg and "pooling" in msg and "sinks" in msg


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"name": "zigzag", "tau": 0}, r"tau must be in \(0.0, 1.0\]"),
        ({"name": "zigzag", "tau": 1.5}, "tau"),
        ({"name": "zigzag", "floor_ratio": -0.1}, "floor_ratio"),
        ({"name": "zigzag", "floor_ratio": 1.1}, "floor_ratio"),
        ({"name": "pyramidkv", "beta": 1}, "beta"),
        ({"name": "snapkv", "sinks": -1}, "sinks must be >= 0"),
        ({"name": "snapkv", "kernel": 4}, "odd"),
        ({"name": "snapkv", "kernel": 0}, "odd"),
        ({"name": "snapkv", "pooling": "mean"}, "pooling must be one of max, avg, none"),
        ({"name": "snapkv", "kernel": "7"}, "'kernel' must be an integer"),
        ({"name": "snapkv", "kernel": 2.5}, "'kernel' must be an integer"),
        ({"name": "h2o", "normalize": "yes"}, "'normalize' must be true or false"),
        ({"name": "random", "seed": True}, "'seed' must be an integer"),
        ({"name": "adakv", "alpha": 2}, "alpha"),
        ({"name": "cake", "tau1": 0}, "tau1"),
        ({"name": "cake", "gamma": -1}, "gamma"),
        ({"name": "zigzag", "tau": "high"}, "'tau' must be a number"),
    ],
)
def test_bad_values(spec: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as e:
        resolve_policy(spec)
    assert repr(spec["name"]) in str(e.value) or "layer-uncertainty" in str(e.value)


def test_format_policies_text_and_json() -> None:
    text = format_policies()
    for name in BUILTIN:
        assert name in text
    assert "zigzag" in text and "floor_ratio=0.2" in text
    data = json.loads(format_policies(json=True))
    assert {p["name"] for p in data["policies"]} >= set(BUILTIN)
    assert {s["name"] for s in data["scorers"]} >= {"snapkv", "h2o"}
    assert data["broken_plugins"] == [] or isinstance(data["broken_plugins"], list)
    h2o = next(s for s in data["scorers"] if s["name"] == "h2o")
    assert h2o["needs"] == ["accumulated"] and h2o["params"] == {"normalize": False}


def test_plan_accepts_budget_objects_and_records_info() -> None:
    stats = make_stats(n=40, window=4)
    plan = resolve_policy("zigzag").plan(stats, Budget.resolve(0.25, 40), window=4)
    assert sum(plan.allocation.per_layer) == 4 * 10
    assert len(plan.allocation.info["lmba"]) == 4
    assert plan.scores is not None and plan.total_kept == 2 * 40
    with pytest.raises(ConfigError):
        resolve_policy("snapkv").plan(stats, 0, window=4)


# ------------------------------------------------------------------------------- plugins


@dataclass
class _FakeEntryPoint:
    name: str
    loader: Callable[[], object]
    value: str = "fake"

    def load(self) -> object:
        return self.loader()


@dataclass
class _ConstScorer:
    """Everything scores the same."""

    level: float = 1.0

    name: ClassVar[str] = "const"
    needs: ClassVar[frozenset[str]] = frozenset()

    def score(self, layer: Any, stats: Any) -> torch.Tensor:
        return torch.full((stats.n_storage_heads, layer.n), self.level)


@dataclass
class _NoNeeds:
    """A scorer class without ``needs``."""

    name: ClassVar[str] = "noneeds"

    def score(self, layer: Any, stats: Any) -> torch.Tensor:
        return torch.zeros(stats.n_storage_heads, layer.n)


def _keep_newest(lens_per_head: list[int], logical_len: int, budget_per_head: list[int], params: Any):
    """Keep the newest ``budget`` entries of every head (no sinks)."""
    return [torch.arange(max(0, n - b), n) for n, b in zip(lens_per_head, budget_per_head)]


def _good_plugin() -> types.ModuleType:
    mod = types.ModuleType("good_plugin")

    @hookimpl
    def register_scorers(register: Callable[..., None]) -> None:
        register(_ConstScorer)  # the ClassVar name is the registration name
        register(_NoNeeds)  # breaks the Scorer protocol: recorded, the rest still registers
        register("const2", _ConstScorer)  # the old (name, cls) form: recorded with the fix

    @hookimpl
    def register_decode_rules(register: Callable[..., None]) -> None:
        register(_keep_newest, name="newest")

    @hookimpl
    def register_policies(register: Callable[..., None]) -> None:
        register(PolicySpec("const", "const", "uniform", "constant scores"))
        register(PolicySpec("snapkv", "const", "uniform", "a clash with the built-in"))
        register(PolicySpec("badparams", "const", "uniform", params={"level": "high"}))
        register(PolicySpec("const-newest", "const", "uniform", "const with a decode rule", decode="newest"))
        register(PolicySpec("baddecode", "const", "uniform", decode="oldest"))

    mod.register_scorers = register_scorers  # type: ignore[attr-defined]
    mod.register_decode_rules = register_decode_rules  # type: ignore[attr-defined]
    mod.register_policies = register_policies  # type: ignore[attr-defined]
    return mod


def _raising_plugin() -> types.ModuleType:
    mod = types.ModuleType("raising_plugin")

    @hookimpl
    def register_allocators(register: Callable[..., None]) -> None:
        raise RuntimeError("boom")

    mod.register_allocators = register_allocators  # type: ignore[attr-defined]
    return mod


def _fail_import() -> object:
    raise ImportError("No module named 'missing_dependency'")


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[list[Any]], None]]:
    def install(eps: list[Any]) -> None:
        monkeypatch.setattr(plugins, "_entry_points", lambda: eps)
        registry.reload_catalog()

    yield install
    monkeypatch.undo()
    registry.reload_catalog()


def test_broken_plugin_is_reported_and_others_load(fake_entry_points: Callable[[list[Any]], None]) -> None:
    fake_entry_points(
        [
            _FakeEntryPoint("builtin", lambda: lukv_bench.policies),
            _FakeEntryPoint("broken", _fail_import),
            _FakeEntryPoint("good", _good_plugin),
            _FakeEntryPoint("raising", _raising_plugin),
        ]
    )
    with pytest.warns(RuntimeWarning, match="broken"):
        listed = {p["name"]: p for p in list_policies()}
    assert listed["const"]["plugin"] == "good"
    assert listed["snapkv"]["plugin"] == "builtin"  # first registration wins
    assert "badparams" not in listed
    assert set(BUILTIN) <= set(listed)
    broken = dict(registry.broken_plugins())
    assert broken["broken"] == "ImportError: No module named 'missing_dependency'"
    assert "register_allocators: RuntimeError: boom" in broken["raising"]
    errors = [e for n, e in registry.broken_plugins() if n == "good"]
    assert any("already registered by plugin 'builtin'" in e for e in errors)
    assert any("badparams" in e and "'level' must be a number" in e for e in errors)
    assert any("'noneeds'" in e and "lacks needs" in e for e in errors)
    assert any("scorer 'const2': call register(obj)" in e for e in errors)
    assert any("baddecode" in e and "unknown decode rule 'oldest'" in e for e in errors)
    # a plugin's decode rule runs through Policy.decode_keep
    newest = resolve_policy("const-newest")
    assert newest.decode_rule == "newest" and newest.describe()["components"]["decode"]["plugin"] == "good"
    assert [k.tolist() for k in newest.decode_keep([5, 2], 5, [3, 3])] == [[2, 3, 4], [0, 1]]
    text = format_policies()
    assert "Broken plugins" in text and "missing_dependency" in text
    assert json.loads(format_policies(json=True))["broken_plugins"][0]["name"] == "broken"
    plan = resolve_policy("const").plan(make_stats(n=12), 6, window=2)
    assert plan.keep[0].counts == [6, 6]
    assert next(s for s in registry.list_scorers() if s["name"] == "const")["plugin"] == "good"


def test_builtin_fallback_without_metadata_and_never_twice(
    fake_entry_points: Callable[[list[Any]], None],
) -> None:
    fake_entry_points([])
    assert "snapkv" in {p["name"] for p in list_policies()}
    assert plugins.pm.get_plugin("builtin") is lukv_bench.policies
    fake_entry_points(
        [
            _FakeEntryPoint("builtin", lambda: lukv_bench.policies),
            _FakeEntryPoint("builtin", lambda: lukv_bench.policies),
        ]
    )
    assert [p["name"] for p in list_policies()].count("snapkv") == 1
    assert len(plugins.pm.get_plugins()) == len(plugins.BUILTINS)
    assert registry.broken_plugins() == []
