"""Compile every Triton kernel for Hopper (sm_90) without a GPU, with the ptxas in the triton wheel.

The test process runs kernels in the interpreter (TRITON_INTERPRET=1, where ``@triton.jit`` gives
interpreter objects), so compilation runs in a subprocess with TRITON_INTERPRET removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from lukv_bench.kernels._triton import HAS_TRITON
from lukv_bench.kernels.compile_check import SM90_SHARED_LIMIT

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
        [sys.executable, "-m", "lukv_bench.kernels.compile_check"],
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
