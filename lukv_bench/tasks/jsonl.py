"""A task from the user's own JSONL file.

One JSON object per line with ``context``, ``question`` and ``answers`` (a list of strings, or one
string), and optionally ``id``, ``instruction``, ``all_classes`` (label set, for the classification
metric) and ``meta`` (a map copied to ``Sample.meta``; other unknown fields are copied there too).
Blank lines are skipped. The file must be UTF-8 without a byte-order mark and hold at least one row.
Any problem is a :class:`~lukv_bench.errors.UserError` naming the file and line; suite validation
reads the file the same way, so data errors show before any model loads.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lukv_bench.config.schema import TaskContext
from lukv_bench.errors import UserError
from lukv_bench.registry.task_contract import REQUIRED, Key
from lukv_bench.sample import Sample
from lukv_bench.tasks import metrics
from lukv_bench.tasks.base import MAX_NEW_TOKENS, BaseTaskType, task_limit
from lukv_bench.tasks.control import control_key

if TYPE_CHECKING:
    from lukv_bench.config.suite import Suite

__all__ = ["JsonlTask", "JsonlTaskType", "load_jsonl", "read_text_file"]

_KNOWN = ("id", "context", "question", "answers", "instruction", "all_classes", "meta")


def _row_to_sample(row: Any, where: str, line_no: int, default_instruction: str) -> Sample:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
    missing = [k for k in ("context", "question", "answers") if k not in row]
    if missing:
        raise UserError(
            f"{where}: missing field(s) {', '.join(missing)}; each row needs context, question, answers "
            "(optional: id, instruction, all_classes, meta)"
        )
    for key in ("context", "question"):
        if not isinstance(row[key], str):
            raise UserError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
    answers = row["answers"]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, (str, int, float)) for a in answers):
        raise UserError(f"{where}: field 'answers' must be a non-empty list of strings, got {answers!r}")
    instruction = row.get("instruction", default_instruction)
    if not isinstance(instruction, str):
        raise UserError(f"{where}: field 'instruction' must be a string")
    all_classes = row.get("all_classes")
    if all_classes is not None and (
        not isinstance(all_classes, list) or not all(isinstance(c, str) and c for c in all_classes)
    ):
        raise UserError(f"{where}: field 'all_classes' must be a list of non-empty strings")
    meta = row.get("meta", {})
    if not isinstance(meta, dict):
        raise UserError(f"{where}: field 'meta' must be a JSON object")
    meta = {**{k: v for k, v in row.items() if k not in _KNOWN}, **meta, "line": line_no}
    rid = row.get("id", f"line{line_no}")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise UserError(f"{where}: field 'id' must be a string or an integer")
    return Sample(
        id=str(rid),
        context=row["context"],
        question=row["question"],
        answers=[str(a) for a in answers],
        instruction=instruction,
        all_classes=all_classes,
        meta=meta,
    )


_BOM = b"\xef\xbb\xbf"


def read_text_file(file: Path) -> str:
    """The text of a UTF-8 data file; a :class:`UserError` naming the file (and line) when it cannot be one.

    Refused: a missing path, a folder, a file that cannot be opened, a UTF-8 byte-order mark (JSON
    forbids it) and bytes that are not UTF-8.
    """
    if file.is_dir():
        raise UserError(f"{file}: is a folder, not a data file; point the task's path at a JSONL file")
    if not file.exists():
        raise UserError(f"{file}: file not found")
    try:
        data = file.read_bytes()
    except OSError as e:
        raise UserError(f"{file}: cannot read the file ({e.strerror or e}); check its permissions") from None
    if data.startswith(_BOM):
        raise UserError(
            f"{file}:1: the file starts with a UTF-8 byte-order mark (BOM), which JSON does not allow; "
            "save it as UTF-8 without BOM"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(
            f"{file}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


def load_jsonl(path: str | Path, instruction: str = "", metric: str | None = None) -> list[Sample]:
    """Read and check every row of a JSONL task file (suite validation calls it before any model loads)."""
    file = Path(path).expanduser().resolve()
    text = read_text_file(file)
    if not text.strip():
        raise UserError(
            f"{file}: the file is empty; expected one JSON object per line with context, question, answers"
        )
    samples: list[Sample] = []
    ids: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
        sample = _row_to_sample(row, where, line_no, instruction)
        if sample.id in ids:
            raise UserError(f"{where}: duplicate id {sample.id!r} (first on line {ids[sample.id]})")
        if metric == "classification" and not sample.all_classes:
            raise UserError(f"{where}: the classification metric needs 'all_classes' on every row")
        ids[sample.id] = line_no
        samples.append(sample)
    return samples


class JsonlTask:
    """Samples from a JSONL file, in file order (or a seeded shuffle), scored with ``metric``."""

    def __init__(
        self,
        name: str,
        path: str | Path,
        metric: str = "substring",
        instruction: str = "",
        shuffle: bool = False,
        seed: int = 0,
        limit: int | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        metrics.check_metric(metric)
        self.name = name
        self.metric = metric
        self.limit = limit
        self.max_new_tokens = max_new_tokens  #: None: the suite's generation.max_new_tokens
        self.path = Path(path).expanduser().resolve()
        self._samples = load_jsonl(self.path, instruction=instruction, metric=metric)
        for sample in self._samples:
            sample.max_new_tokens = max_new_tokens
        if shuffle:
            random.Random(f"jsonl:{seed}").shuffle(self._samples)
        order = f", shuffled with seed {seed}" if shuffle else ""
        self.data_source = f"jsonl: {self.path} ({len(self._samples)} rows{order})"

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        """Yield up to ``limit`` samples in the fixed order."""
        yield from self._samples[: limit if limit is not None else len(self._samples)]

    def score(self, prediction: str, sample: Sample) -> float:
        """Score with the task's metric (best over the gold answers)."""
        return metrics.score(self.metric, prediction, sample)


class JsonlTaskType(BaseTaskType):
    """``type: jsonl``: the user's own JSONL file, scored with a registered metric."""

    name = "jsonl"
    keys = {
        "path": Key("file", REQUIRED, help="a JSONL file; relative to the suite file's folder"),
        "metric": Key("metric", "substring"),
        "instruction": Key("text"),
        "shuffle": Key("bool", False),
        "max_new_tokens": MAX_NEW_TOKENS,
        "control": control_key(False),  # your data: add the no-context control when asked
    }

    def check(self, task: dict[str, Any], report: Callable[[str, str], None], ctx: TaskContext) -> None:
        """Read every row now, so data errors show (with file and line) before any model loads."""
        if "path" not in task or "metric" not in task:
            return
        try:
            load_jsonl(task["path"], instruction=task.get("instruction", ""), metric=task["metric"])
        except UserError as e:
            report("path", str(e))

    def build(self, task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> JsonlTask:
        """The task over the entry's file."""
        return JsonlTask(
            name=str(task["name"]),
            path=task["path"],
            metric=task["metric"],
            instruction=task.get("instruction", ""),
            shuffle=task["shuffle"],
            seed=suite.seed if suite is not None else 0,
            limit=task_limit(task, suite),
            max_new_tokens=task["max_new_tokens"],
        )
