"""Durable results: one JSON line per record (:class:`~lukv_bench.records.Record`), appended and fsynced.

Re-running the same command resumes: finished keys are skipped, and a line torn by a kill is cut
off before appending, so every key ends up exactly once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lukv_bench.records import Record, RecordKey, record_key

RESULTS_FILE = "results.jsonl"  #: the records of a results folder
RUN_FILE = "run.json"  #: the suite, policies and versions of a results folder

log = logging.getLogger(__name__)

__all__ = ["RESULTS_FILE", "RUN_FILE", "ResultsWriter", "read_records", "record_key"]


def read_records(path: Path, skipped: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the complete records of a results file; a torn last line is skipped.

    A line that is not a JSON object raises :class:`ValueError`, unless ``skipped`` is given: then
    its line number is appended there (a warning is logged unless it is the torn last line).
    """
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):  # torn by a kill mid-write
                if skipped is not None and raw.strip():
                    skipped.append(lineno)
                break
            line = raw.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if skipped is None:
                    raise ValueError(f"{path}:{lineno}: unreadable record ({e})") from None
                log.warning("%s:%d: unreadable line skipped", path, lineno)
                skipped.append(lineno)
                continue
            yield rec


class ResultsWriter:
    """Appends records to ``OUT/results.jsonl`` with fsync, and knows which keys are done."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)  # made by the first append: a run that fails before it leaves no folder
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

    def is_done(self, key: RecordKey) -> bool:
        """Whether this key already has a record."""
        return key in self.done

    def append(self, rec: Record | dict[str, Any]) -> None:
        """Write one record durably (write, flush, fsync)."""
        if isinstance(rec, Record):
            rec = rec.to_dict()
        key = record_key(rec)
        if key in self.done:
            return
        line = json.dumps(rec, sort_keys=True, default=_json_default) + "\n"
        self.out_dir.mkdir(parents=True, exist_ok=True)
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
