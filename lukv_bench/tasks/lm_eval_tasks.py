"""Configuration of ``type: lm_eval`` suite tasks (parsing and validation only).

The suite validates the keys (:mod:`lukv_bench.suite`); this dataclass is what the lm-eval runner
(written elsewhere) receives. Running lm-eval tasks is not done here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lukv_bench.errors import UserError

if TYPE_CHECKING:
    from lukv_bench.suite import Suite

__all__ = ["LmEvalTaskConfig"]


@dataclass
class LmEvalTaskConfig:
    """One ``type: lm_eval`` entry: lm-eval task names and their settings."""

    name: str  #: the suite's name for this entry (prefix of result rows)
    tasks: list[str]  #: lm-eval task names, e.g. ["niah_single_1"]
    max_seq_lengths: list[int] | None = None  #: RULER-style lengths, passed in lm-eval's metadata
    num_fewshot: int | None = None
    limit: int | None = None  #: samples per lm-eval task (None: the suite's limit, or all)
    include_path: str | None = None  #: folder of extra task YAMLs (absolute)
    metadata: dict[str, Any] = field(default_factory=dict)  #: extra lm-eval task metadata
    #: context tokens left uncompressed and fed after compression (the question and answer prompt)
    tail: int = 32
    kind: str = field(default="lm_eval", init=False)  #: distinguishes it from sample-based tasks

    def lm_eval_metadata(self) -> dict[str, Any]:
        """The ``metadata`` dict for lm-eval (``max_seq_lengths`` merged in when set)."""
        meta = dict(self.metadata)
        if self.max_seq_lengths is not None:
            meta["max_seq_lengths"] = list(self.max_seq_lengths)
        return meta

    @classmethod
    def from_dict(cls, task: dict[str, Any], suite: Suite | None = None) -> LmEvalTaskConfig:
        """Build from a (validated) suite task dict; light checks for dicts built in code."""
        names = task.get("tasks")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise UserError(f"lm_eval task {task.get('name')!r}: 'tasks' must be a non-empty list of task names")
        include = task.get("include_path")
        if include is not None and not Path(include).is_absolute():
            folder = suite.folder if suite is not None else Path.cwd()
            include = str((folder / include).resolve())
        limit = task.get("limit")
        if limit is None and suite is not None:
            limit = suite.limit
        return cls(
            name=str(task["name"]),
            tasks=list(names),
            max_seq_lengths=list(task["max_seq_lengths"]) if task.get("max_seq_lengths") else None,
            num_fewshot=task.get("num_fewshot"),
            limit=limit,
            include_path=include,
            metadata=dict(task.get("metadata") or {}),
            tail=int(task.get("tail", 32)),
        )
