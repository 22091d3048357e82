"""The cost summary of ``type: latency`` records: figures per length, growth exponents, memory-limited context.

Latency records (metric ``latency``, see :mod:`lukv_bench.tasks.latency`) are grouped per (model,
task) into one :class:`CostSeries` per (policy, budget), its points ordered by context length. For
each series a power law ``y = A * n^k`` is fitted by least squares on ``log y`` vs ``log n`` (decode
ms/token, peak memory while decoding, prefill seconds) when it was measured at three lengths or more (two
points always lie on a line: no exponent, no spread), with the exponent's standard error and 95%
interval (``scipy.stats.linregress``, Student's t with n - 2 degrees of freedom), and the memory fit gives
the longest context whose decoding fits in the task's ``memory_limit_gb`` — beyond the lengths measured that is an
extrapolation with the fitted exponent, and the report says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from lukv_bench.report.summary import budget_key, budget_label, order_policies
from lukv_bench.runtime.contract import FULL

METRIC = "latency"  #: the metric of latency records (lukv_bench.tasks.latency.METRIC)
GIB = 2**30
DEFAULT_MEMORY_LIMIT_GB = 1.0
MIN_FIT_LENGTHS = 3  #: distinct lengths a growth exponent needs (two points always lie on a line)


def is_cost_record(rec: dict[str, Any]) -> bool:
    """Whether a record comes from a latency task."""
    return rec.get("metric") == METRIC


@dataclass
class CostPoint:
    """One (policy, budget) setting at one context length; ``*_ratio`` are relative to FullKV."""

    length: int
    kv_bytes: float
    kv_ratio: float | None
    peak_mem_bytes: float
    peak_ratio: float | None
    prefill_peak_bytes: float
    prefill_peak_ratio: float | None
    prefill_s: float
    prefill_ratio: float | None
    compress_s: float
    compress_share: float | None
    decode_ms: float
    decode_ratio: float | None
    tokens_per_s: float
    decode_cpu_ms: float | None = None  #: process CPU time per decode step (CPU device only)
    decode_cpu_ratio: float | None = None
    prefill_cpu_s: float | None = None
    prefill_cpu_ratio: float | None = None

    @classmethod
    def of(cls, rec: dict[str, Any]) -> CostPoint:
        """The point of one (measured, not skipped) latency record."""
        meta = rec.get("meta") or {}
        vs = meta.get("vs_full") or {}
        return cls(
            length=int(rec.get("context_tokens") or meta["length"]), kv_bytes=rec["kv_bytes"],
            kv_ratio=vs.get("kv_bytes"), peak_mem_bytes=rec["peak_mem_bytes"], peak_ratio=vs.get("peak_mem_bytes"),
            prefill_peak_bytes=rec["prefill_peak_mem_bytes"], prefill_peak_ratio=vs.get("prefill_peak_mem_bytes"),
            prefill_s=rec["prefill_s"],
            prefill_ratio=vs.get("prefill_s"), compress_s=rec["compress_s"], compress_share=meta.get("compress_share"),
            decode_ms=meta["decode_ms_per_token"], decode_ratio=vs.get("decode_ms_per_token"),
            tokens_per_s=meta["tokens_per_s"], decode_cpu_ms=meta.get("decode_cpu_ms_per_token"),
            decode_cpu_ratio=vs.get("decode_cpu_ms_per_token"), prefill_cpu_s=meta.get("prefill_cpu_s"),
            prefill_cpu_ratio=vs.get("prefill_cpu_s"),
        )


@dataclass
class Fit:
    """``y = exp(log_a) * n ** k``, fitted on log-log over ``n_points`` lengths."""

    k: float
    log_a: float
    n_points: int
    r2: float  #: share of the variance of log y the fit explains (1: a straight line on log-log)
    k_se: float  #: standard error of ``k``
    k_ci: tuple[float, float]  #: 95% interval of ``k`` (Student's t, ``n_points - 2`` degrees of freedom)

    def solve(self, y: float) -> float | None:
        """The ``n`` at which the fit reaches ``y`` (None when it never grows)."""
        if self.k <= 0:
            return None
        return math.exp((math.log(y) - self.log_a) / self.k)


def fit_power(xs: Sequence[float], ys: Sequence[float]) -> Fit | None:
    """Least-squares fit of ``log y = log_a + k log x`` with the spread of ``k``; None with fewer than
    :data:`MIN_FIT_LENGTHS` distinct positive x."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len({x for x, _ in pts}) < MIN_FIT_LENGTHS:
        return None
    lx, ly = [x for x, _ in pts], [y for _, y in pts]
    if len(set(ly)) == 1:  # a flat series: linregress leaves r undefined, the fit is exact
        return Fit(k=0.0, log_a=ly[0], n_points=len(pts), r2=1.0, k_se=0.0, k_ci=(0.0, 0.0))
    res = stats.linregress(lx, ly)
    half = float(stats.t.ppf(0.975, len(pts) - 2)) * res.stderr
    return Fit(k=float(res.slope), log_a=float(res.intercept), n_points=len(pts), r2=float(res.rvalue) ** 2,
               k_se=float(res.stderr), k_ci=(float(res.slope - half), float(res.slope + half)))


@dataclass
class Reach:
    """The longest context whose memory fits a limit, from a fit: ``tokens`` and whether it is extrapolated."""

    tokens: float | None  #: None: the fitted memory does not grow with the context
    extrapolated: bool
    beyond_model: bool  #: more than the model's positions


@dataclass
class CostSeries:
    """One (policy, budget) setting across context lengths."""

    policy: str
    budget: Any
    points: list[CostPoint]

    @property
    def label(self) -> str:
        """``FullKV`` or ``policy @ budget``."""
        return "FullKV" if self.policy == FULL else f"{self.policy} @ {budget_label(self.budget)}"

    @property
    def lengths(self) -> list[int]:
        """The context lengths measured, ascending."""
        return [p.length for p in self.points]

    def fit(self, figure: str) -> Fit | None:
        """Power-law fit of one :class:`CostPoint` figure (``decode_ms``, ``peak_mem_bytes``, ``prefill_s``...)."""
        pts = [(p.length, getattr(p, figure)) for p in self.points if getattr(p, figure) is not None]
        return fit_power([n for n, _ in pts], [y for _, y in pts])

    def at(self, length: int) -> CostPoint | None:
        """The point at ``length`` (None if not measured)."""
        return next((p for p in self.points if p.length == length), None)

    def reach(self, figure: str, limit_bytes: float, max_positions: int | None) -> Reach | None:
        """The longest context at which ``figure`` (a memory figure) stays within ``limit_bytes``."""
        fit = self.fit(figure)
        if fit is None:
            return None
        n = fit.solve(limit_bytes)
        if n is None:
            return Reach(None, True, False)
        lo, hi = min(self.lengths), max(self.lengths)
        return Reach(n, not lo <= n <= hi, max_positions is not None and n > max_positions)


@dataclass
class CostSummary:
    """Everything the report says about one latency task of one model."""

    model: str
    task: str
    series: list[CostSeries]  #: FullKV first, then policies in display order, budgets ascending
    memory_limit_gb: float
    data_source: str
    skipped: list[str] = field(default_factory=list)  #: one line per length skipped at run time
    meta: dict[str, Any] = field(default_factory=dict)  #: device, threads, repeats, warmup, method...

    @property
    def full(self) -> CostSeries | None:
        """The FullKV series."""
        return next((s for s in self.series if s.policy == FULL), None)

    @property
    def lengths(self) -> list[int]:
        """Every length measured by some series, ascending."""
        return sorted({n for s in self.series for n in s.lengths})

    @property
    def has_cpu_time(self) -> bool:
        """Whether the points carry CPU-time figures (runs on a CPU device)."""
        return any(p.decode_cpu_ms is not None for s in self.series for p in s.points)

    @property
    def limit_bytes(self) -> float:
        """The memory limit in bytes."""
        return self.memory_limit_gb * GIB


def _memory_limit(run: dict[str, Any], task: str) -> float:
    suite = run.get("suite") if isinstance(run.get("suite"), dict) else {}
    for t in suite.get("tasks") or []:
        if isinstance(t, dict) and t.get("name") == task and isinstance(t.get("memory_limit_gb"), (int, float)):
            return float(t["memory_limit_gb"])
    return DEFAULT_MEMORY_LIMIT_GB


def _budget_order(budget: Any) -> tuple[float, str]:
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return float(budget), ""
    return math.inf, budget_key(budget)


def summarize_cost(records: Sequence[dict[str, Any]], run: dict[str, Any] | None = None) -> list[CostSummary]:
    """Group latency records by (model, task); ``run`` (run.json) gives each task's ``memory_limit_gb``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if is_cost_record(r):
            groups[(str(r.get("model")), str(r.get("task")))].append(r)
    out = []
    for (model, task), recs in groups.items():
        metas = [r.get("meta") or {} for r in recs]
        skipped = sorted({str(m["skipped"]) for m in metas if m.get("skipped")})
        measured = [r for r, m in zip(recs, metas) if not m.get("skipped") and r.get("decode_s") is not None]
        cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in measured:
            cells[(str(r.get("policy")), budget_key(r.get("budget")))].append(r)
        series = [
            CostSeries(p, rs[0].get("budget"), sorted((CostPoint.of(r) for r in rs), key=lambda pt: pt.length))
            for (p, _), rs in cells.items()
        ]
        rank = {p: i for i, p in enumerate(order_policies(s.policy for s in series))}
        series.sort(key=lambda s: (rank[s.policy], _budget_order(s.budget)))
        first = (measured or recs)[0]
        meta = first.get("meta") or {}
        info = {k: meta.get(k) for k in ("device", "threads", "repeats", "warmup", "max_positions", "peak_mem_method",
                                         "cpu_time")}
        info["new_tokens"] = first.get("new_tokens")
        out.append(CostSummary(
            model=model, task=task, series=series, memory_limit_gb=_memory_limit(run or {}, task),
            data_source=str(first.get("data_source") or ""), skipped=skipped, meta=info,
        ))
    return out
