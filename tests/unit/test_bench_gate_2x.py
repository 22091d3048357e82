"""The regression gate (benchmarks/gate.py) catches a 2x regression of every committed baseline entry."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATE = ROOT / "benchmarks" / "gate.py"


def _gate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lukv_bench_gate_2x", GATE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gate = _gate()
COMMITTED = gate.load_baseline(gate.BASELINE)
NAMES = sorted(COMMITTED["benchmarks"])


def _scaled(factor: float, only: str | None = None) -> dict[str, dict]:
    """The committed baseline as one run's ratios, ``factor`` times worse (every entry, or only ``only``)."""
    return {
        name: {"ratio": e["ratio"] * (factor if only in (None, name) else 1.0), "desc": None}
        for name, e in COMMITTED["benchmarks"].items()
    }


def _results(path: Path, ratios: dict[str, float]) -> Path:
    """A minimal pytest-benchmark --benchmark-json file."""
    benches = [{"name": n, "extra_info": {"ratio": r}} for n, r in ratios.items()]
    path.write_text(json.dumps({"machine_info": {"cpu_model": "test cpu", "cores": 2}, "benchmarks": benches}))
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GATE), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_committed_baseline_passes_itself() -> None:
    lines, failures = gate.check(COMMITTED, _scaled(1.0))
    assert failures == []
    assert sum(" ok" in ln for ln in lines) == len(NAMES)


def test_doubled_ratios_trip_every_entry() -> None:
    lines, failures = gate.check(COMMITTED, _scaled(2.0))
    assert sorted(f.split(":", 1)[0] for f in failures) == NAMES
    assert sum(ln.endswith("REGRESSED") for ln in lines) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_doubling_one_entry_trips_it_alone(name: str) -> None:
    _, failures = gate.check(COMMITTED, _scaled(2.0, only=name))
    assert [f.split(":", 1)[0] for f in failures] == [name]


def test_committed_tolerances_follow_the_rule_from_the_recorded_runs() -> None:
    for name, e in COMMITTED["benchmarks"].items():
        assert len(e["runs"]) >= 3, f"{name}: baseline made from fewer than 3 runs"
        assert e["ratio"] == pytest.approx(statistics.median(e["runs"]), abs=1e-4), name
        assert e["noise"] == pytest.approx(gate.spread(e["runs"]), abs=1e-3), name
        assert e["tolerance"] == gate.tolerance_for(e["noise"]) <= gate.MAX_TOLERANCE, name


def test_a_fixed_reference_entry_watches_the_model_itself() -> None:
    fixed = [e for e in COMMITTED["benchmarks"].values() if "matmul" in (e.get("desc") or "")]
    assert fixed and all("copy" in e["desc"] for e in fixed)


def test_check_refuses_a_tolerance_that_hides_2x(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"benchmarks": {"test_a": {"ratio": 1.0, "tolerance": 1.0}}}))
    proc = _run(_results(tmp_path / "r.json", {"test_a": 2.0}), "--baseline", baseline)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "test_a: tolerance +100% is above the ceiling of +90%" in proc.stderr


def test_update_replaces_provisional_tolerances_by_measured_ones(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    entries = {
        "test_provisional": {"ratio": 1.0, "tolerance": 1.0, "noise": None},
        "test_wide": {"ratio": 1.0, "tolerance": 0.8, "noise": 0.1},
    }
    baseline.write_text(json.dumps({"machine": {"cpu": "old cpu"}, "benchmarks": entries}))
    runs = [
        _results(tmp_path / f"r{i}.json", {"test_provisional": a, "test_wide": 2 * a})
        for i, a in enumerate([1.0, 1.1, 1.05])
    ]
    proc = _run("--update", *runs, "--baseline", baseline)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new = json.loads(baseline.read_text())["benchmarks"]
    assert new["test_provisional"]["noise"] == new["test_wide"]["noise"] == pytest.approx(0.1 / 1.05, abs=1e-3)
    assert new["test_provisional"]["tolerance"] == new["test_wide"]["tolerance"] == gate.MIN_TOLERANCE
    assert "test_provisional: tolerance +100% -> +30%" in proc.stdout
    # one run measures no spread: the tolerance still follows the entry's recorded noise
    entries["test_wide"]["tolerance"] = 0.8
    baseline.write_text(json.dumps({"machine": {"cpu": "old cpu"}, "benchmarks": entries}))
    one = _results(tmp_path / "one.json", {"test_wide": 2.0})
    assert _run("--update", one, "--baseline", baseline).returncode == 0
    assert json.loads(baseline.read_text())["benchmarks"]["test_wide"]["tolerance"] == gate.MIN_TOLERANCE


def test_update_refuses_an_entry_too_noisy_for_2x(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    before = json.dumps({"machine": {"cpu": "old cpu"}, "benchmarks": {"test_q": {"ratio": 1.0, "tolerance": 0.3}}})
    baseline.write_text(before)
    # a spread of 0.583 needs 0.875 -> +90%: just within the ceiling
    runs = [_results(tmp_path / f"r{i}.json", {"test_noisy": a, "test_q": 1.0}) for i, a in enumerate([1.0, 1.7, 1.2])]
    assert _run("--update", *runs, "--baseline", baseline).returncode == 0
    assert json.loads(baseline.read_text())["benchmarks"]["test_noisy"]["tolerance"] == gate.MAX_TOLERANCE
    baseline.write_text(before)
    runs = [_results(tmp_path / f"n{i}.json", {"test_noisy": a, "test_q": 1.0}) for i, a in enumerate([1.0, 1.7, 1.1])]
    proc = _run("--update", *runs, "--baseline", baseline)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "test_noisy: runs spread 64% (1.000-1.700) and need a tolerance of +100%" in proc.stderr
    assert "steadier" in proc.stderr and "test_q" not in proc.stderr
    assert baseline.read_text() == before  # nothing written


def test_merge_keeps_other_entries_and_rederives_their_tolerances(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    entries = {
        "test_kept": {"ratio": 1.0, "tolerance": 1.0, "noise": 0.1, "runs": [1.0, 0.95, 1.05]},
        "test_noisy_kept": {"ratio": 1.0, "tolerance": 0.9, "noise": 0.9, "runs": [0.5, 1.0, 1.4]},
        "test_remeasured": {"ratio": 1.0, "tolerance": 0.9, "noise": 0.9, "runs": [0.5, 1.0, 1.4]},
    }
    baseline.write_text(json.dumps({"machine": {"cpu": "old cpu"}, "benchmarks": entries}))
    runs = [_results(tmp_path / f"r{i}.json", {"test_remeasured": a}) for i, a in enumerate([1.0, 1.1, 1.05])]
    proc = _run("--update", "--merge", *runs, "--baseline", baseline)
    assert proc.returncode == 2 and "test_noisy_kept: runs spread 90%" in proc.stderr
    assert "test_remeasured" not in proc.stderr and "test_kept" not in proc.stderr
    del entries["test_noisy_kept"]
    baseline.write_text(json.dumps({"machine": {"cpu": "old cpu"}, "benchmarks": entries}))
    assert _run("--update", "--merge", *runs, "--baseline", baseline).returncode == 0
    data = json.loads(baseline.read_text())
    assert data["machine"] == {"cpu": "old cpu"}
    kept, new = data["benchmarks"]["test_kept"], data["benchmarks"]["test_remeasured"]
    assert kept["tolerance"] == gate.MIN_TOLERANCE and kept["runs"] == [1.0, 0.95, 1.05] and "machine" not in kept
    assert new["runs"] == [1.0, 1.1, 1.05] and new["tolerance"] == gate.MIN_TOLERANCE
    assert new["machine"]["cpu"] == "test cpu"
    assert _run("--merge", runs[0], "--baseline", baseline).returncode == 2  # --merge needs --update


def test_rule_ceiling_is_below_2x() -> None:
    assert gate.MAX_TOLERANCE < 1.0
    assert gate.tolerance_for(0.6) == pytest.approx(gate.MAX_TOLERANCE)
    assert gate.tolerance_for(0.61) > gate.MAX_TOLERANCE  # refused by --update, never capped silently


OWN = [
    (name, cpu, sub) for name, e in COMMITTED["benchmarks"].items() for cpu, sub in (e.get("other_cpus") or {}).items()
]


@pytest.mark.parametrize("name,cpu,sub", OWN, ids=[f"{n}-{c}" for n, c, _ in OWN])
def test_a_cpu_baseline_passes_itself_and_trips_at_2x(name: str, cpu: str, sub: dict) -> None:
    assert len(sub["runs"]) >= 3 and sub["tolerance"] == gate.tolerance_for(gate.spread(sub["runs"])), name
    _, same = gate.check(COMMITTED, {name: {"ratio": sub["ratio"], "desc": None}}, cpu=cpu)
    assert not [f for f in same if f.startswith(name)]
    _, doubled = gate.check(COMMITTED, {name: {"ratio": sub["ratio"] * 2, "desc": None}}, cpu=cpu)
    assert [f.split(":", 1)[0] for f in doubled if f.startswith(name)] == [name]

