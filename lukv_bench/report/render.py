"""Turn ``OUT/results.jsonl`` into ``OUT/report.md``, PNG plots under ``OUT/plots/``, the same report as one
self-contained ``OUT/report.html`` (:mod:`lukv_bench.report.html`) and its numbers as ``OUT/summary.csv``,
``OUT/summary.json`` and, with latency tasks, ``OUT/cost.csv`` (:mod:`lukv_bench.report.tables`).

One section per (model, task): mean score with its 95% interval (Wilson for binary scores, BCa bootstrap
otherwise), the paired difference of every policy to FullKV and, when the suite names one
(``report: {proposed: ...}``), to the proposed policy on the same samples, each with its wins/losses,
exact raw p and Holm-adjusted p within the table (marked only when the adjusted p is below 0.05),
fidelity (KL, greedy agreement) and cost (memory and latency relative to FullKV) by policy x budget,
then findings computed from those numbers, then plots. The numbers come from the summary model
(:mod:`lukv_bench.report.summary`). The data source of every task is stated at the top of the report,
because a score on offline generated data and a score on a hub dataset are not the same claim.
Latency tasks get a cost section each (:mod:`lukv_bench.report.cost`): their figures per context length,
fitted growth exponents (from three lengths or more, with their 95% interval) and the longest context that
fits a memory limit, with plots. Every table column has a fixed number of decimals.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from lukv_bench.errors import UserError
from lukv_bench.report.cost import MIN_FIT_LENGTHS, CostSummary, is_cost_record, summarize_cost
from lukv_bench.report.html import write_html
from lukv_bench.report.stats import ALPHA
from lukv_bench.report.summary import (
    FULL,
    TaskSummary,
    display_name,
    findings,
    fmt3,
    fmt_diff,
    fmt_fixed,
    fmt_p,
    load_results,
    order_policies,
    plural,
    summarize,
)
from lukv_bench.report.tables import write_tables

log = logging.getLogger(__name__)

__all__ = ["render_report"]


def _policy_rows(s: TaskSummary, budgets: list[Any], text: Callable[[Any], str]) -> list[list[str]]:
    """One row per policy of ``s``: its name, then ``text(cell)`` per budget (empty where it did not run)."""
    return [[p] + ["" if (c := s.cell(p, b)) is None else text(c) for b in budgets] for p in s.policies]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _ci(c) -> str:
    return f" [{fmt3(c.score_ci[0])}, {fmt3(c.score_ci[1])}]" if c.score_ci else ""


def _paired(pair) -> str:
    """``+0.583 (7–0; p 0.016, adj 0.440)``, with ``*`` when the adjusted p is below 0.05."""
    if pair is None:
        return ""
    mark = "*" if pair.significant else ""
    return f"{fmt_diff(pair.diff)} ({pair.wins}–{pair.losses}; p {fmt_p(pair.p)}, adj {fmt_p(pair.p_adj)}){mark}"


# -- report ----------------------------------------------------------------------------------------


def _read_run(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        log.warning("%s is unreadable; the report header will lack the suite details", path)
        return {}
    return data if isinstance(data, dict) else {}


def _wall_time(run: dict[str, Any]) -> str:
    """The header line on the run's wall time, from run.json's ``started``/``finished`` (UTC, ISO 8601)."""
    try:
        start, end = (datetime.fromisoformat(str(run[k])) for k in ("started", "finished"))
    except (KeyError, ValueError):
        return ("- Wall time: not recorded (run.json has no start and end time: the run was interrupted, or an "
                "older lukv-bench wrote it)")
    seconds = (end - start).total_seconds()
    took = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
    return (f"- Wall time: {took} (of the last `lukv-bench run` that added records here, {run['started']} to "
            f"{run['finished']})")


def _task_section(s: TaskSummary, multi_model: bool, plot_links: dict[str, Path], out_dir: Path) -> list[str]:
    title = f"## Task `{s.task}`" + (f" — model `{s.model}`" if multi_model else "")
    lines = [title, ""]
    head = f"Data: **{'; '.join(s.data_sources) or 'not recorded'}** · metric: `{s.metric}`"
    if s.full is not None:
        head += f" · FullKV: n = {s.full.n}, mean score {fmt3(s.full.score)}"
    if s.control is not None:
        head += f" · no-context control: {fmt3(s.control.score)}" + (" (**not clearly below FullKV**)"
                                                                       if s.answers_from_memory else "")
    lines += [head, ""]
    budgets = s.budgets
    heads = ["policy"] + [b.label for b in budgets]

    # scores
    lines += ["### Mean score", ""]
    how = ("Wilson score interval (every score is 0 or 1)" if s.binary
           else "BCa bootstrap interval; none when every score of the cell is equal")
    lines += [f"Mean score [95% {how}] over the cell's samples; no interval from a single sample.", ""]
    rows = []
    if s.full is not None:
        rows.append(["**FullKV (reference)**"] + [fmt3(s.full.score) + _ci(s.full)] * len(budgets))
    if s.control is not None:
        flag = " ⚠ FullKV not clearly above it" if s.answers_from_memory else ""
        rows.append([f"no-context control (FullKV){flag}"] + [fmt3(s.control.score) + _ci(s.control)] * len(budgets))
    rows += _policy_rows(s, budgets, lambda c: fmt3(c.score) + _ci(c))
    lines += _table(heads, rows) + [""]

    # paired differences
    refs = [("FullKV", "vs_full")] + ([(s.proposed, "vs_proposed")] if s.proposed else [])
    for ref, attr in refs:
        rows = [[p] + [_paired(getattr(c, attr)) if (c := s.cell(p, b)) else "" for b in budgets]
                for p in s.policies if p != ref]
        if not any(any(cell for cell in row[1:]) for row in rows):
            continue
        test = ("exact sign test on the samples where the two differ (= exact McNemar)" if s.binary
                else "exact sign-flip permutation test of the mean difference")
        lines += [f"### Paired difference to {ref} (same samples)", "",
                  f"Each cell: mean of (policy − {ref}) per sample (samples where the policy scored higher–lower; "
                  f"raw two-sided p of the {test}, and that p Holm-adjusted). Family of the Holm correction: "
                  f"the {len(s.pairs(attr))} tests of this table ({s.family('FullKV' if attr == 'vs_full' else ref)}). "
                  f"* = significant: adjusted p < {ALPHA:g}.", ""]
        lines += _table(heads, rows) + [""]
    ns = {c.n for c in s.cells.values()}
    if len(ns) == 1:
        lines += [f"Samples per cell: {ns.pop()} (every cell).", ""]
    else:
        lines += ["Samples per cell:", ""]
        lines += _table(
            heads, [[p] + [str(c.n) if (c := s.cell(p, b)) else "0" for b in budgets] for p in s.policies]
        ) + [""]
    ratios = [f"{b.label} → {fmt3(b.ratio)}" for b in budgets if b.ratio is not None]
    if ratios:
        lines += ["Measured mean tokens kept / context per budget: " + ", ".join(ratios) + ".", ""]

    # fidelity
    lines += ["### Fidelity to FullKV (mean KL ↓ / greedy agreement ↑)", ""]
    lines += _table(heads, _policy_rows(s, budgets, lambda c: f"{fmt3(c.kl)} / {fmt3(c.agreement)}")) + [""]

    # cost
    lines += ["### Cost relative to FullKV (KV memory / latency)", ""]
    lines += [
        "Memory = mean kv_bytes / kv_bytes_full. Latency = (compress + decode seconds) / FullKV decode "
        "seconds; the prefill is shared by all policies and left out"
        + (
            f" (FullKV: prefill {s.full.prefill_s:.3f} s, decode {s.full.decode_s:.3f} s)."
            if s.full and s.full.prefill_s is not None and s.full.decode_s is not None
            else "."
        ),
        "",
    ]
    lines += _table(heads, _policy_rows(s, budgets, lambda c: f"{fmt3(c.mem_ratio)} / {fmt3(s.latency_ratio(c))}"))
    lines += [""]

    lines += ["### Findings", ""]
    lines += [f"- {f}" for f in findings(s)] + [""]

    return lines + _plot_lines(plot_links, out_dir)


def _plot_lines(plot_links: dict[str, Path], out_dir: Path) -> list[str]:
    """The "Plots" subsection: one image line per plot, linked relative to the report."""
    if not plot_links:
        return []
    lines = ["### Plots", ""]
    for caption, png in plot_links.items():
        lines += [f"![{caption}]({png.relative_to(out_dir).as_posix()})", ""]
    return lines


def _safe_plots(draw, summary, plot_dir: Path, stem: str, what: str) -> dict[str, Path]:
    """``draw(summary, plot_dir, stem)``, or no plots if it fails: a plot must never cost the user the tables."""
    try:
        return draw(summary, plot_dir, stem)
    except Exception:
        log.exception("plotting %s failed; the report keeps its tables", what)
        return {}


def render_report(out_dir: str | Path) -> Path:
    """Read ``out_dir/results.jsonl`` (and ``run.json`` if present); write ``out_dir/report.md``, PNGs under
    ``out_dir/plots/``, ``report.html``, ``summary.csv``, ``summary.json`` (and ``cost.csv`` with latency
    tasks). Returns the path of report.md.

    Raises :class:`~lukv_bench.errors.UserError` if there is no readable result.
    """
    from lukv_bench.report import plots
    out_dir = Path(out_dir)
    records, skipped = load_results(out_dir / "results.jsonl")
    if not records:
        raise UserError(f"{out_dir / 'results.jsonl'} holds no readable records")
    run = _read_run(out_dir)
    suite = run.get("suite") if isinstance(run.get("suite"), dict) else run
    suite_name = suite.get("name") if isinstance(suite, dict) else None
    versions = run.get("versions") or records[-1].get("versions") or {}
    report_cfg = suite.get("report") if isinstance(suite, dict) and isinstance(suite.get("report"), dict) else {}
    summaries = summarize([r for r in records if not is_cost_record(r)],
                          proposed=report_cfg.get("proposed"), rivals=report_cfg.get("rivals"))
    costs = summarize_cost(records, run)  # latency tasks: their own sections, after the quality ones
    models = list(dict.fromkeys([s.model for s in summaries] + [c.model for c in costs]))
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots.clear_plots(plot_dir)  # a plot of an earlier render that this one does not draw must not linger

    lines = [f"# lukv-bench report: {suite_name or out_dir.name}", ""]
    lines.append(f"- Model{'s' if len(models) > 1 else ''}: " + ", ".join(f"`{m}`" for m in models))
    lines.append("- **Data used per task** (offline generated data and hub datasets are different claims):")
    for s in summaries:
        tag = f"`{s.task}`" + (f" (`{s.model}`)" if len(models) > 1 else "")
        lines.append(f"  - {tag}: **{'; '.join(s.data_sources) or 'not recorded'}**")
    policies = order_policies([p for s in summaries for p in [FULL, *s.policies] if p != FULL or s.full]
                              + [s.policy for c in costs for s in c.series])
    lines.append(
        "- Policies: " + ", ".join(display_name(p) for p in policies) + " (FullKV = uncompressed reference)"
    )
    params: dict[str, Any] = {}
    for r in records:
        params.setdefault(str(r.get("policy")), r.get("policy_params"))
    shown = {p: v for p, v in params.items() if v}
    if shown:
        lines.append(
            "- Policy parameters: "
            + "; ".join(f"{p} `{json.dumps(shown[p], sort_keys=True)}`" for p in order_policies(shown))
        )
    lines.append(f"- Records: {len(records)}")
    lines.append(_wall_time(run))
    if skipped:
        lines.append(f"- Skipped {skipped} unreadable line(s) in results.jsonl (e.g. a torn last line).")
    if versions:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    lines += [
        "",
        "Budgets are columns (a ratio of the context, or a token count); a ratio ≥ 1 means no compression. "
        "Scores are means over samples; empty cells were not run.",
        "",
    ]

    for s in summaries:
        stem = _slug(s.task if len(models) == 1 else f"{s.model}_{s.task}")
        links = _safe_plots(plots.task_plots, s, plot_dir, stem, s.task)
        lines += _task_section(s, len(models) > 1, links, out_dir)
    lines += _cost_sections(costs, out_dir, plot_dir)

    report = out_dir / "report.md"
    markdown = "\n".join(lines).rstrip() + "\n"
    report.write_text(markdown, encoding="utf-8")
    write_html(out_dir, markdown, f"lukv-bench report: {suite_name or out_dir.name}")
    write_tables(out_dir, summaries, costs)
    return report


# -- cost (latency tasks) ---------------------------------------------------------------------------


def _mib(x: float | None) -> str:
    return "—" if x is None else f"{x / 2**20:.1f}"


def _times(r: float | None) -> str:
    return "" if r is None else f" (×{r:.2f})"


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _growth(f) -> str:
    """``0.93 [0.90, 0.96], R² 1.00``: a growth exponent with its 95% interval and the fit's R² (— without a fit)."""
    if f is None:
        return "—"
    return f"{fmt_fixed(f.k, 2)} [{fmt_fixed(f.k_ci[0], 2)}, {fmt_fixed(f.k_ci[1], 2)}], R² {fmt_fixed(f.r2, 2)}"


def _reach(r) -> str:
    if r is None:
        return "—"
    if r.tokens is None:
        return "unbounded (memory does not grow)"
    text = f"~{r.tokens:,.0f}" if r.extrapolated else f"{r.tokens:,.0f}"
    return text + (" (> model positions)" if r.beyond_model else "")


def _cost_section(c: CostSummary, plot_links: dict[str, Path], out_dir: Path) -> list[str]:
    """The report section of one latency task: figures per length, growth exponents, memory-limited context."""
    m = c.meta
    steps = m["new_tokens"] - 1 if isinstance(m.get("new_tokens"), int) else None
    lines = [f"## Cost: task `{c.task}` — model `{c.model}`", ""]
    lines += [
        f"Prompts: **{c.data_source or 'not recorded'}**, {', '.join(str(n) for n in c.lengths)} tokens. Each "
        f"(policy, budget) ran alone (batch 1) on {m.get('device')} with {m.get('threads')} thread(s); times are "
        f"medians of {m.get('repeats')} runs after {m.get('warmup')} warmup run(s). Each run decodes "
        f"{m.get('new_tokens')} tokens greedily ({steps} timed decode steps: the first token comes from the "
        "prefill). (×r) = ratio to FullKV measured at the same length in the same run.",
        "",
        f"Peak memory (weights not counted): {m.get('peak_mem_method') or 'not recorded'}.",
        "",
    ]
    cpu = c.has_cpu_time
    if cpu:
        lines += [f"{m.get('cpu_time')}.", ""]
    lines += [f"- Skipped: {s}" for s in c.skipped] + ([""] if c.skipped else [])
    lines += ["### Per context length", ""]
    head = ["tokens", "setting", "KV MiB", "decode peak MiB", "prefill peak MiB", "prefill s",
            "compress s (of prefill)", "decode ms/token", "tokens/s"] + ["decode CPU ms/token"] * cpu
    rows = []
    for n in c.lengths:
        for s in c.series:
            p = s.at(n)
            if p is None:
                continue
            share = f" ({p.compress_share:.2%})" if p.compress_share is not None else ""
            rows.append([
                str(n), s.label, _mib(p.kv_bytes) + _times(p.kv_ratio), _mib(p.peak_mem_bytes) + _times(p.peak_ratio),
                _mib(p.prefill_peak_bytes) + _times(p.prefill_peak_ratio),
                f"{p.prefill_s:.3f}" + _times(p.prefill_ratio), f"{p.compress_s:.4f}{share}",
                f"{p.decode_ms:.2f}" + _times(p.decode_ratio), f"{p.tokens_per_s:.1f}",
            ] + [_fmt(p.decode_cpu_ms) + _times(p.decode_cpu_ratio)] * cpu)
    lines += _table(head, rows) + [""]
    lines += ["### Growth with context length", ""]
    intro = [
        f"k = fitted exponent of y ∝ n^k (least squares on log y vs log n over the lengths measured; only from "
        f"{MIN_FIT_LENGTHS} lengths or more, — otherwise), with its 95% interval in brackets (the fit's standard "
        "error, Student's t with lengths − 2 degrees of freedom: few lengths give a wide interval) and the fit's "
        "R²: a low R² means the figure does not follow a power of n (noise, or a constant part that dominates). "
        "Longest "
        f"context = where the fitted memory reaches the limit of **{c.memory_limit_gb:g} GiB** (task setting "
        "`memory_limit_gb`): ~ marks an **extrapolation** with the fitted exponent beyond the lengths measured. "
        "Decoding: the cache plus one decode step. Prefill: compression happens after the prefill, so every "
        "policy needs FullKV's prefill memory (policies whose scorer needs more statistics, such as H2O, more).",
        "",
    ]
    figures = ["decode_ms", "decode_cpu_ms", "peak_mem_bytes", "prefill_s"] if cpu else [
        "decode_ms", "peak_mem_bytes", "prefill_s"]
    names = {"decode_ms": "k decode ms/token", "decode_cpu_ms": "k decode CPU ms/token",
             "peak_mem_bytes": "k decode peak memory", "prefill_s": "k prefill s"}
    head = [names[f] for f in figures] + [f"longest context in {c.memory_limit_gb:g} GiB: decoding", "prefill"]
    head = ["setting", *head]
    rows = []
    max_pos = m.get("max_positions")
    for s in c.series:
        fits = [s.fit(f) for f in figures]
        rows.append([s.label] + [_growth(f) for f in fits] + [
            _reach(s.reach("peak_mem_bytes", c.limit_bytes, max_pos)),
            _reach(s.reach("prefill_peak_bytes", c.limit_bytes, max_pos)),
        ])
    if any(cell != "—" for row in rows for cell in row[1:]):
        lines += intro + _table(head, rows) + [""]
    else:
        lines += [f"No growth exponent and no longest context: the task measured {plural(len(c.lengths), 'length')}, "
                  f"a fit needs {MIN_FIT_LENGTHS} or more.", ""]
    full, longest = c.full, (c.lengths[-1] if c.lengths else None)
    ref = full.at(longest) if full is not None and longest is not None else None
    if ref is not None:
        lines += ["### Closing note", ""]
        parts = []
        for s in c.series:
            p = s.at(longest)
            if s is full or p is None:
                continue
            cpu_part = f", CPU {p.decode_cpu_ms:.2f}{_times(p.decode_cpu_ratio)}" if p.decode_cpu_ms else ""
            parts.append(f"{s.label}: {p.decode_ms:.2f} ms/token{_times(p.decode_ratio)}{cpu_part}")
        note = f"At {longest:,} tokens (the longest length measured) FullKV decodes at {ref.decode_ms:.2f} ms/token"
        if ref.decode_cpu_ms:
            note += f" (CPU time {ref.decode_cpu_ms:.2f} ms/token)"
        lines += [note + (": " + "; ".join(parts) + "." if parts else "."), ""]
    return lines + _plot_lines(plot_links, out_dir)


def _cost_sections(costs: list[CostSummary], out_dir: Path, plot_dir: Path) -> list[str]:
    """The sections of the latency tasks (nothing when there is none), with their plots."""
    from lukv_bench.report import plots
    lines: list[str] = []
    multi = len({c.model for c in costs}) > 1
    for c in costs:
        stem = _slug(f"{c.model}_{c.task}_cost" if multi else f"{c.task}_cost")
        links = _safe_plots(plots.cost_plots, c, plot_dir, stem, f"the cost of {c.task}")
        lines += _cost_section(c, links, out_dir)
    return lines
