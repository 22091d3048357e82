"""The benchmark regression gate (benchmarks/gate.py): it passes within tolerance and fails beyond it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATE = ROOT / "benchmarks" / "gate.py"


def _gate_module():
    spec = importlib.util.spec_from_file_location("lukv_bench_gate", GATE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results(path: Path, ratios: dict[str, float | None]) -> Path:
    """A minimal pytest-benchmark --benchmark-json file; None: a benchmark that sets no ratio."""
    benches = [
        {"name": n, "extra_info": {} if r is None else {"ratio": r, "ratio_desc": f"{n} / reference"}}
        for n, r in ratios.items()
    ]
    path.write_text(json.dumps({"machine_info": {"cpu_model": "test cpu", "cores": 2}, "benchmarks": benches}))
    return path


def _baseline(path: Path, entries: dict[str, dict]) -> Path:
    path.write_text(json.dumps({"machine": {"cpu": "test cpu"}, "benchmarks": entries}))
    return path


def _run(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GATE), *map(str, args)], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    return _baseline(
        tmp_path / "baseline.json",
        {
            "test_a[1]": {"ratio": 1.0, "tolerance": 0.5},
            "test_b": {"ratio": 2.0, "tolerance": 0.3},
            "test_gpu": {"ratio": 0.1, "tolerance": 0.5, "optional": True},
        },
    )


def test_passes_within_tolerance(tmp_path: Path, baseline: Path) -> None:
    # worse, but inside the tolerance; better; an optional entry absent; a new and an unratioed benchmark
    res = _results(tmp_path / "r.json", {"test_a[1]": 1.49, "test_b": 1.0, "test_new": 3.0, "test_plain": None})
    proc = _run(res, "--baseline", baseline)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gate: passed" in proc.stdout
    assert "test_new" in proc.stdout and "not in baseline" in proc.stdout
    assert "missing (optional)" in proc.stdout
    assert "test_plain" not in proc.stdout


def test_fails_beyond_tolerance_naming_everything(tmp_path: Path, baseline: Path) -> None:
    res = _results(tmp_path / "r.json", {"test_a[1]": 1.51, "test_b": 2.5})
    proc = _run(res, "--baseline", baseline)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSED" in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip().startswith("test_a[1]")]
    assert len(lines) == 1
    assert "1.510" in lines[0] and "baseline 1.000" in lines[0] and "+50%" in lines[0] and "limit 1.500" in lines[0]
    assert "test_b" not in proc.stderr  # 2.5 <= 2.0 * 1.3
    assert "--update" in proc.stderr  # says how to refresh on purpose


def test_missing_required_entry_fails(tmp_path: Path, baseline: Path) -> None:
    proc = _run(_results(tmp_path / "r.json", {"test_a[1]": 1.0}), "--baseline", baseline)
    assert proc.returncode == 1
    assert "test_b: in the baseline (ratio 2.000) but not in this run" in proc.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not readable JSON"),
        ('{"benchmarks": {}}', "no 'benchmarks' list"),
        ('{"benchmarks": [{"name": "x", "extra_info": {"ratio": -1}}]}', "must be a positive number"),
    ],
)
def test_bad_results_file_exits_2(tmp_path: Path, baseline: Path, content: str, message: str) -> None:
    bad = tmp_path / "r.json"
    bad.write_text(content)
    proc = _run(bad, "--baseline", baseline)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_bad_or_empty_baseline_exits_2(tmp_path: Path) -> None:
    res = _results(tmp_path / "r.json", {"test_a[1]": 1.0})
    bad = _baseline(tmp_path / "bad.json", {"test_a[1]": {"ratio": 1.0}})
    proc = _run(res, "--baseline", bad)
    assert proc.returncode == 2 and "'tolerance'" in proc.stderr
    proc = _run(res, "--baseline", tmp_path / "none.json")
    assert proc.returncode == 2 and "--update" in proc.stderr


def test_update_takes_median_noise_and_tolerance(tmp_path: Path, baseline: Path) -> None:
    runs = [
        _results(tmp_path / f"r{i}.json", {"test_a[1]": a, "test_new": 2 * a, "test_b": b})
        for i, (a, b) in enumerate([(1.0, 1.0), (1.2, 1.4), (1.1, 1.2)])
    ]
    proc = _run("--update", *runs, "--baseline", baseline)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(baseline.read_text())
    new = data["benchmarks"]["test_new"]
    assert new["ratio"] == pytest.approx(2.2) and new["noise"] == pytest.approx(0.2 / 1.1, abs=1e-3)
    assert new["tolerance"] == _gate_module().tolerance_for(new["noise"]) == 0.3
    assert data["benchmarks"]["test_a[1]"]["tolerance"] == 0.3  # re-derived from the measured spread, lower than before
    b = data["benchmarks"]["test_b"]
    assert b["noise"] == pytest.approx(1 / 3, abs=1e-3) and b["tolerance"] == 0.5  # noisier than 0.3 allows: raised
    runs = [_results(tmp_path / f"s{i}.json", {"test_a[1]": a}) for i, a in enumerate([1.0, 1.2, 1.1])]
    assert _run("--update", *runs, "--baseline", baseline).returncode == 0
    data = json.loads(baseline.read_text())
    assert "test_b" not in data["benchmarks"]  # dropped: not optional and not run
    assert data["benchmarks"]["test_gpu"]["optional"] is True  # optional entries are kept
    assert data["machine"]["cpu"] == "test cpu" and data["machine"]["date"]
    # one run keeps the tolerance it had; the refreshed baseline passes the run it came from
    proc = _run("--update", runs[0], "--baseline", baseline)
    assert json.loads(baseline.read_text())["benchmarks"]["test_a[1]"]["tolerance"] == 0.3
    assert _run(runs[0], "--baseline", baseline).returncode == 0


def test_tolerance_rule() -> None:
    gate = _gate_module()
    assert gate.tolerance_for(None) == gate.DEFAULT_TOLERANCE
    assert gate.tolerance_for(0.01) == gate.MIN_TOLERANCE
    assert gate.tolerance_for(0.4) == pytest.approx(0.6)
    assert gate.tolerance_for(0.41) == pytest.approx(0.65)  # rounded up to 0.05 steps


def test_committed_baseline_is_valid() -> None:
    gate = _gate_module()
    data = gate.load_baseline(gate.BASELINE)
    assert data["benchmarks"], "benchmarks/baseline.json has no entries"
    assert {"cpu", "cores", "torch", "date"} <= set(data["machine"])


@pytest.mark.slow
def test_injected_slowdown_trips_the_gate_on_a_real_benchmark(tmp_path: Path) -> None:
    """A real kernel benchmark with LUKV_BENCH_GATE_SLOWDOWN set fails against the committed baseline."""
    name = "test_bench_append_decode[2048]"
    committed = json.loads((ROOT / "benchmarks" / "baseline.json").read_text())["benchmarks"][name]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(LUKV_BENCH_GATE_SLOWDOWN="0.05", OMP_NUM_THREADS="1")
    results = tmp_path / "bench.json"
    bench = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/test_bench_kernels.py", "-q", "-p", "no:cacheprovider",
         "--benchmark-only", "-k", "test_bench_append_decode and 2048", f"--benchmark-json={results}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    only = _baseline(tmp_path / "baseline.json", {name: committed})
    proc = _run(results, "--baseline", only)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert name in proc.stderr and f"baseline {committed['ratio']:.3f}" in proc.stderr
    assert f"tolerance of +{committed['tolerance']:.0%}" in proc.stderr


def test_an_entry_from_another_cpu_is_checked_at_the_ceiling() -> None:
    """Ratios move by machine: an entry measured on one CPU only gets the +90% ceiling elsewhere, not more."""
    gate = _gate_module()
    entry = {"ratio": 1.0, "tolerance": 0.3, "machine": {"cpu": "cpu A"}}
    baseline = {"benchmarks": {"b": entry}}
    _, same = gate.check(baseline, {"b": {"ratio": 1.5, "desc": None}}, cpu="cpu A")
    assert same  # +50% on the entry's own machine: beyond +30%
    lines, other = gate.check(baseline, {"b": {"ratio": 1.5, "desc": None}}, cpu="cpu B")
    assert not other and "checked at the +90% ceiling" in lines[1]
    _, doubled = gate.check(baseline, {"b": {"ratio": 2.0, "desc": None}}, cpu="cpu B")
    assert doubled  # a 2x regression still fails on any machine
    _, unnamed = gate.check(baseline, {"b": {"ratio": 1.5, "desc": None}})
    assert unnamed  # no CPU named by the run: the entry's own tolerance


def test_a_cpu_with_its_own_baseline_is_checked_against_it() -> None:
    """A ratio that differs by CPU gets that CPU's own entry, with its own tolerance, not the ceiling."""
    gate = _gate_module()
    own = {"ratio": 2.0, "tolerance": 0.3, "noise": 0.05, "runs": [1.95, 2.0, 2.05], "machine": {"cpu": "cpu B"}}
    entry = {"ratio": 1.0, "tolerance": 0.3, "machine": {"cpu": "cpu A"}, "other_cpus": {"cpu B": own}}
    baseline = {"benchmarks": {"b": entry}}
    lines, ok = gate.check(baseline, {"b": {"ratio": 2.4, "desc": None}}, cpu="cpu B")
    assert not ok and "(baseline for cpu B)" in lines[1]
    _, tripped = gate.check(baseline, {"b": {"ratio": 2.7, "desc": None}}, cpu="cpu B")
    assert tripped and "baseline 2.000" in tripped[0]  # +35% on cpu B's own baseline
    _, on_a = gate.check(baseline, {"b": {"ratio": 2.0, "desc": None}}, cpu="cpu A")
    assert on_a  # cpu A still has its own figure: 2x fails there
    _, elsewhere = gate.check(baseline, {"b": {"ratio": 2.0, "desc": None}}, cpu="cpu C")
    assert elsewhere  # a third CPU: the entry at the +90% ceiling, which a 2x regression trips


def test_update_this_cpu_adds_a_cpu_baseline_and_keeps_the_entry() -> None:
    gate = _gate_module()
    old = {"machine": {"cpu": "cpu A"}, "benchmarks": {
        "b": {"ratio": 1.0, "tolerance": 0.3, "noise": 0.02, "runs": [0.99, 1.0, 1.01], "desc": "x / y",
              "optional": False},
        "c": {"ratio": 5.0, "tolerance": 0.3, "noise": None, "runs": [5.0], "desc": None, "optional": False},
    }}
    runs = [{"b": {"ratio": r, "desc": "x / y"}} for r in (2.0, 2.1, 1.9)]
    new = gate.update(old, runs, {"cpu_model": "cpu B", "cores": 2}, merge=True, this_cpu=True)
    b = new["benchmarks"]["b"]
    assert (b["ratio"], b["runs"]) == (1.0, [0.99, 1.0, 1.01])  # cpu A's figures untouched
    own = b["other_cpus"]["cpu B"]
    assert own["ratio"] == 2.0 and own["runs"] == [2.0, 2.1, 1.9] and own["tolerance"] == 0.3
    assert own["machine"]["cpu"] == "cpu B"
    assert new["benchmarks"]["c"]["ratio"] == 5.0  # not run here: kept
    assert "| `b` on cpu B |" in gate.render_table(new)
    again = gate.update(new, runs, {"cpu_model": "cpu A", "cores": 2}, merge=True, this_cpu=True)
    assert again["benchmarks"]["b"]["ratio"] == 2.0  # measured on the entry's own CPU: replaces it
    assert again["benchmarks"]["b"]["other_cpus"]["cpu B"] == own  # and keeps the other CPU's


def test_this_cpu_needs_update_and_merge(tmp_path: Path, baseline: Path) -> None:
    res = _results(tmp_path / "r.json", {"test_a[1]": 1.0})
    proc = _run("--update", "--this-cpu", res, "--baseline", baseline)
    assert proc.returncode == 2 and "--this-cpu only goes with --update --merge" in proc.stderr


# -- the performance tables of README.md and docs/performance.md are the baseline, rendered --------------


@pytest.mark.parametrize("name", ["README.md", "docs/performance.md"])
def test_committed_table_is_the_baseline_rendered(name: str) -> None:
    gate = _gate_module()
    path = ROOT / name
    assert path in gate.TABLE_FILES
    text = path.read_text(encoding="utf-8")
    start, end = text.index(gate.TABLE_BEGIN) + len(gate.TABLE_BEGIN), text.index(gate.TABLE_END)
    expected = gate.render_table(gate.load_baseline(gate.BASELINE))
    assert text[start:end].strip() == expected, (
        f"{name}'s performance table is not benchmarks/baseline.json's: run `python benchmarks/gate.py --tables`"
    )


def _table_baseline(ratio: float) -> dict:
    return {"machine": {"cpu": "cpu A"}, "benchmarks": {
        "test_x": {"ratio": ratio, "tolerance": 0.5, "noise": 0.2, "runs": [ratio, ratio * 1.2],
                   "desc": "x / reference", "optional": False},
        "test_y": {"ratio": 2.0, "tolerance": 0.3, "noise": None, "runs": [2.0], "desc": "y / z",
                   "optional": True, "machine": {"cpu": "cpu B"}},
    }}


def test_render_table_lists_every_entry_with_its_limit() -> None:
    table = _gate_module().render_table(_table_baseline(0.25)).splitlines()
    assert len(table) == 4
    assert table[2] == "| `test_x` | x / reference | 0.250 | 0.250-0.300 (2 runs) | 0.375 (+50%) |"
    assert table[3] == "| `test_y` (optional) | y / z | 2.000 | 2.000-2.000 (1 run on cpu B) | 2.600 (+30%) |"


def test_write_tables_replaces_only_the_marked_block(tmp_path: Path) -> None:
    gate = _gate_module()
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{gate.TABLE_BEGIN}\nold table\n{gate.TABLE_END}\nafter\n")
    assert gate.write_tables(_table_baseline(0.25), (doc,)) == [doc]
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith(f"{gate.TABLE_END}\nafter\n")
    assert "old table" not in text and "| `test_x` |" in text
    assert gate.write_tables(_table_baseline(0.25), (doc,)) == []  # already current: nothing rewritten
    gate.write_tables(_table_baseline(0.5), (doc,))
    assert "| 0.500 |" in doc.read_text()


def test_write_tables_names_a_file_without_markers(tmp_path: Path) -> None:
    gate = _gate_module()
    doc = tmp_path / "plain.md"
    doc.write_text("no markers here\n")
    with pytest.raises(gate.GateInputError, match="plain.md: no gate table markers"):
        gate.write_tables(_table_baseline(0.25), (doc,))
