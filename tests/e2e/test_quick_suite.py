"""The CI smoke run: suites/quick.yaml on the embedded model, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lukv_bench.cli import main

pytestmark = [pytest.mark.embedded, pytest.mark.slow]

SUITE = Path(__file__).resolve().parents[2] / "suites" / "quick.yaml"


def test_quick_suite_runs_and_fullkv_answers(embedded, tmp_path):
    out = tmp_path / "quick"
    result = CliRunner().invoke(main, ["run", str(SUITE), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    policies = {r["policy"] for r in records}
    assert policies == {"full", "snapkv", "layer-uncertainty", "kvzip-plus"}
    # 2 samples x (FullKV once + 3 policies x 2 budgets + the no-context control)
    assert len(records) == 2 * (1 + 3 * 2 + 1)
    control = [r for r in records if r["task"] == "passkey:no-context"]
    full = [r for r in records if r["policy"] == "full" and r not in control]
    # calibration: the task is only informative if the uncompressed model solves it, and not without the text
    assert all(r["score"] == 1.0 for r in full), [r["prediction"] for r in full]
    assert len(control) == 2 and all(r["policy"] == "full" and r["score"] == 0.0 for r in control)
    for r in records:
        if r["policy"] != "full":
            assert abs(r["kv_bytes"] / r["kv_bytes_full"] - r["budget"]) <= 0.01 * r["budget"]
            assert r["kl_mean"] is not None and r["kl_mean"] >= 0
    report = (out / "report.md").read_text()
    assert "layer-uncertainty" in report and "offline needle-in-a-haystack" in report
    assert "Paired difference to kvzip-plus" in report  # the recommended default is the suite's proposed policy
    assert list((out / "plots").glob("*.png"))
