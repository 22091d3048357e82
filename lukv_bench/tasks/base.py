"""Sample-based tasks: a task yields samples and scores predictions; :class:`SampleUnits` runs it.

Most task types (jsonl, longbench, needle, family, and plugins') build :class:`Task` objects; the
runner evaluates them through :class:`SampleUnits`, one unit per sample. Task types whose work is
not a sample sweep (lm-eval, latency) build a :class:`~lukv_bench.units.UnitSource` themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from lukv_bench.registry.task_contract import Key
from lukv_bench.runtime.engine import sweep
from lukv_bench.runtime.prompts import build_prompt, fit_prompt, model_max_positions
from lukv_bench.sample import Sample
from lukv_bench.units import Unit, UnitContext

if TYPE_CHECKING:
    from lukv_bench.config.schema import TaskContext
    from lukv_bench.config.suite import Suite
    from lukv_bench.records import Record

log = logging.getLogger(__name__)


@runtime_checkable
class Task(Protocol):
    """A named source of samples with a metric. ``data_source`` says exactly which data was used."""

    name: str
    metric: str
    data_source: str
    limit: int | None  #: samples a suite run uses (None: all); the runner passes it to ``samples``

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        """Yield up to ``limit`` samples in a fixed (seeded) order."""
        ...

    def score(self, prediction: str, sample: Sample) -> float:
        """Score one prediction in [0, 1] (or the metric's natural range)."""
        ...


class BaseTaskType:
    """Convenience base for task types: no keys and no cross-key checks unless a subclass declares them."""

    name: ClassVar[str] = ""
    keys: ClassVar[Mapping[str, Key]] = {}

    def check(self, task: dict[str, Any], report: Callable[[str, str], None], ctx: TaskContext) -> None:
        """Nothing beyond the schema."""


def task_limit(task: dict[str, Any], suite: Suite | None) -> int | None:
    """Samples to use: the entry's ``limit``, else the suite's (None: all)."""
    limit = task.get("limit")
    return limit if limit is not None else (suite.limit if suite is not None else None)


#: the ``max_new_tokens`` key of sample-based task types: tokens to generate per sample (None: the
#: suite's ``generation.max_new_tokens``)
MAX_NEW_TOKENS = Key("int", None, minimum=1, nullable=True)


class SampleUnits:
    """A sample-based :class:`Task` as a :class:`~lukv_bench.units.UnitSource`: one unit per sample.

    Evaluating a unit prefills its sample once and runs every cell of it on that prefill
    (:func:`~lukv_bench.runtime.engine.sweep`); ``reference_only`` (a no-context control) evaluates
    FullKV alone.
    """

    def __init__(self, task: Task, entry: str, reference_only: bool = False,
                 samples: list[Sample] | None = None) -> None:
        """``samples``: the task's samples when already generated (default: ``task.samples(task.limit)``)."""
        self.task = task
        self.name = task.name
        self.entry = entry
        self.reference_only = reference_only
        self.samples = {str(s.id): s for s in (samples if samples is not None else task.samples(task.limit))}

    def units(self) -> list[Unit]:
        """One unit per sample, in the task's sample order."""
        return [Unit(task=self.name, entry=self.entry, id=sid, samples=(sid,), reference_only=self.reference_only)
                for sid in self.samples]

    def evaluate(self, unit: Unit, ctx: UnitContext) -> Iterator[Record]:
        """Every cell of the unit's sample on one prefill; records batch by batch."""
        suite, engine, sample = ctx.suite, ctx.engine, self.samples[unit.id]
        max_new = sample.max_new_tokens or suite.max_new_tokens
        ids, original, used = fit_prompt(
            build_prompt(engine.tokenizer, sample, ctx.chat), model_max_positions(engine.model.config), max_new,
            suite.truncate, task=self.name, sample_id=str(sample.id), where=suite.where("truncate"),
        )
        outcomes = sweep(
            engine, ids.context, ids.question, ctx.cells(unit), ctx.full, compress=suite.compress,
            max_new_tokens=max_new, eos_ids=engine.eos_ids(), stop=suite.stop, batch_settings=suite.batch_settings,
        )
        for pre, out in outcomes:
            gen = out.generation
            meta = dict(sample.meta)
            warning = suite.budget_warning(out.budget.tokens, pre.n) if out.policy is not ctx.full else None
            if warning:
                meta["budget_warning"] = warning
                log.warning("%s %s: %s", self.name, sample.id, warning)
            rec = ctx.record(
                unit, sample.id, out.policy, out.budget_spec, score=self.task.score(gen.text, sample),
                metric=self.task.metric, prediction=gen.text, answers=sample.answers,
                data_source=self.task.data_source, meta=meta,
            ).set_outcome(pre, out)
            rec.context_tokens_original = pre.n + (original - used)  # what would have been prefilled
            yield rec
        if used < original:
            log.info("%s %s: prompt truncated from %d to %d tokens (%s)", self.name, sample.id, original, used,
                     suite.truncate)
