"""``lukv-bench compare``: two small runs of the tiny model through the CLI, paired only on the (task, sample)s
they share; hand-written results for the numbers; bad input exits 2 naming the folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import ROOT, TINY

from lukv_bench.cli import main
from lukv_bench.errors import UserError
from lukv_bench.report import plots
from lukv_bench.report.compare import PARETO_PNG, compare, load_arms, pareto_lines
from lukv_bench.report.plots import ParetoPoint
from lukv_bench.runtime.contract import FULL

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(sid: str) -> dict:
    return {"id": sid, "context": f"Sample {sid}: the fox lives in a den near the river. " * 3,
            "question": "Where does the fox live?", "answers": ["den"]}


def _run(folder: Path, name: str, tasks: dict[str, list[str]], budgets: str) -> Path:
    """Run a tiny-model suite with one JSONL task per ``tasks`` entry (task -> sample ids) into folder/name."""
    lines = [f"name: {name}", f"model: {TINY}", "policies: [full, snapkv]", f"budgets: {budgets}", "tasks:"]
    for task, ids in tasks.items():
        data = folder / f"{name}-{task}.jsonl"
        data.write_text("".join(json.dumps(_row(i)) + "\n" for i in ids))
        lines.append(f"  - {{name: {task}, type: jsonl, path: {data.name}}}")
    lines += ["generation: {max_new_tokens: 2}", "window: 4"]
    suite = folder / f"{name}.yaml"
    suite.write_text("\n".join(lines) + "\n")
    out = folder / name
    res = CliRunner().invoke(main, ["run", str(suite), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Run A: task d on a, b, c at budget 0.5. Run B: task d on b, c, e at budgets 0.5 and 0.25, and task x."""
    folder = tmp_path_factory.mktemp("runs")
    a = _run(folder, "run-a", {"d": ["a", "b", "c"]}, "[0.5]")
    b = _run(folder, "run-b", {"d": ["b", "c", "e"], "x": ["a"]}, "[0.5, 0.25]")
    return a, b


def test_compare_two_runs_pairs_only_shared_task_and_sample(runs, tmp_path):
    a, b = runs
    out = tmp_path / "cmp"
    res = CliRunner().invoke(main, ["compare", str(a), str(b), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(out / "compare.md")
    c = compare(load_arms([a, b]))
    assert [arm.label for arm in c.arms] == ["run-a", "run-b"]  # one model: no model in the labels
    assert [(r.task, r.policy, r.budget) for r in c.rows] == [("d", FULL, "—"), ("d", "snapkv", "0.5")]
    assert all(sorted(r.samples) == ["b", "c"] for r in c.rows)
    # the same model on the same samples: the same scores and memory, so every paired difference is a tie
    snap = c.rows[1]
    assert snap.arms[0].score == snap.arms[1].score
    assert snap.arms[1].vs_base is not None and snap.arms[1].vs_base.ties == 2
    assert snap.arms[0].kv == pytest.approx(snap.arms[1].kv) and 0.3 < snap.arms[0].kv < 0.7
    assert any("task(s) `x`" in line for line in c.not_compared)
    assert any("snapkv @ 0.25: not run by run-a" in line for line in c.not_compared)
    md = (out / "compare.md").read_text()
    assert "| policy | budget | samples | run-a score |" in md and "run-b Δ vs run-a" in md
    with (out / "compare.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert {(r["task"], r["policy"], r["run"], r["samples"]) for r in table} == {
        ("d", p, run, "2") for p in ("FullKV", "snapkv") for run in ("run-a", "run-b")}


def _write(folder: Path, model: str, rows: list[tuple[str, str, float | None, float, float]]) -> Path:
    """A results folder of hand-written records: (sample, policy, budget, score, kv ratio)."""
    folder.mkdir(parents=True)
    recs = [{"model": model, "task": "qa", "sample_id": sid, "policy": pol, "budget": 1.0 if b is None else b,
             "score": sc, "metric": "exact", "kv_bytes": kv * 100, "kv_bytes_full": 100, "budget_ratio": kv}
            for sid, pol, b, sc, kv in rows]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


@pytest.fixture()
def hand(tmp_path) -> tuple[Path, Path]:
    """A on s0..s3, B on s1..s4 (other model): shared s1, s2, s3."""
    a = _write(tmp_path / "A", "m-a", [(f"s{i}", FULL, None, sc, 1.0) for i, sc in enumerate([1, 1, 1, 0])]
               + [(f"s{i}", "snapkv", 0.2, sc, 0.2) for i, sc in enumerate([1, 0, 1, 0])])
    b = _write(tmp_path / "B", "m-b", [(f"s{i}", FULL, None, 1.0, 1.0) for i in range(1, 5)]
               + [(f"s{i}", "snapkv", 0.2, sc, 0.25) for i, sc in zip(range(1, 5), [1, 1, 0, 1], strict=True)])
    return a, b


def test_compare_numbers_on_shared_samples_by_hand(hand):
    c = compare(load_arms(list(hand)))
    assert [arm.label for arm in c.arms] == ["A (m-a)", "B (m-b)"]  # the models differ: named
    full, snap = c.rows
    assert full.samples == snap.samples == ["s1", "s2", "s3"]
    # FullKV: A 1, 1, 0; B 1, 1, 1
    assert [ac.score for ac in full.arms] == pytest.approx([2 / 3, 1.0])
    # snapkv: A 0, 1, 0 (retained 1 / 2); B 1, 1, 0 (retained 2 / 3)
    assert [ac.score for ac in snap.arms] == pytest.approx([1 / 3, 2 / 3])
    assert [ac.point.retained for ac in snap.arms] == pytest.approx([0.5, 2 / 3])
    assert [ac.kv for ac in snap.arms] == pytest.approx([0.2, 0.25])
    pair = snap.arms[1].vs_base
    assert (pair.n, pair.diff, pair.wins, pair.losses, pair.ties) == (3, pytest.approx(1 / 3), 1, 0, 2)
    assert pair.method == "sign test" and pair.p == pytest.approx(1.0)
    assert pair.p_adj is not None and "vs A (m-a)" in (pair.family or "")
    lines = pareto_lines(c, "qa")
    assert lines[0][1] == [ParetoPoint("FullKV", 1.0, 1.0, 3)]
    assert [[(q.kv, q.retained) for q in pts] for _, pts in lines[1:]] == [
        [(pytest.approx(0.2), pytest.approx(0.5))], [(pytest.approx(0.25), pytest.approx(2 / 3))]]


def test_compare_writes_the_pareto_png(hand, tmp_path):
    res = CliRunner().invoke(main, ["compare", *map(str, hand), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    png = tmp_path / "o" / "plots" / PARETO_PNG
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert f"](plots/{PARETO_PNG})" in (tmp_path / "o" / "compare.md").read_text()
    assert plots.owned_plots(png.parent) == []  # a report rendered into the same folder leaves it alone


def test_bad_input_exits_2_naming_the_folder(hand, tmp_path):
    a, b = hand
    one = CliRunner().invoke(main, ["compare", str(a), "--out", str(tmp_path / "o")])
    assert one.exit_code == 2 and "at least two result folders (got 1)" in one.output
    nowhere = tmp_path / "nowhere"
    res = CliRunner().invoke(main, ["compare", str(a), str(nowhere), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and f"{nowhere}: no results.jsonl" in res.output
    twice = CliRunner().invoke(main, ["compare", str(a), str(a), "--out", str(tmp_path / "o")])
    assert twice.exit_code == 2 and "given twice" in twice.output
    other = _write(tmp_path / "C", "m-a", [("z9", FULL, None, 1.0, 1.0)])
    with pytest.raises(UserError, match="no task and sample is scored by every run") as err:
        compare(load_arms([a, other]))
    assert str(other) in str(err.value)
    res = CliRunner().invoke(main, ["compare", str(a), str(other), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "compare runs of suites that share tasks and samples" in res.output


def test_compare_on_the_two_committed_protocol_runs(tmp_path: Path) -> None:
    """docs/results/multikey-prompt vs multikey-context (committed records): every cell of both is paired."""
    runs = [ROOT / "docs" / "results" / name for name in ("multikey-prompt", "multikey-context")]
    res = CliRunner().invoke(main, ["compare", *map(str, runs), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "cmp" / "compare.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| layer-uncertainty-plus | 0.2 |")]
    assert len(rows) == 1 and "| 12 |" in rows[0]  # paired on all 12 shared samples
    assert "Not compared" not in text
    assert (tmp_path / "cmp" / "plots" / "compare-pareto.png").stat().st_size > 0
