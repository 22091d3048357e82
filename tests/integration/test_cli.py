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
    "tova": ("tova", "uniform", {}),
    "keydiff": ("keydiff", "uniform", {}),
    "criticalkv": ("critical", "adakv", {"inner": "snapkv", "alpha": 0.2}),
    "defensivekv": ("critical", "adakv", {"inner": "defensive", "alpha": 0.0, "normalize": False}),
    "layer-defensivekv": ("critical", "global", {"inner": "defensive", "min_share": 0.0}),
    "chunkkv": ("chunk", "uniform", {"inner": "snapkv", "size": 10}),
    "expected-attention": ("expected-attention", "uniform", {"future": 512, "skip": 4, "covariance": True}),
    "kvzip": ("kvzip", "uniform", {"chunk": 2048}),
    "kvzip-plus": ("kvzip", "redirected-uncertainty", {"power": -1.0, "head_alpha": 0.2, "chunk": 2048}),
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


# ------------------------------------------------------------------- suite options on the command line


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _cells(records: list[dict]) -> set[tuple[str, str, float]]:
    return {(r["task"], r["policy"], r["budget"]) for r in records}


def test_run_without_a_suite_file_then_a_rerun_that_loads_no_model(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", TINY, "--policies", "snapkv", "--budgets", "0.5", "--task", "passkey", "--limit", "2",
            "--device", "cpu", "--out", "o"]
    res = _invoke(args)
    assert res.exit_code == 0, (res.output, repr(res.exception))
    records = _records(tmp_path / "o")
    assert _cells(records) == {("passkey", "full", 1.0), ("passkey", "snapkv", 0.5),
                               ("passkey:no-context", "full", 1.0)}
    assert len({r["sample_id"] for r in records}) == 2
    err = _stderr(res)
    assert f"0 records already done, {len(records)} to run (4 samples of 2 tasks)" in err
    assert "now passkey: passkey-L" in err and "ETA" in err  # the bar names the sample in flight
    suite = json.loads((tmp_path / "o" / "run.json").read_text())["suite"]
    assert (suite["name"], suite["file"], suite["policies"], suite["device"]) == ("passkey", None, ["snapkv"], "cpu")

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run loaded the model")

    monkeypatch.setattr("lukv_bench.run.session.load_model", no_model)
    again = _invoke(args)
    assert again.exit_code == 0, (again.output, repr(again.exception))
    assert f"all {len(records)} records are already in" in _stderr(again)
    assert _records(tmp_path / "o") == records


def test_options_replace_the_keys_of_a_suite_file(workdir: Path) -> None:
    suite = _suite(workdir)
    out = workdir / "o"
    res = _invoke(["run", str(suite), "--policies", "h2o", "--budgets", "0.6,0.8", "--device", "cpu", "--out",
                   str(out), "--no-progress"])
    assert res.exit_code == 0, (res.output, repr(res.exception))
    assert _cells(_records(out)) == {("d", "full", 1.0), ("d", "h2o", 0.6), ("d", "h2o", 0.8)}
    assert json.loads((out / "run.json").read_text())["suite"]["file"] == str(suite)


def test_bad_options_are_listed_with_the_files_problems_each_naming_its_option(workdir: Path) -> None:
    err = _expect_usage_error(
        ["run", "--policies", "snapkvv,h2o,{name: x}", "--budgets", "0,0.2", "--dtype", "float8", "--out",
         str(workdir / "o")],
        "4 problems in run options", "--policies: policies[0]: unknown policy 'snapkvv'; did you mean 'snapkv'",
        "--policies: policies[2]: unknown policy '{name: x}'", "--budgets: budgets[0]: ratio must be in (0, 1]",
        "--dtype: dtype: got 'float8'",
    )
    assert "Traceback" not in err and not (workdir / "o").exists()
    suite = _suite(workdir, policies="policies: [full, snapkvv, {name: snapkv, kernel: x, nope: 1}]")
    _expect_usage_error(["run", str(suite), "--budgets", "1.5", "--out", str(workdir / "o")],
                        "4 problems in suite file", "--budgets: budgets[0]", f"{suite}:3: policies[1]",
                        f"{suite}:3: policies[2]: policy 'snapkv': parameter 'kernel' must be an integer",
                        f"{suite}:3: policies[2]: policy 'snapkv': unknown parameter 'nope'")


def test_a_run_that_fails_before_its_first_record_leaves_no_folder(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's tokenizer loads (planning needs it) but its weights do not."""
    broken = tmp_path / "broken"
    shutil.copytree(TINY, broken)
    weights = list(broken.glob("*.safetensors"))
    assert weights
    for file in weights:
        file.write_bytes(b"not weights")
    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", str(broken), "--policies", "snapkv", "--budgets", "0.5", "--limit", "1", "--device",
            "cpu", "--no-progress"]
    res = _invoke([*args, "--out", "new/run"])
    assert res.exit_code == 1, (res.output, repr(res.exception))
    assert "0 records already done" in _stderr(res) and not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    res = _invoke([*args, "--out", str(kept)])
    assert res.exit_code == 1
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_no_progress_silences_the_tqdm_bars_of_every_library(tmp_path: Path) -> None:
    """lm-eval's bars pass no ``disable``: tqdm's default must say so before any library imports it (a process)."""
    check = ("from lukv_bench.cli import _hide_progress_bars; _hide_progress_bars(); import tqdm, tqdm.auto; "
             "import sys; sys.exit(0 if tqdm.tqdm(range(2)).disable and tqdm.auto.tqdm(range(2)).disable else 3)")
    res = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
