"""``type: lm_eval`` suite tasks: their config schema, and the configuration the lm-eval runner receives.

:class:`LmEvalTaskType` declares the keys (checked by :mod:`lukv_bench.config.schema`); it builds an
:class:`LmEvalTaskConfig`, which :mod:`lukv_bench.tasks.lm_eval.model` runs. Running lm-eval tasks is not
done here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lukv_bench.registry.task_contract import REQUIRED, Key
from lukv_bench.tasks.base import BaseTaskType, task_limit

if TYPE_CHECKING:
    from lukv_bench.config.suite import Suite

__all__ = ["DEFAULT_TAIL", "LmEvalTaskConfig", "LmEvalTaskType"]

#: context tokens an lm-eval request leaves uncompressed and feeds after compression
DEFAULT_TAIL = 32


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
    tail: int = DEFAULT_TAIL
    kind: str = field(default="lm_eval", init=False)  #: distinguishes it from sample-based tasks

    def lm_eval_metadata(self) -> dict[str, Any]:
        """The ``metadata`` dict for lm-eval (``max_seq_lengths`` merged in when set)."""
        meta = dict(self.metadata)
        if self.max_seq_lengths is not None:
            meta["max_seq_lengths"] = list(self.max_seq_lengths)
        return meta


class LmEvalTaskType(BaseTaskType):
    """``type: lm_eval``: lm-eval tasks run through lukv-bench's lm-eval model (one entry, many lm-eval tasks)."""

    name = "lm_eval"
    keys = {
        "tasks": Key("list[str]", REQUIRED, help="lm-eval task names, e.g. [niah_single_1]"),
        "max_seq_lengths": Key("list[int]", minimum=1),
        "num_fewshot": Key("int", minimum=0, nullable=True),
        "include_path": Key("folder"),
        "metadata": Key("map"),
        "tail": Key("int", DEFAULT_TAIL, minimum=0),
    }

    def build(self, task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> LmEvalTaskConfig:
        """The configuration the lm-eval runner receives."""
        return LmEvalTaskConfig(
            name=str(task["name"]),
            tasks=list(task["tasks"]),
            max_seq_lengths=list(task["max_seq_lengths"]) if task.get("max_seq_lengths") else None,
            num_fewshot=task.get("num_fewshot"),
            limit=task_limit(task, suite),
            include_path=task.get("include_path"),
            metadata=dict(task.get("metadata") or {}),
            tail=task["tail"],
        )
