"""The performance tables of README.md and docs/performance.md are the regression gate's baseline, rendered."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATE = ROOT / "benchmarks" / "gate.py"


def _gate_module():
    spec = importlib.util.spec_from_file_location("lukv_bench_gate_tables", GATE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gate = _gate_module()


@pytest.mark.parametrize("path", gate.TABLE_FILES, ids=lambda p: p.name)
def test_committed_table_is_the_baseline_rendered(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index(gate.TABLE_BEGIN) + len(gate.TABLE_BEGIN), text.index(gate.TABLE_END)
    expected = gate.render_table(gate.load_baseline(gate.BASELINE))
    assert text[start:end].strip() == expected, (
        f"{path.name}'s performance table is not benchmarks/baseline.json's: run `python benchmarks/gate.py --tables`"
    )


def _baseline(ratio: float) -> dict:
    return {"machine": {"cpu": "cpu A"}, "benchmarks": {
        "test_x": {"ratio": ratio, "tolerance": 0.5, "noise": 0.2, "runs": [ratio, ratio * 1.2],
                   "desc": "x / reference", "optional": False},
        "test_y": {"ratio": 2.0, "tolerance": 0.3, "noise": None, "runs": [2.0], "desc": "y / z",
                   "optional": True, "machine": {"cpu": "cpu B"}},
    }}


def test_render_table_lists_every_entry_with_its_limit() -> None:
    table = gate.render_table(_baseline(0.25)).splitlines()
    assert len(table) == 4
    assert table[2] == "| `test_x` | x / reference | 0.250 | 0.250-0.300 (2 runs) | 0.375 (+50%) |"
    assert table[3] == "| `test_y` (optional) | y / z | 2.000 | 2.000-2.000 (1 run on cpu B) | 2.600 (+30%) |"


def test_write_tables_replaces_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{gate.TABLE_BEGIN}\nold table\n{gate.TABLE_END}\nafter\n")
    assert gate.write_tables(_baseline(0.25), (doc,)) == [doc]
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith(f"{gate.TABLE_END}\nafter\n")
    assert "old table" not in text and "| `test_x` |" in text
    assert gate.write_tables(_baseline(0.25), (doc,)) == []  # already current: nothing rewritten
    gate.write_tables(_baseline(0.5), (doc,))
    assert "| 0.500 |" in doc.read_text()


def test_write_tables_names_a_file_without_markers(tmp_path: Path) -> None:
    doc = tmp_path / "plain.md"
    doc.write_text("no markers here\n")
    with pytest.raises(gate.GateInputError, match="plain.md: no gate table markers"):
        gate.write_tables(_baseline(0.25), (doc,))
