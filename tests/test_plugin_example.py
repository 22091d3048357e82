"""The example third-party plugin installs with pip and shows up in the registry under its entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lukv-plugin-example"

CHECK = """
import json
from lukv_bench.registry import broken_plugins, list_policies, list_scorers, resolve_policy
from lukv_bench.policy import LayerStats, PrefillStats
import torch

policy = next(p for p in list_policies() if p["name"] == "keynorm")
scorer = next(s for s in list_scorers() if s["name"] == "keynorm")
keys = torch.tensor([[[3.0, 0], [0.1, 0], [2.0, 0], [0.5, 0], [1.0, 0], [9.0, 0]]])
zeros = torch.zeros(1, 6)
layer = LayerStats(0, keys, keys, zeros, zeros, torch.zeros(1), 1)
plan = resolve_policy("keynorm").plan(PrefillStats([layer], 1, 1), 3, window=1)
print(json.dumps({"policy": policy, "scorer": scorer, "broken": broken_plugins(),
                  "kept": plan.keep[0].indices.tolist()}))
"""


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_example_plugin_registers_keynorm(tmp_path: Path) -> None:
    source = tmp_path / "lukv-plugin-example"
    shutil.copytree(EXAMPLE, source)  # pip builds in-tree: keep build/ and egg-info out of the repo
    installed = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    if installed.returncode != 0:
        installed = _pip("install", "--no-deps", str(source))
    assert installed.returncode == 0, installed.stderr
    try:
        run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout.strip().splitlines()[-1])
        assert out["policy"]["plugin"] == "lukv-plugin-example"
        assert out["policy"]["scorer"] == "keynorm" and out["policy"]["allocator"] == "uniform"
        assert out["scorer"]["plugin"] == "lukv-plugin-example"
        assert out["scorer"]["params"] == {"power": 1.0}
        assert out["broken"] == []
        # lowest key norms: positions 1 (0.1) and 3 (0.5), plus the window (position 5)
        assert out["kept"] == [1, 3, 5]
    finally:
        _pip("uninstall", "-y", "lukv-plugin-example")
