"""run.json records when the last ``lukv-bench run`` started and finished; the report shows its wall time."""

from __future__ import annotations

import json
from datetime import datetime

from click.testing import CliRunner
from support import TINY

from lukv_bench.cli import main


def test_run_json_times_the_run_and_the_report_shows_it(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: times\nmodel: {TINY}\npolicies: [full]\nbudgets: [1.0]\ndevice: cpu\nwindow: 8\n"
                     "tasks:\n  - {name: cost, type: latency, lengths: [64], new_tokens: 2, repeats: 1, warmup: 0}\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", str(suite), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, (res.output, res.exception)
    run = json.loads((out / "run.json").read_text())
    started, finished = datetime.fromisoformat(run["started"]), datetime.fromisoformat(run["finished"])
    assert started.utcoffset() is not None and started <= finished
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert res.output.split() == [str(out / "report.md"), str(out / "report.html")]
    assert "- Wall time: " in (out / "report.md").read_text()
    assert f"{run['started']} to {run['finished']})" in (out / "report.md").read_text()
