"""benchmarks/peers/compare_kvpress.py: clear failures before any model or kvpress work starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the CLI, subprocesses or a real model: not part of tests/unit

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "peers" / "compare_kvpress.py"


def _compare(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def test_policy_without_kvpress_counterpart_is_bad_input(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: x\nmodel: embedded\npolicies: [snapkv, cake]\nbudgets: [0.5]\n"
        "tasks:\n  - {name: passkey, type: needle, lengths: [500], depths: [0.5]}\n"
    )
    proc = _compare("--suite", suite, "--venv", tmp_path / "venv", "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "['cake'] have no kvpress counterpart" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "venv").exists()  # rejected before any environment is made


@pytest.mark.slow
def test_kvpress_environment_that_cannot_be_made_fails_clearly(tmp_path: Path) -> None:
    """With no package index reachable, the script stops with a message naming the step and the fix."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(empty), "PIP_CONFIG_FILE": os.devnull}
    proc = _compare("--venv", tmp_path / "venv", "--out", tmp_path / "out", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot create kvpress's virtual environment" in proc.stderr
    assert "kvpress is not a dependency of lukv-bench" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
