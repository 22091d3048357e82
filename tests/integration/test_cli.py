"""The ``lukv-bench`` command line: help texts, the policy listing, and exit code 2 with a message that
names the file and key for every kind of bad input (README "Exit codes").

Most cases use click's CliRunner (in-process, fast); a few run the installed console script in a
subprocess from a temporary working directory to check the real process exit codes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import TINY

from lukv_bench.cli import main

BUILTINS = {
    # name: (scorer, allocator, README defaults that must be present)
    "full": ("recency", "full", {}),
    "random": ("random", "uniform", {"seed": 0}),
    "streaming": ("recency", "uniform", {"sinks": 4}),
    "h2o": ("h2o", "uniform", {"normalize": False}),
    "snapkv": ("snapkv", "uniform", {"kernel": 7, "pooling": "max"}),
    "pyramidkv": ("snapkv", "pyramid", {"beta": 20}),
    "adakv": ("snapkv", "adakv", {"alpha": 0.2}),
    "layer-uncertainty": ("snapkv", "layer-uncertainty", {"tau": 0.9, "floor_ratio": 0.2}),
    "cake": ("cake", "cake", {"gamma": 200, "tau1": 1, "tau2": 1}),
    "layer-uncertainty-plus": ("snapkv", "redirected-uncertainty", {"power": -1.0, "head_alpha": 0.2, "kernel": 15}),
}

DATA_ROW = {"id": "a", "context": "The fox lives in a den. " * 4, "question": "Where?", "answers": ["den"]}


def _script() -> list[str]:
    """The installed console script (next to the interpreter), else an equivalent ``python -c``."""
    exe = Path(sys.executable).with_name("lukv-bench")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("lukv-bench")
    return [found] if found else [sys.executable, "-c", "from lukv_bench.cli import main; main()"]


def _run_subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([*_script(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:  # click < 8.2 mixes the streams
        return result.output


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A folder with a valid data file and a helper to write suites next to it."""
    (tmp_path / "data.jsonl").write_text(json.dumps(DATA_ROW) + "\n")
    return tmp_path


def _suite(folder: Path, name: str = "suite.yaml", **over: str) -> Path:
    """Write a valid tiny-model suite, with whole lines replaced by ``over`` (key -> YAML line)."""
    lines = {
        "name": "name: clitest",
        "model": f"model: {TINY}",
        "policies": "policies: [full, snapkv]",
        "budgets": "budgets: [0.5]",
        "tasks": "tasks:\n  - {name: d, type: jsonl, path: data.jsonl}",
        "generation": "generation: {max_new_tokens: 2}",
    }
    lines.update(over)
    path = folder / name
    path.write_text("\n".join(lines.values()) + "\n")
    return path


# --------------------------------------------------------------------------------------------- help


def test_help_and_every_subcommand_help_exit_zero(tmp_path: Path) -> None:
    top = _run_subprocess(["--help"], tmp_path)
    assert top.returncode == 0, top.stderr
    assert {"run", "policies", "report", "profile"} <= set(main.commands)
    for name in main.commands:
        assert name in top.stdout
        res = _invoke([name, "--help"])
        assert res.exit_code == 0, (name, res.output)
        assert f"Usage: main {name}" in res.output or f"{name} [OPTIONS]" in res.output
    assert "--out" in _invoke(["run", "--help"]).output
    assert "--json" in _invoke(["policies", "--help"]).output


# ----------------------------------------------------------------------------------------- policies


def test_policies_json_lists_the_nine_builtins() -> None:
    res = _invoke(["policies", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    builtins = {p["name"]: p for p in data["policies"] if p["plugin"] == "builtin"}
    assert set(builtins) == set(BUILTINS)
    for name, (scorer, allocator, defaults) in BUILTINS.items():
        p = builtins[name]
        assert {"scorer", "allocator", "params", "plugin"} <= set(p), name
        assert (p["scorer"], p["allocator"]) == (scorer, allocator), name
        assert isinstance(p["params"], dict)
        for key, value in defaults.items():
            assert p["params"][key] == value, (name, key, p["params"])
    assert "zigzag" in builtins["layer-uncertainty"]["aliases"]
    assert data["broken_plugins"] == []
    # every policy's scorer and allocator is itself listed
    scorers = {s["name"] for s in data["scorers"]}
    allocators = {a["name"] for a in data["allocators"]}
    for p in data["policies"]:
        assert p["scorer"] in scorers and p["allocator"] in allocators, p["name"]


def test_policies_table_names_every_builtin() -> None:
    res = _invoke(["policies"])
    assert res.exit_code == 0
    for name in BUILTINS:
        assert name in res.output
    assert "Policy parameters (defaults)" in res.output


# ---------------------------------------------------------------------------------------- bad input


def _expect_usage_error(args: list[str], *needles: str) -> str:
    res = _invoke(args)
    err = _stderr(res)
    assert res.exit_code == 2, (res.exit_code, res.output, repr(res.exception))
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_malformed_yaml_names_file_and_line(workdir: Path) -> None:
    bad = _suite(workdir, policies="policies: [full, snapkv")
    err = _expect_usage_error(["run", str(bad), "--out", str(workdir / "o")], f"{bad}:", "invalid YAML")
    assert f"{bad}:4:" in err  # the parser trips on the line after the unclosed list
    assert not (workdir / "o").exists()


def test_unknown_policy_suggests_close_match(workdir: Path) -> None:
    suite = _suite(workdir, policies="policies: [full, snapkvv]")
    err = _expect_usage_error(
        ["run", str(suite), "--out", str(workdir / "o")], f"{suite}:3", "policies[1]", "'snapkvv'"
    )
    assert "did you mean 'snapkv'" in err


@pytest.mark.parametrize("policies", ["[full, layer-uncertainty, zigzag]", "[full, snapkv, {name: snapkv, kernel: 5}]"])
def test_two_policies_with_one_name(workdir: Path, policies: str) -> None:
    """Records are keyed by policy name: a second entry with the same name must not vanish silently."""
    suite = _suite(workdir, policies=f"policies: {policies}")
    _expect_usage_error(["run", str(suite), "--out", str(workdir / "o")], f"{suite}:3", "policies[2]",
                        "policies[1]", "already used")


@pytest.mark.parametrize("budgets", ["[-0.1]", "[0]", "[1.5]", "{tokens: [0]}", "[]"])
def test_impossible_budget(workdir: Path, budgets: str) -> None:
    suite = _suite(workdir, budgets=f"budgets: {budgets}")
    _expect_usage_error(["run", str(suite), "--out", str(workdir / "o")], f"{suite}:4", "budgets")


def test_missing_data_file(workdir: Path) -> None:
    suite = _suite(workdir, tasks="tasks:\n  - {name: d, type: jsonl, path: nowhere.jsonl}")
    _expect_usage_error(
        ["run", str(suite), "--out", str(workdir / "o")], f"{suite}:6", "tasks[0].path", "file not found",
        str(workdir / "nowhere.jsonl"),
    )


def test_bad_data_row_names_file_and_line(workdir: Path) -> None:
    data = workdir / "rows.jsonl"
    data.write_text(json.dumps(DATA_ROW) + "\n" + json.dumps({"context": "x", "question": "y"}) + "\n")
    suite = _suite(workdir, tasks="tasks:\n  - {name: d, type: jsonl, path: rows.jsonl}")
    _expect_usage_error(["run", str(suite), "--out", str(workdir / "o")], str(data), "2", "answers")


def test_unknown_task_type(workdir: Path) -> None:
    suite = _suite(workdir, tasks="tasks:\n  - {name: d, type: jsonll, path: data.jsonl}")
    _expect_usage_error(
        ["run", str(suite), "--out", str(workdir / "o")], f"{suite}:6", "tasks[0].type", "'jsonll'", "jsonl"
    )


def test_missing_model_folder(workdir: Path) -> None:
    suite = _suite(workdir, model="model: ./no-such-model")
    _expect_usage_error(
        ["run", str(suite), "--out", str(workdir / "o")], f"{suite}:2", "model", str(workdir / "no-such-model")
    )


def test_model_folder_without_config(workdir: Path) -> None:
    (workdir / "empty-model").mkdir()
    suite = _suite(workdir, model="model: ./empty-model")
    _expect_usage_error(["run", str(suite), "--out", str(workdir / "o")], "empty-model", "config.json")


def test_model_override_path_missing(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    suite = _suite(workdir)
    _expect_usage_error(["run", str(suite), "--model", "./gone", "--out", "o"], "--model", "gone")


def test_several_problems_reported_together(workdir: Path) -> None:
    suite = _suite(workdir, budgets="budgets: [0]", tasks="tasks:\n  - {name: d, type: nope}")
    err = _expect_usage_error(["run", str(suite)], "2 problems", "budgets[0]", "tasks[0].type")
    assert err.index("budgets[0]") < err.index("tasks[0].type")  # listed in file order


def test_report_without_results(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _expect_usage_error(["report", str(tmp_path / "empty")], "results.jsonl", "not found")
    _expect_usage_error(["report", str(tmp_path / "absent")])  # click: folder does not exist


def test_real_exit_codes_from_subprocess(workdir: Path) -> None:
    """The console script itself exits 2 on bad input, with one line and no traceback.

    (Exit 0 of a real ``run`` subprocess is checked by the durability test in test_run_e2e.py.)
    """
    bad = _suite(workdir, name="bad.yaml", policies="policies: [full, h2o0]")
    res = _run_subprocess(["run", "bad.yaml", "--out", "o"], workdir)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("lukv-bench: error:") and str(bad) in res.stderr
    assert "Traceback" not in res.stderr and "did you mean 'h2o'" in res.stderr
    assert not (workdir / "o").exists()
