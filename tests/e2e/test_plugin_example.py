"""The example third-party plugin installs with pip, shows up in the registries under its entry point and
distribution, and a suite uses its policy, task type and metric together."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import TINY

pytestmark = pytest.mark.slow  # runs subprocesses: not part of tests/unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lukv-plugin-example"

CHECK = """
import json
from lukv_bench.registry import broken_plugins, list_components, list_policies, list_scorers, resolve_policy
from lukv_bench.runtime.contract import LayerStats, PrefillStats
import torch

policy = next(p for p in list_policies() if p["name"] == "keynorm")
scorer = next(s for s in list_scorers() if s["name"] == "keynorm")
keys = torch.tensor([[[3.0, 0], [0.1, 0], [2.0, 0], [0.5, 0], [1.0, 0], [9.0, 0]]])
zeros = torch.zeros(1, 6)
layer = LayerStats(0, keys, keys, zeros, zeros, torch.zeros(1), 1)
plan = resolve_policy("keynorm").plan(PrefillStats([layer], 1, 1), 3, window=1)
kinds = list_components()
mine = {k: [c for c in items if c["plugin"] == "lukv-plugin-example"] for k, items in kinds.items()}
print(json.dumps({"policy": policy, "scorer": scorer, "broken": broken_plugins(),
                  "kept": plan.keep[0].indices.tolist(), "mine": mine}))
"""


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


SUITE = """name: plugin
model: tiny
policies: [full, keynorm, {name: keynorm-sq, scorer: keynorm, allocator: uniform, power: 2.0}, snapkv]
budgets: [0.25]
tasks:
  - {name: facts, type: jsonl, path: data.jsonl, metric: word_recall}
  - {name: pass, type: passphrase, samples: 2, length: 60, phrase_words: 2}
generation: {max_new_tokens: 4}
window: 8
device: cpu
""".replace("model: tiny", f"model: {TINY}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example plugin pip-installed from a copy for this module's tests, uninstalled afterwards."""
    source = tmp_path_factory.mktemp("plugin") / "lukv-plugin-example"
    shutil.copytree(EXAMPLE, source)  # pip builds in-tree: keep build/ and egg-info out of the repo
    installed = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    if installed.returncode != 0:
        installed = _pip("install", "--no-deps", str(source))
    assert installed.returncode == 0, installed.stderr
    try:
        yield source
    finally:
        _pip("uninstall", "-y", "lukv-plugin-example")


@pytest.mark.slow
def test_example_plugin_registers_keynorm(installed: Path) -> None:
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["policy"]["plugin"] == "lukv-plugin-example"
    assert out["policy"]["scorer"] == "keynorm" and out["policy"]["allocator"] == "uniform"
    assert out["scorer"]["plugin"] == "lukv-plugin-example"
    assert out["scorer"]["params"] == {"power": 1.0}
    assert out["policy"]["distribution"] == "lukv-plugin-example" and out["policy"]["version"] == "0.1.0"
    names = {kind: [c["name"] for c in items] for kind, items in out["mine"].items()}
    assert names == {"scorers": ["keynorm"], "allocators": [], "decode_rules": [], "metrics": ["word_recall"],
                     "task_types": ["passphrase"], "policies": ["keynorm"]}
    assert all(c["distribution"] == "lukv-plugin-example" and c["version"] == "0.1.0"
               for items in out["mine"].values() for c in items)
    assert out["broken"] == []
    # lowest key norms: positions 1 (0.1) and 3 (0.5), plus the window (position 5)
    assert out["kept"] == [1, 3, 5]


@pytest.mark.slow
def test_example_plugin_runs_in_a_suite(installed: Path, tmp_path: Path) -> None:
    """``lukv-bench run`` with the plugin's policy (twice, with a param), task type and metric writes its records."""
    row = {"id": "q1", "context": "The key is under the blue mat by the door. " * 5, "question": "Where?",
           "answers": ["mat"]}
    (tmp_path / "data.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "suite.yaml").write_text(SUITE)
    cli = [sys.executable, "-c", "from lukv_bench.cli import main; main()"]
    run = subprocess.run([*cli, "run", "suite.yaml", "--out", "out", "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    recs = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    facts = [r for r in recs if r["task"] == "facts"]
    assert sorted(r["policy"] for r in facts) == ["full", "keynorm", "keynorm-sq", "snapkv"]
    assert {r["metric"] for r in facts} == {"word_recall"}
    passes = [r for r in recs if r["task"] == "pass"]
    assert len(passes) == 2 * 4 and {r["metric"] for r in passes} == {"word_recall"}
    assert {r["data_source"] for r in passes} == {"generated passphrases (lukv-plugin-example)"}
    assert all(len(r["answers"][0].split()) == 2 and 0.0 <= r["score"] <= 1.0 for r in passes)
    mine = sorted((r for r in facts if r["policy"].startswith("keynorm")), key=lambda r: r["policy"])
    assert [r["policy_params"]["power"] for r in mine] == [1.0, 2.0]
    for r in mine:
        assert abs(r["kv_bytes"] / r["kv_bytes_full"] - 0.25) <= 0.01
        assert r["kl_mean"] is not None and r["kl_mean"] >= 0 and r["new_tokens"] >= 1
        scorer = r["policy_description"]["components"]["scorer"]
        assert scorer == {"name": "keynorm", "plugin": "lukv-plugin-example", "distribution": "lukv-plugin-example",
                          "version": "0.1.0"}
        assert r["policy_description"]["components"]["allocator"]["distribution"] == "lukv-bench"
    # power only sharpens the ranking: the same tokens are kept, so the outputs are identical
    assert mine[0]["prediction"] == mine[1]["prediction"] and mine[0]["kl_mean"] == mine[1]["kl_mean"]
    run_info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_info["policies"]["keynorm"]["components"]["policy"]["distribution"] == "lukv-plugin-example"
    assert "keynorm" in (tmp_path / "out" / "report.md").read_text()
    listing = subprocess.run([*cli, "plugins"], capture_output=True, text=True, timeout=120)
    rows = [line.split() for line in listing.stdout.splitlines()]
    for kind, name in (("scorer", "keynorm"), ("metric", "word_recall"), ("passphrase", None), ("policy", "keynorm")):
        assert any(kind in row and (name is None or name in row) and "lukv-plugin-example" in row and "0.1.0" in row
                   for row in rows), (kind, listing.stdout)
