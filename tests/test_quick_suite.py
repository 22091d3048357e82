"""The CI smoke run: suites/quick.yaml on the embedded model, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lukv_bench.cli import main

pytestmark = pytest.mark.embedded

SUITE = Path(__file__).resolve().parents[1] / "suites" / "quick.yaml"


def test_quick_suite_runs_and_fullkv_answers(embedded, tmp_path):
    out = tmp_path / "quick"
    result = CliRunner().invoke(main, ["run", str(SUITE), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    policies = {r["policy"] for r in records}
    assert policies == {"full", "snapkv", "layer-uncertainty"}
    # 2 samples x (FullKV once + 2 policies x 2 budgets)
    assert len(records) == 2 * (1 + 2 * 2)
    full = [r for r in records if r["policy"] == "full"]
    # calibration: the task is only informative if the uncompressed model solves it
    assert all(r["score"] == 1.0 for r in full), [r["prediction"] for r in full]
    for r in records:
        if r["policy"] != "full":
            assert abs(r["kv_bytes"] / r["kv_bytes_full"] - r["budget"]) <= 0.01 * r["budget"]
            assert r["kl_mean"] is not None and r["kl_mean"] >= 0
    report = (out / "report.md").read_text()
    assert "layer-uncertainty" in report and "offline needle-in-a-haystack" in report
    assert list((out / "plots").glob("*.png"))
