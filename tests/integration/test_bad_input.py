"""Malformed suites, data files and output folders through ``lukv-bench run``.

Every case must end with exit code 2 and one message (no traceback) that names the file, the line and
the key at fault, before any model loads (so nothing is written to the output folder). Data-file
cases name both the suite line that points at the file and the line inside the data file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import TINY

from lukv_bench.cli import main

ROW = {"id": "a", "context": "The fox lives in a den. " * 4, "question": "Where?", "answers": ["den"]}
GOOD = (json.dumps(ROW) + "\n").encode()

#: a valid tiny-model suite, one entry per top-level key; cases replace entries (key -> YAML text)
BASE = {
    "name": "name: badinput",
    "model": f"model: {TINY}",
    "policies": "policies: [full, snapkv]",
    "budgets": "budgets: [0.5]",
    "tasks": "tasks:\n  - {name: d, type: jsonl, path: data.jsonl}",
    "generation": "generation: {max_new_tokens: 2}",
    "device": "device: cpu",
}


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:  # click < 8.2 mixes the streams
        return result.output


def write_suite(folder: Path, over: dict[str, str] | None = None, text: str | None = None) -> Path:
    """Write ``suite.yaml``: BASE with entries replaced by ``over`` (None drops one), or ``text`` as is."""
    lines = {**BASE, **(over or {})}
    path = folder / "suite.yaml"
    path.write_text(text if text is not None else "\n".join(v for v in lines.values() if v is not None) + "\n")
    return path


def line_of(path: Path, marker: str, nth: int = 1) -> int:
    """1-based number of the ``nth`` line of ``path`` that contains ``marker``."""
    hits = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if marker in line]
    assert len(hits) >= nth, (marker, path.read_text())
    return hits[nth - 1]


def run_cli(args: list[str]):
    """Invoke ``lukv-bench`` in-process; return (exit code, stderr, result)."""
    res = CliRunner().invoke(main, args)
    return res.exit_code, _stderr(res), res


def assert_user_error(res, code: int, err: str, *needles: str) -> None:
    """Exit 2, a one-message error (no traceback) that contains every needle."""
    assert code == 2, (code, res.output, repr(res.exception))
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and "Traceback" not in err
    # a failure once the run has started follows its status line ("0 records already done, ...")
    assert err.startswith("lukv-bench: error:") or err.split("\n", 1)[1].startswith("lukv-bench: error:"), err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a valid ``data.jsonl``."""
    (tmp_path / "data.jsonl").write_bytes(GOOD)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------------- suite files


@dataclass
class Case:
    """One malformed suite: what to write, where the error is (a marker on the offending line) and what
    the message must say besides the suite path and that line."""

    over: dict[str, str | None] = field(default_factory=dict)
    marker: str = ""  #: text on the offending line of the suite file
    key: str = ""  #: key path the message must name
    needles: tuple[str, ...] = ()
    text: str | None = None  #: the whole suite text (instead of BASE + over)
    nth: int = 1  #: which line with ``marker`` (for duplicated lines)


SUITE_CASES = {
    "not-a-mapping": Case(text="- full\n- snapkv\n", marker="- full", key="<top level>",
                          needles=("a suite file must be a YAML map",)),
    "scalar-document": Case(text="just some words\n", marker="just some words", key="<top level>",
                            needles=("a suite file must be a YAML map",)),
    "duplicate-top-level-key": Case(over={"device": "device: cpu\nwindow: 8\nwindow: 16"}, marker="window: 16",
                                    key="window", needles=("duplicate key",)),
    "duplicate-key-in-task": Case(
        over={"tasks": "tasks:\n  - name: d\n    type: jsonl\n    path: data.jsonl\n    path: data.jsonl"},
        marker="path: data.jsonl", nth=2, key="tasks[0].path", needles=("duplicate key",)),
    "unknown-top-level-key": Case(over={"device": "device: cpu\nwindw: 8"}, marker="windw", key="windw",
                                  needles=("did you mean 'window'",)),
    "policy-is-a-number": Case(over={"policies": "policies: [full, 42]"}, marker="policies", key="policies[1]",
                               needles=("42 (int)",)),
    "policy-map-without-name": Case(over={"policies": "policies: [full, {scorer: h2o}]"}, marker="policies",
                                    key="policies[1]", needles=("needs a 'name' key",)),
    "budgets-empty": Case(over={"budgets": "budgets: []"}, marker="budgets", key="budgets",
                          needles=("non-empty list",)),
    "budgets-duplicate-ratio": Case(over={"budgets": "budgets: [0.5, 0.5]"}, marker="budgets", key="budgets[1]",
                                    needles=("duplicate budget",)),
    "budgets-duplicate-tokens": Case(over={"budgets": "budgets: {tokens: [64, 64]}"}, marker="budgets",
                                     key="budgets.tokens[1]", needles=("duplicate budget 64",)),
    "budgets-negative-tokens": Case(over={"budgets": "budgets: {tokens: [-5]}"}, marker="budgets",
                                    key="budgets.tokens[0]", needles=("must be >= 1, got -5",)),
    "budget-tokens-not-above-window": Case(over={"budgets": "budgets: {tokens: [16, 64]}"}, marker="budgets",
                                           key="budgets.tokens[0]", needles=("observation window (32)",)),
    "window-zero": Case(over={"device": "device: cpu\nwindow: 0"}, marker="window", key="window",
                        needles=("must be >= 1, got 0",)),
    "window-negative": Case(over={"device": "device: cpu\nwindow: -4"}, marker="window", key="window",
                            needles=("must be >= 1, got -4",)),
    "unknown-task-type": Case(over={"tasks": "tasks:\n  - {name: d, type: jsonll, path: data.jsonl}"},
                              marker="jsonll", key="tasks[0].type", needles=("'jsonll'", "allowed: jsonl")),
    "limit-zero": Case(over={"device": "device: cpu\nlimit: 0"}, marker="limit", key="limit",
                       needles=("must be >= 1, got 0",)),
    "task-limit-zero": Case(over={"tasks": "tasks:\n  - {name: d, type: jsonl, path: data.jsonl, limit: 0}"},
                            marker="limit: 0", key="tasks[0].limit", needles=("must be >= 1, got 0",)),
    "truncate-unknown-mode": Case(over={"device": "device: cpu\ntruncate: left"}, marker="truncate",
                                  key="truncate", needles=("allowed: middle, error, none",)),
    "task-max-new-tokens-zero": Case(
        over={"tasks": "tasks:\n  - {name: d, type: jsonl, path: data.jsonl, max_new_tokens: 0}"},
        marker="max_new_tokens: 0", key="tasks[0].max_new_tokens", needles=("must be >= 1",)),
    "needle-with-compress": Case(
        over={"tasks": "tasks:\n  - name: n\n    type: needle\n    lengths: [64]\n    compress: context"},
        marker="compress", key="tasks[0].compress", needles=("suite-level setting",)),
    "needle-with-metric": Case(
        over={"tasks": "tasks:\n  - name: n\n    type: needle\n    lengths: [64]\n    metric: qa_f1"},
        marker="metric", key="tasks[0].metric", needles=("pass key appears in the answer",)),
    "duplicate-task-name": Case(
        over={"tasks": "tasks:\n  - {name: d, type: jsonl, path: data.jsonl}\n  - {name: d, type: needle}"},
        marker="type: needle", key="tasks[1].name", needles=("duplicate task name 'd'",)),
    "generation-negative": Case(over={"generation": "generation: {max_new_tokens: -1}"}, marker="generation",
                                key="generation.max_new_tokens", needles=("must be >= 1",)),
}


@pytest.mark.parametrize("case", SUITE_CASES.values(), ids=list(SUITE_CASES))
def test_malformed_suite(workdir: Path, case: Case) -> None:
    suite = write_suite(workdir, case.over, case.text)
    line = line_of(suite, case.marker, case.nth)
    code, err, res = run_cli(["run", str(suite), "--out", str(workdir / "out")])
    assert_user_error(res, code, err, f"{suite}:{line}: {case.key}:", *case.needles)
    assert not (workdir / "out").exists()


# ------------------------------------------------------------------------------------ data files


@dataclass
class DataCase:
    """A malformed JSONL file (bytes; None makes a folder of that name) and what the message says."""

    data: bytes | None
    data_line: int | None  #: line inside the data file the message must name (None: the file only)
    needles: tuple[str, ...]


DATA_CASES = {
    "empty-file": DataCase(b"", None, ("the file is empty",)),
    "blank-lines-only": DataCase(b"\n  \n\n", None, ("the file is empty",)),
    "utf8-bom": DataCase(b"\xef\xbb\xbf" + GOOD, 1, ("byte-order mark",)),
    "not-utf8": DataCase(GOOD + b'{"context": "caf\xe9", "question": "q", "answers": ["a"]}\n', 2,
                         ("not UTF-8", "0xe9")),
    "row-without-answers": DataCase(GOOD + b'{"id": "b", "context": "c", "question": "q"}\n', 2,
                                    ("missing field(s) answers",)),
    "bad-json-row": DataCase(GOOD + b"\n{not json\n", 3, ("invalid JSON",)),
    "row-not-an-object": DataCase(b"[1, 2]\n", 1, ("expected a JSON object",)),
    "duplicate-row-id": DataCase(GOOD + GOOD, 2, ("duplicate id 'a'",)),
    "data-path-is-a-folder": DataCase(None, None, ("is a folder",)),
}


@pytest.mark.parametrize("case", DATA_CASES.values(), ids=list(DATA_CASES))
def test_malformed_data_file(workdir: Path, case: DataCase) -> None:
    data = workdir / "bad.jsonl"
    if case.data is None:
        data.mkdir()
    else:
        data.write_bytes(case.data)
    suite = write_suite(workdir, {"tasks": "tasks:\n  - {name: d, type: jsonl, path: bad.jsonl}"})
    where = f"{data}:{case.data_line}:" if case.data_line else f"{data}:"
    code, err, res = run_cli(["run", str(suite), "--out", str(workdir / "out")])
    assert_user_error(res, code, err, f"{suite}:{line_of(suite, 'bad.jsonl')}: tasks[0].path:", where, *case.needles)
    assert not (workdir / "out").exists()


def test_unreadable_data_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be opened (permission denied; simulated, since root may read anything)."""
    data = workdir / "locked.jsonl"
    data.write_bytes(GOOD)
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == data:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    suite = write_suite(workdir, {"tasks": "tasks:\n  - {name: d, type: jsonl, path: locked.jsonl}"})
    code, err, res = run_cli(["run", str(suite), "--out", str(workdir / "out")])
    assert_user_error(res, code, err, f"{suite}:6: tasks[0].path:", str(data), "Permission denied", "permissions")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_data_file_for_real(workdir: Path) -> None:
    data = workdir / "locked.jsonl"
    data.write_bytes(GOOD)
    data.chmod(0)
    try:
        suite = write_suite(workdir, {"tasks": "tasks:\n  - {name: d, type: jsonl, path: locked.jsonl}"})
        code, err, res = run_cli(["run", str(suite), "--out", str(workdir / "out")])
        assert_user_error(res, code, err, f"{suite}:6: tasks[0].path:", str(data), "cannot read the file")
    finally:
        data.chmod(0o644)


# -------------------------------------------------------------------------------- output folders


def test_out_folder_is_a_file(workdir: Path) -> None:
    suite = write_suite(workdir)
    (workdir / "out").write_text("not a folder\n")
    code, err, res = run_cli(["run", str(suite), "--out", str(workdir / "out")])
    assert_user_error(res, code, err, f"--out {workdir / 'out'}", "is a file")
    assert (workdir / "out").read_text() == "not a folder\n"


def test_default_out_folder_under_a_file(workdir: Path) -> None:
    """The default ``results/<suite name>`` cannot be created when ``results`` is a file."""
    suite = write_suite(workdir)
    (workdir / "results").write_text("")
    code, err, res = run_cli(["run", str(suite)])
    assert_user_error(res, code, err, str(Path("results") / "badinput"), "results is a file", "--out")


# -------------------------------------------------------------------- found once the model is loaded


def test_context_over_the_model_limit_under_truncate_error(workdir: Path) -> None:
    """The tiny model has 4,096 positions and one token per byte: a 5,000-byte context cannot fit."""
    row = {"id": "long", "context": "The fox lives in a den. " * 210, "question": "Where?", "answers": ["den"]}
    (workdir / "long.jsonl").write_text(json.dumps(row) + "\n")
    suite = write_suite(workdir, {
        "tasks": "tasks:\n  - {name: d, type: jsonl, path: long.jsonl}",
        "device": "device: cpu\ntruncate: error",
    })
    code, err, res = run_cli(["run", str(suite), "--out", str(workdir / "out"), "--no-progress"])
    assert_user_error(res, code, err, f"{suite}:{line_of(suite, 'truncate')}: truncate", "task 'd'",
                      "sample 'long'", "4096", "truncate: middle")
    results = workdir / "out" / "results.jsonl"
    assert not results.exists() or results.read_text() == ""


def test_results_folder_of_another_suite(workdir: Path) -> None:
    """Rerunning into a folder whose run.json holds other settings stops, naming run.json and the keys."""
    out = workdir / "out"
    first = write_suite(workdir)
    code, err, res = run_cli(["run", str(first), "--out", str(out), "--no-progress"])
    assert code == 0, (err, repr(res.exception))
    before = (out / "results.jsonl").read_bytes()
    other = write_suite(workdir, {"device": "device: cpu\nwindow: 8"})
    code, err, res = run_cli(["run", str(other), "--out", str(out), "--no-progress"])
    assert_user_error(res, code, err, str(out / "run.json"), "window")
    assert (out / "results.jsonl").read_bytes() == before
