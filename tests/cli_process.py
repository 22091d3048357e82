"""The lukv-bench CLI as a separate process, for tests that kill a run midway (resume, durability)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def lukv_bench_command() -> list[str]:
    """argv prefix that runs the installed ``lukv-bench`` (or the CLI module with this interpreter)."""
    exe = Path(sys.executable).with_name("lukv-bench")
    return [str(exe)] if exe.is_file() else [sys.executable, "-c", "from lukv_bench.cli import main; main()"]


def kill_after_records(cmd: list[str], results: Path, cwd: Path, env: dict[str, str] | None = None,
                       records: int = 3, timeout: float = 150) -> None:
    """Start ``cmd`` in its own session and SIGKILL its whole process group once ``results`` holds
    ``records`` lines; fails if the run ends on its own before that."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_bytes().count(b"\n") >= records:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
