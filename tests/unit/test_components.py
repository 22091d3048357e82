"""The generic component registry, provenance, plugin task types and metrics, and the core's import rule."""

from __future__ import annotations

import ast
import json
import textwrap
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lukv_bench.policies
import pytest

import lukv_bench.tasks
import lukv_bench.tasks.metrics
from lukv_bench import registry
from lukv_bench.config.suite import load_suite
from lukv_bench.errors import UserError
from lukv_bench.registry import format_plugins, list_components, plugins, resolve_policy
from lukv_bench.registry.catalog import catalog
from lukv_bench.registry.components import Origin, Registry
from lukv_bench.registry.hookspecs import hookimpl
from lukv_bench.registry.task_contract import REQUIRED, Key
from lukv_bench.sample import Sample
from lukv_bench.tasks import BaseTaskType, build_tasks

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ the registry class


class _Thing:
    """A thing."""

    name = "thing"
    aliases = ("stuff",)


def test_registry_names_aliases_conflicts_and_suggestions() -> None:
    reg: Registry = Registry("widget")
    mine, theirs = Origin("mine", "mine-dist", "1.2"), Origin("theirs")
    entry = reg.register(_Thing, mine)
    assert entry is not None and entry.name == "thing" and entry.description == "A thing."
    assert reg.get("THING") is entry and reg.get("stuff") is entry and "Stuff" in reg
    assert reg.register(lambda: 0, mine, name="other_one").name == "other_one"
    assert reg.get("other-one") is not None  # '_' and '-' are alike
    assert reg.register(_Thing, theirs, name="stuff") is None  # an alias is taken too
    assert reg.conflicts[-1].message() == "widget name 'stuff' is already registered by plugin 'mine'"
    assert reg.names() == ["thing", "other_one"] and reg.names(aliases=True) == ["thing", "stuff", "other_one"]
    with pytest.raises(UserError, match=r"unknown widget 'thinq'; did you mean 'thing'\? Known widgets: "):
        reg.lookup("thinq")
    with pytest.raises(TypeError, match="needs a name"):
        reg.register(lambda: 0, mine)
    assert entry.describe() == {"kind": "widget", "name": "thing", "aliases": ["stuff"], "description": "A thing.",
                                "plugin": "mine", "distribution": "mine-dist", "version": "1.2"}


# ------------------------------------------------------------------------------------- provenance


def test_describe_names_every_component_and_its_origin() -> None:
    desc = resolve_policy("streaming").describe()
    assert desc["scorer"] == "recency" and desc["allocator"] == "uniform" and desc["decode"] == "streaming"
    assert desc["params"] == {"sinks": 4}
    for part in ("policy", "scorer", "allocator", "decode"):
        assert desc["components"][part]["plugin"] == "builtin"
        assert desc["components"][part]["distribution"] == "lukv-bench"
        assert desc["components"][part]["version"]
    custom = resolve_policy({"name": "mix", "scorer": "h2o", "allocator": "pyramid", "beta": 4})
    desc = custom.describe()
    assert "policy" not in desc["components"] and desc["plugin"] == ""
    assert desc["components"]["scorer"]["name"] == "h2o" and desc["components"]["allocator"]["name"] == "pyramid"
    assert desc["params"] == {"sinks": 0, "normalize": False, "beta": 4.0, "exact": True}
    json.dumps(desc)


def test_every_kind_is_listed_with_distribution_and_version() -> None:
    kinds = list_components()
    assert set(kinds) == {"scorers", "allocators", "decode_rules", "metrics", "task_types", "policies"}
    assert {"jsonl", "longbench", "lm_eval", "needle"} <= {c["name"] for c in kinds["task_types"]}
    assert {"substring", "qa_f1"} <= {c["name"] for c in kinds["metrics"]}
    assert [c["name"] for c in kinds["decode_rules"]] == ["streaming", "tova"]
    assert all(c["distribution"] == "lukv-bench" for items in kinds.values() for c in items)
    text = format_plugins()
    assert "task type" in text and "decode rule" in text and "lukv-bench" in text
    assert json.loads(format_plugins(json=True))["broken_plugins"] == []


# ---------------------------------------------------------------- plugin task types and metrics


class _EchoTaskType(BaseTaskType):
    """Samples given inline in the suite, scored with a metric."""

    name = "echo"
    keys = {
        "words": Key("list[str]", REQUIRED, help="the answers, one sample each"),
        "metric": Key("metric", "substring"),
        "repeat": Key("int", 1, minimum=1, maximum=5),
    }

    def check(self, task: dict[str, Any], report: Callable[[str, str], None], ctx: Any) -> None:
        if "words" in task and "metric" in task and task["metric"] == "shout" and "quiet" in task["words"]:
            report("words", "'quiet' cannot be shouted")

    def build(self, task: dict[str, Any], suite: Any, tokenizer: Any = None) -> Any:
        return _EchoTask(task["name"], task["metric"], [w * task["repeat"] for w in task["words"]])


@dataclass
class _EchoTask:
    name: str
    metric: str
    words: list[str]
    data_source: str = "inline"

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        for w in self.words[:limit]:
            yield Sample(id=w, context=w, question="?", answers=[w])

    def score(self, prediction: str, sample: Sample) -> float:
        return lukv_bench.tasks.metrics.score(self.metric, prediction, sample)


def _shout(prediction: str, answer: str, sample: Sample) -> float:
    """1.0 when the prediction is the answer in capitals."""
    return float(prediction == answer.upper())


def _echo_plugin() -> types.ModuleType:
    mod = types.ModuleType("echo_plugin")

    @hookimpl
    def register_task_types(register: Callable[..., None]) -> None:
        register(_EchoTaskType)
        register(_EchoTaskType, name="jsonl")  # taken by the built-in: recorded, not replaced

    @hookimpl
    def register_metrics(register: Callable[..., None]) -> None:
        register(_shout, name="shout")

    mod.register_task_types = register_task_types  # type: ignore[attr-defined]
    mod.register_metrics = register_metrics  # type: ignore[attr-defined]
    return mod


@dataclass
class _FakeEntryPoint:
    name: str
    loader: Callable[[], object]

    def load(self) -> object:
        return self.loader()


@pytest.fixture
def echo_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    builtins = [_FakeEntryPoint("builtin", lambda: lukv_bench.policies),
                _FakeEntryPoint("builtin-tasks", lambda: lukv_bench.tasks),
                _FakeEntryPoint("builtin-metrics", lambda: lukv_bench.tasks.metrics)]
    monkeypatch.setattr(plugins, "_entry_points", lambda: [*builtins, _FakeEntryPoint("echo", _echo_plugin)])
    registry.reload_catalog()
    yield
    monkeypatch.undo()
    registry.reload_catalog()


SUITE = """\
name: echo
policies: [full]
budgets: [0.5]
tasks:
  - {name: e, type: echo, words: [hi, yo], metric: shout, repeat: 2}
"""


def test_plugin_task_type_and_metric_in_a_suite(tmp_path: Path, echo_plugin: None) -> None:
    (tmp_path / "s.yaml").write_text(SUITE)
    suite = load_suite(tmp_path / "s.yaml")
    assert suite.tasks[0] == {"name": "e", "type": "echo", "words": ["hi", "yo"], "metric": "shout", "repeat": 2,
                              "limit": None}
    [task] = build_tasks(suite)
    sample = next(task.samples())
    assert sample.answers == ["hihi"] and task.score("HIHI", sample) == 1.0 and task.score("hihi", sample) == 0.0
    assert catalog().task_types.lookup("echo").origin.plugin == "echo"
    assert any("task type name 'jsonl' is already registered by plugin 'builtin-tasks'" in e
               for n, e in registry.broken_plugins() if n == "echo")


def test_plugin_task_type_schema_errors_have_file_line_and_key(tmp_path: Path, echo_plugin: None) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.replace("repeat: 2", "repeat: 9, colour: red").replace("[hi, yo]", "[hi, quiet]")
                    + "  - {name: f, type: echo}\n  - {name: g, type: eco}\n")
    with pytest.raises(UserError) as info:
        load_suite(path)
    msg = str(info.value)
    assert f"{path}:5: tasks[0].repeat: must be <= 5, got 9" in msg
    assert f"{path}:5: tasks[0].colour: unknown key 'colour'" in msg
    assert f"{path}:5: tasks[0].words: 'quiet' cannot be shouted" in msg
    assert f"{path}:6: tasks[1]: missing required key 'words' (the answers, one sample each)" in msg
    assert f"{path}:7: tasks[2].type: got 'eco' (str); allowed: jsonl, longbench, " in msg
    assert "did you mean 'echo'?" in msg
    path.write_text(SUITE.replace("metric: shout", "metric: shot"))
    with pytest.raises(UserError, match=r"tasks\[0\].metric: got 'shot' \(str\); allowed: .*shout.*did you mean"):
        load_suite(path)


def test_task_type_with_a_broken_schema_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bad(_EchoTaskType):
        name = "bad"
        keys = {"x": Key("colour")}

    mod = types.ModuleType("bad_plugin")
    mod.register_task_types = hookimpl(lambda register: register(Bad))  # type: ignore[attr-defined]
    monkeypatch.setattr(plugins, "_entry_points", lambda: [_FakeEntryPoint("bad", lambda: mod)])
    registry.reload_catalog()
    try:
        with pytest.warns(RuntimeWarning, match="unknown type 'colour'"):
            assert "bad" not in catalog().task_types
    finally:
        monkeypatch.undo()
        registry.reload_catalog()


# ----------------------------------------------------------------------------- the import rule


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(
            "lukv_bench.policies"
        ):
            names.add(node.value)  # importlib.import_module("lukv_bench.policies...")
    return names


def test_no_core_module_imports_a_builtin_policy(tmp_path: Path) -> None:
    """Only the plugin loader may name ``lukv_bench.policies``: the core reaches policies through the registry."""
    offenders = []
    for path in sorted((ROOT / "lukv_bench").rglob("*.py")):
        if path.name == "plugins.py" and path.parent.name == "registry":
            continue
        bad = [m for m in _imported_modules(path) if m.split(".")[:2] == ["lukv_bench", "policies"]]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {', '.join(sorted(bad))}")
    assert offenders == []
    # the check itself sees such imports
    probe = textwrap.dedent("""
        from lukv_bench.policies.streaming import streaming_decode_keep
        import importlib
        importlib.import_module("lukv_bench.policies")
    """)
    (tmp_path / "probe.py").write_text(probe)
    found = _imported_modules(tmp_path / "probe.py")
    assert {"lukv_bench.policies.streaming", "lukv_bench.policies"} <= found


def test_cli_plugins_command() -> None:
    from click.testing import CliRunner

    from lukv_bench.cli import main

    res = CliRunner().invoke(main, ["plugins"])
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines()]
    assert any(row[:3] == ["task", "type", "needle"] and "lukv-bench" in row for row in rows)
    assert any(row[:3] == ["decode", "rule", "streaming"] for row in rows)
    data = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).output)
    assert {c["name"] for c in data["components"]["metrics"]} >= {"substring", "code_sim"}
