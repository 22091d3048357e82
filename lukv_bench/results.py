"""Durable results: one JSON line per record (:class:`~lukv_bench.records.Record`), appended and fsynced.

Re-running the same command resumes: finished keys are skipped, and a line torn by a kill is cut
off before appending, so every key ends up exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lukv_bench.records import Record, record_key

RESULTS_FILE = "results.jsonl"

__all__ = ["RESULTS_FILE", "ResultsWriter", "read_records", "record_key"]


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

    def is_done(self, rec_or_key: Record | dict[str, Any] | tuple) -> bool:
        """Whether this key already has a record."""
        if isinstance(rec_or_key, Record):
            rec_or_key = rec_or_key.key()
        key = rec_or_key if isinstance(rec_or_key, tuple) else record_key(rec_or_key)
        return key in self.done

    def append(self, rec: Record | dict[str, Any]) -> None:
        """Write one record durably (write, flush, fsync)."""
        if isinstance(rec, Record):
            rec = rec.to_dict()
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
