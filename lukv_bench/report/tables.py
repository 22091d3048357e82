"""The report's numbers as machine-readable tables: ``summary.csv``, ``cost.csv`` and ``summary.json``.

:func:`write_tables` writes them next to ``report.md`` so that nobody has to parse Markdown. Numbers keep
their full precision (the report rounds them for reading); a missing value is an empty CSV field and
``null`` in JSON.

``summary.csv`` (and ``summary.json["cells"]``): one row per quality cell, plus one ``reference`` row
(FullKV) and one ``control`` row (FullKV without the context, when the task ran one) per (model, task).
The columns are :data:`CELL_COLUMNS` (each with its meaning; ``summary.json["columns"]["cells"]`` repeats
them): where the cell comes from (model, task, metric, role, policy, budget), its size and mean score with
the 95% interval, the paired difference to FullKV and to the suite's proposed policy (``report.proposed``)
with wins, losses, ties, exact raw p, Holm-adjusted p and whether that adjusted p is below 0.05, fidelity
(KL, greedy agreement) and cost (kv_bytes and latency relative to FullKV, mean seconds).

``cost.csv`` (and ``summary.json["cost"]``), written only when the results hold latency tasks: one row per
(model, task, setting, context length), columns :data:`COST_COLUMNS`. ``summary.json["growth"]``: one row per
(setting, figure) with the fitted growth exponent, its standard error and 95% interval, R² and the number
of lengths, columns :data:`GROWTH_COLUMNS` (only figures measured at three lengths or more get a fit).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lukv_bench.report.cost import CostSummary
from lukv_bench.report.summary import FULL, Cell, Paired, TaskSummary, budget_label

SUMMARY_CSV = "summary.csv"
COST_CSV = "cost.csv"
SUMMARY_JSON = "summary.json"

#: the columns of ``summary.csv``: name -> meaning
CELL_COLUMNS: dict[str, str] = {
    "model": "model name as recorded",
    "task": "task name (a LongBench subset as task/subset)",
    "metric": "the task's metric",
    "role": "policy (a compressing policy's cell), reference (FullKV) or control (FullKV without the context)",
    "policy": "policy name (name@setting when one name ran under several settings)",
    "budget": "budget as written in the suite (a ratio of the context, or N tok); empty for reference/control",
    "budget_ratio": "measured mean tokens kept / context over the cell's records",
    "n": "samples in the cell",
    "mean_score": "mean score over the cell's samples",
    "ci_low": "lower end of the 95% interval of the mean score (empty: one sample, or every score equal)",
    "ci_high": "upper end of that interval",
    "ci_method": "wilson (every score of the task is 0 or 1) or bca (bootstrap); empty when there is no interval",
    "diff_vs_full": "mean over the shared samples of (policy - FullKV)",
    "wins_vs_full": "samples where the policy scored higher than FullKV",
    "losses_vs_full": "samples where it scored lower",
    "ties_vs_full": "samples with equal scores",
    "p_vs_full": "raw two-sided p of the exact paired test (sign test for 0/1 scores, sign-flip permutation otherwise)",
    "p_holm_vs_full": "that p Holm-adjusted over the task's table of tests against FullKV",
    "significant_vs_full": "true when p_holm_vs_full < 0.05",
    "proposed": "the suite's proposed policy (report.proposed); empty when none",
    "diff_vs_proposed": "mean over the shared samples of (policy - proposed) at the same budget",
    "wins_vs_proposed": "samples where the policy scored higher than the proposed one",
    "losses_vs_proposed": "samples where it scored lower",
    "ties_vs_proposed": "samples with equal scores",
    "p_vs_proposed": "raw two-sided p of the exact paired test against the proposed policy",
    "p_holm_vs_proposed": "that p Holm-adjusted over the task's table of tests against the proposed policy",
    "significant_vs_proposed": "true when p_holm_vs_proposed < 0.05",
    "kl_mean": "mean KL divergence of the policy's next-token distribution to FullKV's (teacher-forced)",
    "greedy_agreement": "mean share of decode steps whose greedy token equals FullKV's",
    "kv_bytes_ratio": "mean kv_bytes / kv_bytes_full",
    "latency_ratio": "(compress + decode seconds) / FullKV decode seconds (the shared prefill left out); policy rows",
    "prefill_s": "mean prefill seconds",
    "compress_s": "mean compression seconds",
    "decode_s": "mean decode seconds (the cell's share of the batched decode)",
}

#: the columns of ``cost.csv``: name -> meaning
COST_COLUMNS: dict[str, str] = {
    "model": "model name as recorded",
    "task": "latency task name",
    "policy": "policy name",
    "budget": "budget as written in the suite",
    "setting": "FullKV or policy @ budget",
    "context_tokens": "prompt length in tokens",
    "kv_bytes": "bytes of the kept K/V",
    "kv_ratio": "kv_bytes / FullKV's at the same length",
    "peak_mem_bytes": "peak memory while decoding (weights not counted)",
    "peak_ratio": "peak_mem_bytes / FullKV's",
    "prefill_peak_bytes": "peak memory of the prefill",
    "prefill_s": "median prefill seconds",
    "prefill_ratio": "prefill_s / FullKV's",
    "compress_s": "median compression seconds",
    "compress_share": "compress_s / prefill_s",
    "decode_ms_per_token": "median wall milliseconds per decode step",
    "decode_ratio": "decode_ms_per_token / FullKV's",
    "tokens_per_s": "decoded tokens per second",
    "decode_cpu_ms_per_token": "process CPU milliseconds per decode step (CPU device only)",
}

#: the columns of ``summary.json["growth"]``: name -> meaning
GROWTH_COLUMNS: dict[str, str] = {
    "model": "model name as recorded",
    "task": "latency task name",
    "setting": "FullKV or policy @ budget",
    "figure": "decode_ms, decode_cpu_ms, peak_mem_bytes, prefill_peak_bytes or prefill_s",
    "k": "fitted exponent of figure ∝ n^k (least squares on log-log)",
    "k_se": "standard error of k",
    "k_ci_low": "lower end of the 95% interval of k (Student's t, lengths - 2 degrees of freedom)",
    "k_ci_high": "upper end of that interval",
    "r2": "share of the variance of log figure the fit explains",
    "lengths": "context lengths the fit used (3 or more)",
}

GROWTH_FIGURES = ("decode_ms", "decode_cpu_ms", "peak_mem_bytes", "prefill_peak_bytes", "prefill_s")


def _paired(pair: Paired | None, suffix: str) -> dict[str, Any]:
    keys = ("diff", "wins", "losses", "ties", "p", "p_holm", "significant")
    if pair is None:
        return {f"{k}_{suffix}": None for k in keys}
    values = (pair.diff, pair.wins, pair.losses, pair.ties, pair.p, pair.p_adj, pair.significant)
    return {f"{k}_{suffix}": v for k, v in zip(keys, values, strict=True)}


def _cell_row(s: TaskSummary, role: str, policy: str, budget: str | None, c: Cell,
              budget_ratio: float | None) -> dict[str, Any]:
    ci = c.score_ci
    return {
        "model": s.model, "task": s.task, "metric": s.metric, "role": role, "policy": policy, "budget": budget,
        "budget_ratio": budget_ratio, "n": c.n, "mean_score": c.score,
        "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None,
        "ci_method": ("wilson" if s.binary else "bca") if ci else None,
        **_paired(c.vs_full, "vs_full"), "proposed": s.proposed, **_paired(c.vs_proposed, "vs_proposed"),
        "kl_mean": c.kl, "greedy_agreement": c.agreement, "kv_bytes_ratio": c.mem_ratio,
        "latency_ratio": s.latency_ratio(c) if role == "policy" else None, "prefill_s": c.prefill_s,
        "compress_s": c.compress_s, "decode_s": c.decode_s,
    }


def cell_rows(summaries: Sequence[TaskSummary]) -> list[dict[str, Any]]:
    """The rows of ``summary.csv``: per (model, task) the FullKV reference, its control, then every cell."""
    rows = []
    for s in summaries:
        if s.full is not None:
            rows.append(_cell_row(s, "reference", FULL, None, s.full, s.full.budget_ratio))
        if s.control is not None:
            rows.append(_cell_row(s, "control", FULL, None, s.control, s.control.budget_ratio))
        for p in s.policies:
            for b in s.budgets:
                if (c := s.cell(p, b)) is not None:
                    rows.append(_cell_row(s, "policy", p, b.label, c, c.budget_ratio))
    return rows


def cost_rows(costs: Sequence[CostSummary]) -> list[dict[str, Any]]:
    """The rows of ``cost.csv``: one per (model, task, setting, context length)."""
    rows = []
    for c in costs:
        for s in c.series:
            for p in s.points:
                rows.append({
                    "model": c.model, "task": c.task, "policy": s.policy, "budget": budget_label(s.budget),
                    "setting": s.label, "context_tokens": p.length, "kv_bytes": p.kv_bytes, "kv_ratio": p.kv_ratio,
                    "peak_mem_bytes": p.peak_mem_bytes, "peak_ratio": p.peak_ratio,
                    "prefill_peak_bytes": p.prefill_peak_bytes, "prefill_s": p.prefill_s,
                    "prefill_ratio": p.prefill_ratio, "compress_s": p.compress_s, "compress_share": p.compress_share,
                    "decode_ms_per_token": p.decode_ms, "decode_ratio": p.decode_ratio,
                    "tokens_per_s": p.tokens_per_s, "decode_cpu_ms_per_token": p.decode_cpu_ms,
                })
    return rows


def growth_rows(costs: Sequence[CostSummary]) -> list[dict[str, Any]]:
    """One row per (setting, figure) that has a growth fit (three lengths or more)."""
    rows = []
    for c in costs:
        for s in c.series:
            for figure in GROWTH_FIGURES:
                fit = s.fit(figure)
                if fit is None:
                    continue
                rows.append({
                    "model": c.model, "task": c.task, "setting": s.label, "figure": figure, "k": fit.k,
                    "k_se": fit.k_se, "k_ci_low": fit.k_ci[0], "k_ci_high": fit.k_ci[1], "r2": fit.r2,
                    "lengths": [p.length for p in s.points if getattr(p, figure) is not None],
                })
    return rows


def _finite(v: Any) -> Any:
    """None for a NaN or infinite float (JSON has no such number), the value otherwise."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _csv_value(v: Any) -> Any:
    v = _finite(v)
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def _write_csv(path: Path, columns: dict[str, str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows({k: _csv_value(v) for k, v in r.items()} for r in rows)


def write_tables(out_dir: Path, summaries: Sequence[TaskSummary], costs: Sequence[CostSummary]) -> list[Path]:
    """Write ``summary.csv``, ``summary.json`` and (with latency tasks) ``cost.csv`` into ``out_dir``;
    returns the paths written. A stale ``cost.csv`` from an earlier render is removed when there is no
    latency task any more."""
    cells, cost, growth = ([{k: _finite(v) for k, v in r.items()} for r in rows]
                           for rows in (cell_rows(summaries), cost_rows(costs), growth_rows(costs)))
    written = [out_dir / SUMMARY_CSV, out_dir / SUMMARY_JSON]
    _write_csv(written[0], CELL_COLUMNS, cells)
    doc = {"columns": {"cells": CELL_COLUMNS, "cost": COST_COLUMNS, "growth": GROWTH_COLUMNS},
           "cells": cells, "cost": cost, "growth": growth}
    written[1].write_text(json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    if cost:
        written.append(out_dir / COST_CSV)
        _write_csv(written[-1], COST_COLUMNS, cost)
    else:
        (out_dir / COST_CSV).unlink(missing_ok=True)
    return written
