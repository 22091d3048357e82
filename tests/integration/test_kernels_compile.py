"""Compile every Triton kernel for Hopper (sm_90) without a GPU, with the ptxas in the triton wheel.

The test process runs kernels in the interpreter (TRITON_INTERPRET=1, where ``@triton.jit`` gives
interpreter objects), so compilation runs ``tools/compile_check.py`` in a subprocess with
TRITON_INTERPRET removed. The tool is not part of the package; this file loads it by path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lukv_bench.kernels._triton import HAS_TRITON

COMPILE_CHECK = Path(__file__).resolve().parents[2] / "tools" / "compile_check.py"


def _load_tool(path: Path):
    spec = importlib.util.spec_from_file_location(f"_lukv_tool_{path.stem}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SM90_SHARED_LIMIT = _load_tool(COMPILE_CHECK).SM90_SHARED_LIMIT

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

EXPECTED = {
    "_compact_kernel",
    "_append_kernel",
    "_window_lse_kernel",
    "_window_stats_kernel",
    "_row_lse_kernel",
    "_col_sum_kernel",
    "_ragged_split_kernel",
    "_ragged_combine_kernel",
}


@pytest.mark.slow
def test_compile_all_kernels_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(COMPILE_CHECK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {r["kernel"] for r in reports} == EXPECTED
    for r in reports:
        assert r["ptx_chars"] > 0 and r["cubin_bytes"] > 0, r
        assert r["shared_bytes"] <= SM90_SHARED_LIMIT, r
    for r in reports:  # shown with -s
        print(f"{r['kernel']:<24} {r['variant']:<12} shared {r['shared_bytes'] / 1024:6.1f} KiB")
