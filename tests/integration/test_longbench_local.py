"""suites/longbench.yaml's LongBench entry on a local copy of LongBench (``data_dir``), end to end.

The entry is read from the shipped suite and pointed at tests/fixtures/longbench (rows in the hub's
format) and at the tiny model; ``lukv-bench run`` must read the local files, prompt with LongBench's
templates and score with LongBench's metrics, never touching the hub or the offline generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from support import ROOT, TINY

from lukv_bench.cli import main
from lukv_bench.run.results import read_records
from lukv_bench.tasks import metrics

FIXTURES = ROOT / "tests" / "fixtures" / "longbench"
#: LongBench's dataset2metric for the main suite's subsets (a new subset there needs its line here)
LONGBENCH_METRIC = {"hotpotqa": "qa_f1", "qasper": "qa_f1", "lcc": "code_sim_longbench"}


def _main_entries() -> list[dict]:
    """The longbench task entries of the shipped main suite (one per context length)."""
    suite = yaml.safe_load((ROOT / "suites" / "longbench.yaml").read_text())
    entries = [t for t in suite["tasks"] if t["type"] == "longbench"]
    assert entries
    return entries


def _write_suite(folder: Path, entries: list[dict]) -> Path:
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "longbench-local", "model": TINY, "policies": ["full", "snapkv"], "budgets": [0.5],
        "tasks": entries, "window": 8, "device": "cpu",
    }))
    return path


def _rows(subset: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{subset}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("longbench_local")
    entries = [{**e, "data_dir": str(FIXTURES), "max_new_tokens": 6} for e in _main_entries()]  # 6: short on CPU
    res = CliRunner().invoke(main, ["run", str(_write_suite(folder, entries)), "--out", str(folder / "out"),
                                    "--no-progress"])
    assert res.exit_code == 0, (res.output, res.exception)
    return list(read_records(folder / "out" / "results.jsonl"))


def test_the_main_entry_runs_on_the_local_copy(records) -> None:
    entries = _main_entries()
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    tasks = [(e["name"], s) for e in entries for s in e["subsets"]]
    assert set(by_task) == {f"{name}/{s}{c}" for name, s in tasks for c in ("", ":no-context")}
    for name, subset in tasks:
        recs = by_task[f"{name}/{subset}"]
        rows = _rows(subset)
        assert sorted({r["sample_id"] for r in recs}) == sorted(row["_id"] for row in rows)
        assert {(r["policy"], r["budget"]) for r in recs} == {("full", 1.0), ("snapkv", 0.5)}
        assert all(r["data_source"] == f"local: {FIXTURES / f'{subset}.jsonl'} (data_dir)" for r in recs)
        answers = {row["_id"]: row["answers"] for row in rows}
        for r in recs:
            assert r["answers"] == answers[r["sample_id"]]
            assert r["metric"] == LONGBENCH_METRIC[subset]


def test_records_are_scored_with_longbench_metrics(records) -> None:
    from lukv_bench.sample import Sample

    for r in records:
        if r["task"].endswith(":no-context"):
            continue
        sample = Sample(id=r["sample_id"], context="", question="", answers=r["answers"])
        assert r["score"] == pytest.approx(metrics.score(r["metric"], r["prediction"], sample))


def test_a_subset_missing_from_the_local_copy_is_refused_before_the_model_loads(tmp_path) -> None:
    (tmp_path / "lb").mkdir()
    (tmp_path / "lb" / "hotpotqa.jsonl").write_text((FIXTURES / "hotpotqa.jsonl").read_text())
    # relative to the suite's folder; the main job's other subsets (qasper, lcc) are missing
    entries = [{**e, "data_dir": "lb"} for e in _main_entries()]
    entries = [{**entries[0], "subsets": [s for e in entries for s in e["subsets"]]}]  # all subsets in one entry
    assert entries[0]["subsets"][:3] == ["hotpotqa", "qasper", "lcc"]
    res = CliRunner().invoke(main, ["run", str(_write_suite(tmp_path, entries)), "--out", str(tmp_path / "out"),
                                    "--no-progress"])
    assert res.exit_code == 2, (res.output, repr(res.exception))
    assert "subsets[1]" in res.output and f"data_dir {tmp_path / 'lb'} has no qasper.jsonl" in res.output
    assert "subsets[2]" in res.output and f"data_dir {tmp_path / 'lb'} has no lcc.jsonl" in res.output
    assert not (tmp_path / "out" / "results.jsonl").exists()
