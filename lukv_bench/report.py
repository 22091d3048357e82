"""Turn ``OUT/results.jsonl`` into ``OUT/report.md`` and PNG plots under ``OUT/plots/``.

One section per (model, task): mean score with its 95% bootstrap interval, the paired difference of
every policy to FullKV and to the proposed policy on the same samples (marked when significant),
fidelity (KL, greedy agreement) and cost (memory and latency relative to FullKV) by policy x budget,
then findings computed from those numbers, then plots. The numbers come from the summary model
(:mod:`lukv_bench.summary`). The data source of every task is stated at the top of the report,
because a score on offline generated data and a score on a hub dataset are not the same claim.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from lukv_bench.errors import UserError
from lukv_bench.summary import (
    DEFAULT_PROPOSED,
    FULL,
    TaskSummary,
    display_name,
    findings,
    fmt3,
    fmt_sig,
    load_results,
    order_policies,
    summarize,
)

log = logging.getLogger(__name__)

__all__ = ["render_report"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _ci(c) -> str:
    return f" [{c.score_ci[0]:.2f}, {c.score_ci[1]:.2f}]" if c.score_ci else ""


def _paired(pair) -> str:
    if pair is None:
        return ""
    mark = "*" if pair.significant else ""
    ci = f" [{pair.ci[0]:+.2f}, {pair.ci[1]:+.2f}]" if pair.ci else ""
    return f"{pair.diff:+.3f}{ci}{mark}"


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


def _task_section(s: TaskSummary, multi_model: bool, plot_links: dict[str, Path], out_dir: Path) -> list[str]:
    title = f"## Task `{s.task}`" + (f" — model `{s.model}`" if multi_model else "")
    lines = [title, ""]
    head = f"Data: **{'; '.join(s.data_sources) or 'not recorded'}** · metric: `{s.metric}`"
    if s.full is not None:
        head += f" · FullKV: n = {s.full.n}, mean score {fmt3(s.full.score)}"
    lines += [head, ""]
    budgets = s.budgets
    heads = ["policy"] + [b.label for b in budgets]

    # scores
    lines += ["### Mean score", ""]
    lines += ["Mean score [95% bootstrap interval] over the cell's samples.", ""]
    rows = []
    if s.full is not None:
        rows.append(["**FullKV (reference)**"] + [fmt3(s.full.score) + _ci(s.full)] * len(budgets))
    for p in s.policies:
        rows.append([p] + [fmt3(c.score) + _ci(c) if (c := s.cell(p, b)) else "" for b in budgets])
    lines += _table(heads, rows) + [""]

    # paired differences
    refs = [("FullKV", "vs_full")] + ([(s.proposed, "vs_proposed")] if s.proposed else [])
    for ref, attr in refs:
        rows = [[p] + [_paired(getattr(c, attr)) if (c := s.cell(p, b)) else "" for b in budgets]
                for p in s.policies if p != ref]
        if not any(any(cell for cell in row[1:]) for row in rows):
            continue
        lines += [f"### Paired difference to {ref} (same samples)", "",
                  f"Mean of (policy − {ref}) per sample [95% bootstrap interval]; * = significant "
                  "(the interval excludes 0).", ""]
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
    rows = []
    for p in s.policies:
        row = [p]
        for b in budgets:
            c = s.cell(p, b)
            row.append("" if c is None else f"{fmt_sig(c.kl)} / {fmt3(c.agreement)}")
        rows.append(row)
    lines += _table(heads, rows) + [""]

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
    rows = []
    for p in s.policies:
        row = [p]
        for b in budgets:
            c = s.cell(p, b)
            row.append("" if c is None else f"{fmt3(c.mem_ratio)} / {fmt3(s.latency_ratio(c))}")
        rows.append(row)
    lines += _table(heads, rows) + [""]

    lines += ["### Findings", ""]
    lines += [f"- {f}" for f in findings(s)] + [""]

    if plot_links:
        lines += ["### Plots", ""]
        for caption, png in plot_links.items():
            rel = png.relative_to(out_dir).as_posix()
            lines += [f"![{caption}]({rel})", ""]
    return lines


def render_report(out_dir: str | Path) -> Path:
    """Read ``out_dir/results.jsonl`` (and ``run.json`` if present); write ``out_dir/report.md`` and
    PNGs under ``out_dir/plots/``. Returns the report path.

    Raises :class:`~lukv_bench.errors.UserError` if there is no readable result.
    """
    from lukv_bench import plots

    out_dir = Path(out_dir)
    records, skipped = load_results(out_dir / "results.jsonl")
    if not records:
        raise UserError(f"{out_dir / 'results.jsonl'} holds no readable records")
    run = _read_run(out_dir)
    suite = run.get("suite") if isinstance(run.get("suite"), dict) else run
    suite_name = suite.get("name") if isinstance(suite, dict) else None
    versions = run.get("versions") or records[-1].get("versions") or {}
    report_cfg = suite.get("report") if isinstance(suite, dict) and isinstance(suite.get("report"), dict) else {}
    summaries = summarize(records, proposed=report_cfg.get("proposed", DEFAULT_PROPOSED),
                          rivals=report_cfg.get("rivals"))
    models = list(dict.fromkeys(s.model for s in summaries))
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)

    lines = [f"# lukv-bench report: {suite_name or out_dir.name}", ""]
    lines.append(f"- Model{'s' if len(models) > 1 else ''}: " + ", ".join(f"`{m}`" for m in models))
    lines.append("- **Data used per task** (offline generated data and hub datasets are different claims):")
    for s in summaries:
        tag = f"`{s.task}`" + (f" (`{s.model}`)" if len(models) > 1 else "")
        lines.append(f"  - {tag}: **{'; '.join(s.data_sources) or 'not recorded'}**")
    policies = order_policies(p for s in summaries for p in [FULL, *s.policies] if p != FULL or s.full)
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
        try:
            links = plots.task_plots(s, plot_dir, stem)
        except Exception:  # a plot must never cost the user the tables
            log.exception("plotting %s failed; the report keeps its tables", s.task)
            links = {}
        lines += _task_section(s, len(models) > 1, links, out_dir)

    report = out_dir / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report
