"""``type: latency`` suite tasks: memory and latency of each (policy, budget) at several context lengths.

Suite entry::

    - name: cost
      type: latency
      lengths: [1024, 2048, 4096, 8000]   # prompt tokens of real prose (Python's language reference)
      new_tokens: 64                      # tokens decoded per run (the first comes from the prefill)
      repeats: 3                          # timed runs; figures are their median
      warmup: 1                           # untimed runs before them
      memory_limit_gb: 1.0                # report setting: longest context that fits in this much memory

For every length x policy x budget one :class:`~lukv_bench.records.Record` is written (sample id
``len<N>``, metric ``latency``, no score). Each cell runs **alone** (batch 1), as a user serving
one policy would: per run, compress the captured prefill, then decode ``new_tokens`` greedily (no
stop on EOS, so every run decodes the same number of tokens). What is measured:

* ``prefill_s``: median over the repeats of the capture prefill (once per set of statistics the
  policies need: H2O's accumulated attention makes its prefill slower, so it gets its own);
* ``compress_s``: median of the cell's compression (scoring, allocation, gathering the kept rows);
  ``meta.compress_share`` = compress_s / prefill_s;
* ``decode_s``: median wall time of the ``new_tokens - 1`` decode forwards;
  ``meta.decode_ms_per_token`` and ``meta.tokens_per_s`` follow from it;
* on CPU also the process CPU time of the same runs (``meta.prefill_cpu_s``,
  ``meta.decode_cpu_ms_per_token``): on a machine shared with other jobs, wall time includes the
  waits for a core and CPU time does not;
* ``kv_bytes``: bytes of the kept K/V, measured from the cache's buffers (``kv_bytes_full``: FullKV's);
* ``peak_mem_bytes``: memory while decoding = the bytes of the cache's buffers (kept tokens plus the
  room reserved for the new ones) + the peak of what one more decode step allocates, measured by
  :class:`~lukv_bench.runtime.memory.AllocationPeak` (CUDA: the allocator's peak; CPU: the CPU allocator's
  events recorded by ``torch.profiler``) on an untimed step after the timed runs. Model weights are
  not counted. ``prefill_peak_mem_bytes``: the peak the prefill allocates, measured the same way on
  the first warmup run (an extra untimed run when ``warmup`` is 0). ``meta.peak_mem_method`` says how.

Every figure is also given relative to FullKV measured at the same length in the same process
(``meta.vs_full``; FullKV's own ratios are 1). Lengths the model cannot hold (``length + new_tokens``
above its positions) are refused when the suite loads if the model's config can be read then,
otherwise skipped at run time with a record whose ``meta.skipped`` says why.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lukv_bench.data.corpus import CORPUS_VERSION, SOURCE, reference_text_ids
from lukv_bench.registry.task_contract import REQUIRED, Key
from lukv_bench.runtime.contract import Budget, captured_needs
from lukv_bench.runtime.engine import evicts_while_decoding
from lukv_bench.runtime.memory import AllocationPeak
from lukv_bench.runtime.prompts import model_max_positions
from lukv_bench.tasks.base import BaseTaskType
from lukv_bench.units import Unit, UnitContext

if TYPE_CHECKING:
    from lukv_bench.config.schema import TaskContext
    from lukv_bench.config.suite import Suite
    from lukv_bench.records import Record
    from lukv_bench.runtime.engine import Engine, Prefill

__all__ = ["METRIC", "LatencyTaskConfig", "LatencyTaskType", "sample_id"]

log = logging.getLogger(__name__)

METRIC = "latency"
MIN_LENGTH = 16
#: figures given relative to FullKV in ``meta.vs_full``
RATIO_FIGURES = (
    "kv_bytes", "peak_mem_bytes", "prefill_peak_mem_bytes", "prefill_s", "compress_s", "decode_ms_per_token",
    "tokens_per_s", "prefill_cpu_s", "decode_cpu_ms_per_token",
)
CPU_TIME_NOTE = (
    "CPU time: time.process_time() of the same timed runs (CPU device only). On a machine shared with other "
    "jobs it counts the work done, not the waiting for a core, so it is the steadier figure there"
)


@dataclass
class LatencyTaskConfig:
    """One ``type: latency`` entry, checked by :class:`LatencyTaskType`: one unit per context length.

    Its units run *alone* (they measure the machine); each measures every cell of the unit one at a
    time, and FullKV at the same length in the same process, since every ratio compares the two.
    """

    name: str  #: the suite's name for this entry (the task of its records)
    lengths: list[int]  #: prompt lengths in tokens
    new_tokens: int = 64
    repeats: int = 3
    warmup: int = 1
    memory_limit_gb: float = 1.0  #: report setting: the longest context that fits in this much memory
    data_source: str = field(default=SOURCE, init=False)
    _ids: list[int] | None = field(default=None, init=False, repr=False)

    def units(self) -> list[Unit]:
        """One unit per length (sample id ``len<N>``), each to run alone."""
        return [Unit(task=self.name, entry=self.name, id=sample_id(n), samples=(sample_id(n),), alone=True)
                for n in self.lengths]

    def evaluate(self, unit: Unit, ctx: UnitContext) -> Iterator[Record]:
        """Measure the unit's cells at its length; one record each."""
        length = next(n for n in self.lengths if sample_id(n) == unit.id)
        # each cell alone, as before buffer arenas: fresh buffers for every cache, none held idle beside them
        with ctx.engine.without_arena():
            yield from _measure_length(self, unit, ctx, length)

    def text_ids(self, tokenizer: Any) -> list[int]:
        """The reference text's ids for the longest length, tokenized once: each prompt is a prefix of it."""
        if self._ids is None:
            self._ids = reference_text_ids(tokenizer, max(self.lengths))
        return self._ids


class LatencyTaskType(BaseTaskType):
    """``type: latency``: memory and latency of every (policy, budget) at several context lengths."""

    name = "latency"
    keys = {
        "lengths": Key("list[int]", REQUIRED, minimum=MIN_LENGTH, unique=True,
                       help=f"prompt lengths in tokens, e.g. [1024, 2048, 4096]; each >= {MIN_LENGTH}"),
        "new_tokens": Key("int", 64, minimum=2),
        "repeats": Key("int", 3, minimum=1),
        "warmup": Key("int", 1, minimum=0),
        "memory_limit_gb": Key("number", 1.0),
    }

    def check(self, task: dict[str, Any], report: Callable[[str, str], None], ctx: TaskContext) -> None:
        """A positive memory limit; lengths the model can hold (when its config can be read now)."""
        limit = task.get("memory_limit_gb")
        if limit is not None and not 0 < limit < math.inf:
            report("memory_limit_gb", f"expected a number of GiB > 0 (e.g. 1.0), got {limit}")
        model = ctx.settings.get("model")
        new, lengths = task.get("new_tokens"), task.get("lengths")
        if not isinstance(model, str) or new is None or lengths is None:
            return
        from lukv_bench.runtime.models import config_max_positions

        max_pos = config_max_positions(model)
        if max_pos is None:
            return  # checked at run time, with the model loaded
        for j, n in enumerate(lengths):
            if n + new > max_pos:
                report(f"lengths[{j}]", f"{n} prompt tokens + new_tokens {new} exceed the model's {max_pos} "
                       f"positions; use lengths <= {max_pos - new}")

    def data_version(self, task: dict[str, Any]) -> str:
        """The prompts are prefixes of the reference text, which changes with the Python release."""
        return CORPUS_VERSION

    def build(self, task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> LatencyTaskConfig:
        """The entry's units: one per length."""
        return LatencyTaskConfig(
            name=str(task["name"]), lengths=list(task["lengths"]), new_tokens=task["new_tokens"],
            repeats=task["repeats"], warmup=task["warmup"], memory_limit_gb=float(task["memory_limit_gb"]),
        )


# -- measuring --------------------------------------------------------------------------------------


def sample_id(length: int) -> str:
    """The sample id of a length's records (``len1024``)."""
    return f"len{length}"


@dataclass
class _PrefillFigures:
    pre: Prefill
    prefill_s: float  #: median of the timed runs
    samples: list[float]
    peak: int  #: bytes the prefill allocated at its peak (memory pass)
    cpu_s: float | None  #: median process CPU seconds of the timed runs (None on a GPU)
    cpu_samples: list[float]


@dataclass
class _Figures:
    """What one cell measured at one length (the record's cost fields and meta)."""

    kv_bytes: int
    kv_bytes_full: int
    prefill_s: float
    prefill_peak_mem_bytes: int
    compress_s: float
    decode_s: float
    decode_ms_per_token: float
    tokens_per_s: float
    peak_mem_bytes: int
    prefill_cpu_s: float | None
    decode_cpu_ms_per_token: float | None
    layer_budgets: list[int]
    kept_tokens_mean: float
    meta: dict[str, Any]

    def value(self, name: str) -> float | None:
        v = getattr(self, name)
        return None if v is None else float(v)


def _timed_prefills(engine: Engine, ids: torch.Tensor, needs: frozenset[str], task: LatencyTaskConfig,
                    ) -> _PrefillFigures:
    """A memory pass (the first warmup run), the other warmup runs, then ``repeats`` timed prefills."""
    with AllocationPeak(engine.device) as mem:
        pre = engine.prefill(ids, needs)
    for _ in range(task.warmup - 1):
        pre = None
        pre = engine.prefill(ids, needs)
    samples, cpu = [], []
    for _ in range(task.repeats):
        pre = None  # free the previous capture before the next one
        c0 = time.process_time()
        pre = engine.prefill(ids, needs)
        cpu.append(time.process_time() - c0)
        samples.append(pre.prefill_s)
    on_cpu = engine.device.type == "cpu"
    return _PrefillFigures(pre, statistics.median(samples), samples, mem.peak,
                           statistics.median(cpu) if on_cpu else None, cpu if on_cpu else [])


def _measure_setting(engine: Engine, pf: _PrefillFigures, policy, budget: Budget, task: LatencyTaskConfig,
                     ) -> _Figures:
    """Compress and decode one cell alone, ``warmup`` + ``repeats`` times; then measure one step's memory."""
    pre = pf.pre
    evicting = evicts_while_decoding(policy, budget, pre.n)
    compress_s, decode_s, decode_cpu = [], [], []
    for run in range(task.warmup + task.repeats):
        cache = None  # free the previous run's cache first
        cache, comps = engine.compress(pre, [(policy, budget)], headroom=task.new_tokens + 1)
        hook = engine.decode_hook(policy, cache, 0) if evicting else None
        c0 = time.process_time()
        gen = engine.generate(cache, pre.last_logits, task.new_tokens, decode_hooks=[hook])[0]
        c1 = time.process_time()
        if run >= task.warmup:
            compress_s.append(comps[0].compress_s)
            decode_s.append(gen.decode_s)
            decode_cpu.append(c1 - c0)
    comp = comps[0]
    held = cache.kv_bytes()  # the buffers as allocated: kept rows + room for the new tokens
    with AllocationPeak(engine.device) as mem:  # one more step, untimed: the cache is at its longest
        engine.feed(cache, [gen.tokens[-1]])
        if hook is not None:
            hook(cache, 0, len(gen.tokens))
    steps = len(gen.tokens) - 1  # the first token comes from the prefill's logits
    dec = statistics.median(decode_s)
    ms = 1000.0 * dec / max(1, steps)
    cpu_ms = 1000.0 * statistics.median(decode_cpu) / max(1, steps) if pf.cpu_s is not None else None
    return _Figures(
        kv_bytes=comp.kv_bytes, kv_bytes_full=comp.kv_bytes_full, prefill_s=pf.prefill_s,
        prefill_peak_mem_bytes=pf.peak, compress_s=statistics.median(compress_s), decode_s=dec,
        decode_ms_per_token=ms, tokens_per_s=1000.0 / ms if ms > 0 else math.inf,
        peak_mem_bytes=held + mem.peak, prefill_cpu_s=pf.cpu_s, decode_cpu_ms_per_token=cpu_ms,
        layer_budgets=comp.layer_budgets, kept_tokens_mean=comp.kept_tokens_mean,
        meta={
            "decode_steps": steps,
            "cache_buffer_bytes": held,
            "decode_step_peak_bytes": mem.peak,
            "peak_mem_method": (
                f"cache buffers (kept K/V + room for new tokens) + peak one decode step allocates: {mem.method}; "
                "prefill peak: the same method over the first warmup prefill; weights not counted"
            ),
            "samples": {"prefill_s": pf.samples, "compress_s": compress_s, "decode_s": decode_s,
                        "prefill_cpu_s": pf.cpu_samples, "decode_cpu_s": decode_cpu if cpu_ms is not None else []},
            "budget_tokens": budget.tokens,
        },
    )


def _ratios(fig: _Figures, full: _Figures) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in RATIO_FIGURES:
        ref, v = full.value(name), fig.value(name)
        out[name] = v / ref if v is not None and ref and math.isfinite(ref) else None
    return out


def _measure_length(task: LatencyTaskConfig, unit: Unit, ctx: UnitContext, length: int) -> Iterator[Record]:
    """Measure every cell of ``unit`` at ``length`` tokens, FullKV first (every ratio's reference)."""
    engine, full = ctx.engine, ctx.full
    cells = ctx.cells(unit)
    sid = unit.samples[0]
    common = {"score": None, "metric": METRIC, "prediction": "", "answers": [], "data_source": task.data_source,
              "batch_size": 1}
    max_pos = model_max_positions(engine.model.config)
    if max_pos is not None and length + task.new_tokens > max_pos:
        why = f"{length} prompt tokens + new_tokens {task.new_tokens} exceed the model's {max_pos} positions"
        log.warning("%s %s: %s", task.name, sid, why)
        for p, b in cells:
            yield ctx.record(unit, sid, p, b, **common, meta={"length": length, "skipped": why})
        return
    env = {"device": str(engine.device), "threads": torch.get_num_threads(), "max_positions": max_pos}
    ids = torch.tensor([task.text_ids(engine.tokenizer)[:length]])

    # one prefill measurement per kind of capture, FullKV's first (it is every ratio's reference); the
    # capture always records the window statistics, only the optional ones (H2O's accumulated attention, ...)
    # change the prefill
    def capture(policy) -> frozenset[str]:
        return captured_needs(policy.needs)

    groups: dict[frozenset[str], list[tuple[object, Any]]] = {capture(full): []}
    for p, b in cells:
        groups.setdefault(capture(p), []).append((p, b))
    full_fig: _Figures | None = None
    for needs, members in groups.items():
        pf = _timed_prefills(engine, ids, needs, task)
        if full_fig is None:
            full_fig = _measure_setting(engine, pf, full, Budget.resolve(1.0, pf.pre.n), task)
        for p, spec in members:
            budget = Budget.resolve(spec, pf.pre.n)
            fig = full_fig if p is full else _measure_setting(engine, pf, p, budget, task)
            meta = {
                "length": length, **env, "repeats": task.repeats, "warmup": task.warmup,
                "decode_ms_per_token": fig.decode_ms_per_token, "tokens_per_s": fig.tokens_per_s,
                "decode_cpu_ms_per_token": fig.decode_cpu_ms_per_token, "prefill_cpu_s": fig.prefill_cpu_s,
                "cpu_time": CPU_TIME_NOTE if fig.prefill_cpu_s is not None else None,
                "compress_share": fig.compress_s / fig.prefill_s if fig.prefill_s else None,
                "prefill_needs": sorted(needs), "vs_full": _ratios(fig, full_fig), **fig.meta,
            }
            yield ctx.record(
                unit, sid, p, spec, **common, budget_ratio=budget.ratio,
                budget_tokens_mean=round(fig.kept_tokens_mean, 2), context_tokens=pf.pre.n,
                context_tokens_original=length, layer_budgets=fig.layer_budgets, kv_bytes=fig.kv_bytes,
                kv_bytes_full=fig.kv_bytes_full, prefill_s=fig.prefill_s, compress_s=fig.compress_s,
                decode_s=fig.decode_s, new_tokens=task.new_tokens, peak_mem_bytes=fig.peak_mem_bytes,
                prefill_peak_mem_bytes=fig.prefill_peak_mem_bytes, meta=meta,
            )
        del pf  # the next group's prefill should not run beside this one's K/V
