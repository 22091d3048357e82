"""Durable results: one JSON line per (model, task, sample, policy, budget), appended and fsynced.

Re-running the same command resumes: finished keys are skipped, and a line torn by a kill is cut
off before appending, so every key ends up exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"


def record_key(rec: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """The identity of a record: (model, task, sample_id, policy, budget)."""
    return (
        str(rec["model"]),
        str(rec["task"]),
        str(rec["sample_id"]),
        str(rec["policy"]),
        json.dumps(rec["budget"], sort_keys=True),
    )


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the complete records of a results file; a torn last line is skipped."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn by a kill mid-write
            line = raw.strip()
            if line:
                yield json.loads(line)


class ResultsWriter:
    """Appends records to ``OUT/results.jsonl`` with fsync, and knows which keys are done."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / RESULTS_FILE
        self._repair()
        self.done = {record_key(r) for r in read_records(self.path)}

    def _repair(self) -> None:
        """Cut a torn trailing line so the next append starts on a fresh line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())

    def is_done(self, rec_or_key: dict[str, Any] | tuple) -> bool:
        """Whether this key already has a record."""
        key = rec_or_key if isinstance(rec_or_key, tuple) else record_key(rec_or_key)
        return key in self.done

    def append(self, rec: dict[str, Any]) -> None:
        """Write one record durably (write, flush, fsync)."""
        key = record_key(rec)
        if key in self.done:
            return
        line = json.dumps(rec, sort_keys=True, default=_json_default) + "\n"
        with self.path.open("ab") as f:
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        self.done.add(key)


def _json_default(obj: Any) -> Any:
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
