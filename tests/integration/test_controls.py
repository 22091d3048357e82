"""No-context controls: the runner adds `<task>:no-context` FullKV records, the report shows and flags them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import TINY

from lukv_bench.cli import main
from lukv_bench.report.summary import findings, summarize
from lukv_bench.run.results import read_records


def _suite(folder: Path, jsonl_control: str = "") -> Path:
    rows = [{"id": f"s{i}", "context": f"Record {i}: the fox crossed the river at dawn. " * 4,
             "question": "Which animal crossed?", "answers": ["fox"]} for i in range(2)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = folder / "suite.yaml"
    path.write_text(
        f"name: controls\nmodel: {TINY}\npolicies: [full, snapkv]\nbudgets: [0.3, 0.6]\n"
        "tasks:\n"
        f"  - {{name: facts, type: jsonl, path: data.jsonl{jsonl_control}}}\n"
        "  - {name: hay, type: needle, lengths: [120], depths: [0.5]}\n"
        "generation: {max_new_tokens: 4}\nwindow: 8\ndevice: cpu\n"
    )
    return path


def _run(suite: Path, out: Path) -> list[dict]:
    res = CliRunner().invoke(main, ["run", str(suite), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, (res.output, res.exception)
    return list(read_records(out / "results.jsonl"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A jsonl task with `control: true` and a needle task (control on by default) on the tiny model."""
    folder = tmp_path_factory.mktemp("controls")
    out = folder / "out"
    return out, _run(_suite(folder, ", control: true"), out)


def test_control_is_one_fullkv_record_per_sample_without_context(run) -> None:
    _, records = run
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    assert set(by_task) == {"facts", "facts:no-context", "hay", "hay:no-context"}
    for task in ("facts", "hay"):
        ctrl, main_recs = by_task[f"{task}:no-context"], by_task[task]
        assert {r["policy"] for r in ctrl} == {"full"}
        assert sorted(r["sample_id"] for r in ctrl) == sorted({r["sample_id"] for r in main_recs})
        assert all(r["meta"]["control"] == "no-context" for r in ctrl)
        full = {r["sample_id"]: r for r in main_recs if r["policy"] == "full"}
        for r in ctrl:  # the same question, without the context: a much shorter prompt
            assert r["context_tokens"] < full[r["sample_id"]]["context_tokens"] - 50
            assert r["answers"] == full[r["sample_id"]]["answers"]


def test_jsonl_has_no_control_unless_asked(tmp_path: Path) -> None:
    records = _run(_suite(tmp_path), tmp_path / "out")
    assert {r["task"] for r in records} == {"facts", "hay", "hay:no-context"}


def test_bad_control_value_is_a_user_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["run", str(_suite(tmp_path, ", control: sometimes")), "--out",
                                    str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 2 and "control" in res.output


def test_report_shows_the_control_next_to_fullkv(run) -> None:
    out, _ = run
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    text = (out / "report.md").read_text()
    assert "## Task `facts:no-context`" not in text  # the control joins its task's section
    section = text.split("## Task `facts`")[1].split("## Task")[0]
    assert "no-context control (FullKV)" in section


def _records(full: list[float], control: list[float]) -> list[dict]:
    recs = [{"model": "m", "task": "t", "sample_id": str(i), "policy": "full", "budget": 1.0, "score": s,
             "metric": "substring"} for i, s in enumerate(full)]
    recs += [{"model": "m", "task": "t", "sample_id": str(i), "policy": "snapkv", "budget": 0.2, "score": s,
              "metric": "substring"} for i, s in enumerate(full)]
    recs += [{"model": "m", "task": "t:no-context", "sample_id": str(i), "policy": "full", "budget": 1.0,
              "score": s, "metric": "substring"} for i, s in enumerate(control)]
    return recs


def test_flag_when_fullkv_is_not_clearly_above_the_control() -> None:
    (memory,) = summarize(_records([1, 1, 0, 1, 0, 1, 1, 0], [1, 1, 0, 0, 0, 1, 1, 0]))
    assert memory.control is not None and memory.control.n == 8
    assert memory.answers_from_memory
    assert any("may answer from memory" in f for f in findings(memory))
    (context,) = summarize(_records([1] * 10, [0] * 10))
    assert not context.answers_from_memory
    assert context.full_vs_control is not None and context.full_vs_control.diff == 1.0
    assert not any("may answer from memory" in f for f in findings(context))


def test_flag_when_fullkv_barely_uses_the_context() -> None:
    (blind,) = summarize(_records([1, 0, 0, 0, 0, 0], [0] * 6))
    assert blind.answers_from_memory  # the interval of FullKV - control reaches 0
    text = " ".join(findings(blind))
    assert "not clearly above the no-context control" in text and "rarely uses the context" in text
