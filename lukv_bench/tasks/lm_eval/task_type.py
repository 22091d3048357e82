"""``type: lm_eval`` suite tasks: any lm-eval task, answered under every cell by lukv-bench's lm-eval model.

:class:`LmEvalTaskType` declares the keys (checked by :mod:`lukv_bench.config.schema`) and builds an
:class:`LmEvalTaskConfig`, whose units are its lm-eval tasks; evaluating one answers its requests with
:class:`~lukv_bench.tasks.lm_eval.model.LukvEvalLM` and scores each cell with lm-eval's own ``evaluate``.
With ``control: true`` each lm-eval task also gets its no-context control (``<entry>/<task>:no-context``):
FullKV on the same requests without the document's text before its question (for RULER: the question
without the instructions and the haystack), scored by lm-eval like the task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from lukv_bench.registry.task_contract import REQUIRED, Key
from lukv_bench.tasks.base import BaseTaskType, task_limit
from lukv_bench.tasks.control import control_key, control_name, is_control
from lukv_bench.tasks.lm_eval.loading import load_tasks, quiet_lm_eval_logs
from lukv_bench.tasks.lm_eval.logged import answers_of, data_source, metric_label, prediction_of, sample_score
from lukv_bench.tasks.lm_eval.model import DEFAULT_TAIL, SPLITS, LukvEvalLM
from lukv_bench.units import Unit, UnitContext

if TYPE_CHECKING:
    from lukv_bench.config.suite import Suite
    from lukv_bench.records import Record

__all__ = ["LmEvalTaskConfig", "LmEvalTaskType"]

log = logging.getLogger(__name__)


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
    #: where requests are cut: ``question`` (at the document's question, else the last ``tail`` tokens) or ``tail``
    split: str = "question"
    #: context tokens left uncompressed and fed after compression when the question is not used
    tail: int = DEFAULT_TAIL
    control: bool = False  #: add each lm-eval task's no-context control
    tokenizer_path: str = ""  #: the model's tokenizer folder (RULER generates its data with it)
    seed: int = 0  #: the suite's seed: documents that lm-eval generates (RULER) are drawn under it
    _tasks: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def lm_tasks(self) -> dict[str, Any]:
        """{lm-eval task name: Task}, loaded once (groups expanded)."""
        if self._tasks is None:
            lm_meta = self.lm_eval_metadata()
            path = self.tokenizer_path
            metadata = {**({"tokenizer": path, "pretrained": path} if path else {}), **lm_meta}
            self._tasks = load_tasks(self, metadata)
            if self.num_fewshot is not None:
                for task in self._tasks.values():
                    task.set_config(key="num_fewshot", value=self.num_fewshot)
        return self._tasks

    def units(self) -> list[Unit]:
        """One unit per lm-eval task (its records: ``<entry>/<lm-eval task>``, one per document), each followed by
        its no-context control (FullKV only) when the entry sets ``control``."""
        out = []
        for task_name, task in self.lm_tasks().items():
            n_docs = len(task.eval_docs)
            n = min(n_docs, int(self.limit)) if self.limit else n_docs
            samples = tuple(str(d) for d in range(n))
            out.append(Unit(task=f"{self.name}/{task_name}", entry=self.name, id=task_name, samples=samples))
            if self.control:
                out.append(Unit(task=control_name(f"{self.name}/{task_name}"), entry=self.name, id=task_name,
                                samples=samples, reference_only=True))
        return out

    def evaluate(self, unit: Unit, ctx: UnitContext) -> Iterator[Record]:
        """Answer every request of the unit's lm-eval task under all its cells at once (each shared context
        prefilled once, all cells batched), then score each cell with lm-eval's ``evaluate`` over the cached
        answers: one record per (document, cell)."""
        from lm_eval.evaluator import evaluate

        task_name, task = unit.id, self.lm_tasks()[unit.id]
        cells = ctx.cells(unit)
        control = is_control(unit.task)
        lm = LukvEvalLM(ctx.engine, cells, ctx.full, chat=ctx.chat, tail=self.tail, split=self.split,
                        batch_settings=ctx.suite.batch_settings, doc_text=task.doc_to_text if control else None)
        source = data_source(task_name, task, self.lm_eval_metadata())
        if control:
            source += " (no-context control: the requests without the document's text before its question)"
        with quiet_lm_eval_logs():
            for i, (policy, spec) in enumerate(cells):
                res = evaluate(lm.use(i), {task_name: task}, limit=self.limit, log_samples=True, bootstrap_iters=0,
                               apply_chat_template=ctx.chat)
                written: set[Any] = set()
                for s in (res or {}).get("samples", {}).get(task_name, []):
                    doc_id = s["doc_id"]
                    if doc_id in written:  # one record per doc: the first filter's
                        continue
                    written.add(doc_id)
                    yield self._record(unit, ctx, lm, i, policy, spec, task, s, source)

    def _record(self, unit: Unit, ctx: UnitContext, lm: LukvEvalLM, i: int, policy: Any, spec: Any, task: Any,
                s: dict[str, Any], source: str) -> Record:
        """The record of one logged sample under cell ``i``."""
        doc_id = s["doc_id"]
        doc = s.get("doc") if isinstance(s.get("doc"), dict) else {}
        metric, value = sample_score(s)
        meta = {"lm_eval_task": unit.id, "lm_eval_metric": metric, "lm_eval_filter": s.get("filter"),
                **({"max_length": doc["max_length"]} if "max_length" in doc else {})}
        if is_control(unit.task):
            meta["control"] = "no-context"
        rec = ctx.record(
            unit, doc_id, policy, spec, score=value, metric=metric_label(metric, doc),
            prediction=prediction_of(task, s.get("doc"), s.get("filtered_resps")),
            answers=answers_of(task, s.get("doc"), s.get("target")), data_source=source, meta=meta,
        )
        answers = lm.doc_answers(unit.id, doc_id)
        if answers is not None:
            a = answers[i]
            rec.set_outcome(a.pre, a.outcome)
            rec.context_tokens = a.pre.n + a.pre.tail
            rec.context_tokens_original = rec.context_tokens
            # the cache also holds the uncompressed tail, fed after compression: count it on both sides
            per_token = rec.kv_bytes_full // a.pre.n
            rec.kv_bytes += a.pre.tail * per_token
            rec.kv_bytes_full += a.pre.tail * per_token
            meta.update(a.extra)
            warning = ctx.suite.budget_warning(a.outcome.budget.tokens, a.pre.n) if policy is not ctx.full else None
            if warning:
                meta["budget_warning"] = warning
        else:
            log.warning("no answers recorded for %s doc %s: cost fields left empty", unit.id, doc_id)
        return rec

    def lm_eval_metadata(self) -> dict[str, Any]:
        """The ``metadata`` dict for lm-eval (``max_seq_lengths`` merged in when set)."""
        meta = dict(self.metadata)
        if self.max_seq_lengths is not None:
            meta["max_seq_lengths"] = list(self.max_seq_lengths)
        return meta


class LmEvalTaskType(BaseTaskType):
    """``type: lm_eval``: lm-eval tasks run through lukv-bench's lm-eval model (one entry, many lm-eval tasks)."""

    name = "lm_eval"
    #: suite-level settings this type does not apply, with the value it behaves as (None: no value does) and why;
    #: a suite that sets one to another value is refused
    ignored_settings: ClassVar[dict[str, tuple[str | None, str]]] = {
        "compress": ("context", "always compresses a request's context before its question (or its last `tail` "
                                "tokens, see `split`) and feeds the rest after compression (the `compress: context` "
                                "protocol)"),
        "truncate": (None, "left-truncates requests longer than the model's positions, as lm-eval does"),
    }
    keys = {
        "tasks": Key("list[str]", REQUIRED, help="lm-eval task names, e.g. [niah_single_1]"),
        "max_seq_lengths": Key("list[int]", minimum=1),
        "num_fewshot": Key("int", minimum=0, nullable=True),
        "include_path": Key("folder"),
        "metadata": Key("map"),
        "split": Key("str", "question", choices=SPLITS),
        "tail": Key("int", DEFAULT_TAIL, minimum=0),
        "control": control_key(False),  # lm-eval tasks: only where the question is found (RULER, question fields)
    }

    def build(self, task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> LmEvalTaskConfig:
        """The entry's units: one per lm-eval task."""
        return LmEvalTaskConfig(
            name=str(task["name"]),
            tasks=list(task["tasks"]),
            max_seq_lengths=list(task["max_seq_lengths"]) if task.get("max_seq_lengths") else None,
            num_fewshot=task.get("num_fewshot"),
            limit=task_limit(task, suite),
            include_path=task.get("include_path"),
            metadata=dict(task.get("metadata") or {}),
            split=task["split"],
            tail=task["tail"],
            control=bool(task["control"]),
            tokenizer_path=str(getattr(tokenizer, "name_or_path", "") or ""),
            seed=int(suite.seed) if suite is not None else 0,
        )
