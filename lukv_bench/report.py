"""Turn ``OUT/results.jsonl`` into ``OUT/report.md`` and PNG plots under ``OUT/plots/``.

One section per (model, task): mean score, fidelity (KL, greedy agreement) and cost (memory and
latency relative to FullKV) by policy x budget, then findings computed from those numbers, then plots.
The data source of every task is stated at the top of the report, because a score on offline
generated data and a score on a hub dataset are not the same claim.

Public API: :func:`render_report`, :func:`load_results`, :func:`summarize`, :class:`TaskSummary`,
:class:`Cell`, :class:`BudgetColumn`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lukv_bench.errors import UserError

log = logging.getLogger(__name__)

FULL = "full"
#: display order of known policies; unknown ones follow in order of appearance
POLICY_ORDER = (
    "full",
    "streaming",
    "h2o",
    "snapkv",
    "pyramidkv",
    "adakv",
    "cake",
    "squeezeattention",
    "dynamickv",
    "lava",
    "layer-uncertainty",
)
#: policies that allocate different budgets to different layers (others are detected from the data)
LAYER_ADAPTIVE = frozenset(
    {"layer-uncertainty", "pyramidkv", "cake", "squeezeattention", "dynamickv", "lava"}
)
#: the proposed method and the rivals it is compared with in the findings
PROPOSED = "layer-uncertainty"
RIVALS = ("snapkv", "pyramidkv", "cake", "adakv")
TIE = 0.005  #: absolute score difference below which two policies are called tied
NEAR_ZERO = 0.1  #: FullKV mean score below this makes a task uninformative about compression
MEM_TOLERANCE = 0.05  #: relative memory difference still counted as "equal memory"


# -- loading ---------------------------------------------------------------------------------------


def load_results(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Read a results JSONL file; return (records, number of unreadable lines skipped).

    A torn last line (an interrupted append) is expected and skipped. Unreadable lines elsewhere
    (a torn line followed by a resumed run) are skipped with a warning. Later duplicates of the same
    (model, task, sample, policy, budget) replace earlier ones, as a resumed run may rewrite a record.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run a suite first (lukv-bench run SUITE --out DIR)")
    records: dict[tuple[str, ...], dict[str, Any]] = {}
    skipped = 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            skipped += 1
            if lineno != len(lines):
                log.warning("%s:%d: unreadable line skipped", path, lineno)
            continue
        key = (
            str(rec.get("model")),
            str(rec.get("task")),
            str(rec.get("sample_id")),
            str(rec.get("policy")),
            budget_key(rec.get("budget")),
        )
        records[key] = rec
    return list(records.values()), skipped


def budget_key(budget: Any) -> str:
    """A stable string key for a budget as the user wrote it (a ratio or ``{"tokens": N}``)."""
    return json.dumps(budget, sort_keys=True)


def budget_label(budget: Any) -> str:
    """Short human label: ``0.1`` for ratios, ``256 tok`` for token budgets."""
    if isinstance(budget, dict) and "tokens" in budget:
        return f"{budget['tokens']} tok"
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return f"{budget:g}"
    return str(budget)


# -- aggregation -----------------------------------------------------------------------------------


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    vals = [v for v in vals if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


@dataclass
class Cell:
    """Means over the samples of one (policy, budget) cell."""

    n: int
    score: float | None
    kl: float | None
    agreement: float | None
    mem_ratio: float | None  #: mean kv_bytes / kv_bytes_full
    budget_ratio: float | None  #: mean tokens kept / context
    compress_s: float | None
    decode_s: float | None
    prefill_s: float | None
    layer_profile: list[float] | None  #: mean tokens kept per layer (None if absent or ragged)

    @classmethod
    def of(cls, recs: Sequence[dict[str, Any]]) -> Cell:
        """Aggregate the records of one cell."""
        mem = [
            r["kv_bytes"] / r["kv_bytes_full"]
            for r in recs
            if isinstance(r.get("kv_bytes"), (int, float)) and r.get("kv_bytes_full")
        ]
        profiles = [r.get("layer_budgets") for r in recs if r.get("layer_budgets")]
        profile = None
        if profiles and len({len(p) for p in profiles}) == 1:
            profile = [sum(col) / len(col) for col in zip(*profiles, strict=True)]
        return cls(
            n=len(recs),
            score=_mean(r.get("score") for r in recs),
            kl=_mean(r.get("kl_mean") for r in recs),
            agreement=_mean(r.get("greedy_agreement") for r in recs),
            mem_ratio=_mean(mem),
            budget_ratio=_mean(r.get("budget_ratio") for r in recs),
            compress_s=_mean(r.get("compress_s") for r in recs),
            decode_s=_mean(r.get("decode_s") for r in recs),
            prefill_s=_mean(r.get("prefill_s") for r in recs),
            layer_profile=profile,
        )


@dataclass
class BudgetColumn:
    """One budget as a table column."""

    key: str
    label: str
    budget: Any
    ratio: float | None  #: mean measured tokens/context over the column's records


@dataclass
class TaskSummary:
    """Everything the report says about one (model, task)."""

    model: str
    task: str
    metric: str
    data_sources: list[str]
    policies: list[str]  #: compressing policies in display order (FullKV excluded)
    budgets: list[BudgetColumn]
    cells: dict[tuple[str, str], Cell]  #: (policy, budget key) -> cell
    full: Cell | None
    records: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def cell(self, policy: str, budget: BudgetColumn) -> Cell | None:
        """The cell of ``policy`` at ``budget``, or None if it was not run."""
        return self.cells.get((policy, budget.key))

    def latency_ratio(self, cell: Cell | None) -> float | None:
        """(compress + decode seconds) / FullKV decode seconds; prefill is shared and left out."""
        if cell is None or self.full is None or not self.full.decode_s or cell.decode_s is None:
            return None
        return ((cell.compress_s or 0.0) + cell.decode_s) / self.full.decode_s

    @property
    def has_grid(self) -> bool:
        """True when samples carry ``meta.depth`` and ``meta.length`` (needle-style heatmaps)."""
        metas = [r.get("meta") or {} for r in self.records]
        return bool(metas) and all("depth" in m and "length" in m for m in metas)

    def layer_adaptive(self) -> list[str]:
        """Policies whose per-layer budgets differ across layers (known ones, or seen in the data)."""
        out = []
        for p in self.policies:
            profiles = [c.layer_profile for (q, _), c in self.cells.items() if q == p and c.layer_profile]
            varies = any(max(pr) - min(pr) > 1e-6 * max(1.0, max(pr)) for pr in profiles)
            if profiles and (p in LAYER_ADAPTIVE or varies):
                out.append(p)
        return out


def _order(policies: Iterable[str]) -> list[str]:
    seen = list(dict.fromkeys(policies))
    known = [p for p in POLICY_ORDER if p in seen]
    return known + [p for p in seen if p not in POLICY_ORDER]


def summarize(records: Sequence[dict[str, Any]]) -> list[TaskSummary]:
    """Group records by (model, task) and aggregate each (policy, budget) cell."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(str(r.get("model")), str(r.get("task")))].append(r)
    out = []
    for (model, task), recs in groups.items():
        # FullKV does not depend on the budget: one record per sample (a runner may repeat it per budget)
        full_recs = list({str(r.get("sample_id")): r for r in recs if r.get("policy") == FULL}.values())
        comp = [r for r in recs if r.get("policy") != FULL]
        by_cell: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        budgets: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in comp:
            bk = budget_key(r.get("budget"))
            by_cell[(str(r.get("policy")), bk)].append(r)
            budgets[bk].append(r)
        cols = []
        for bk, brecs in budgets.items():
            b = brecs[0].get("budget")
            cols.append(BudgetColumn(bk, budget_label(b), b, _mean(r.get("budget_ratio") for r in brecs)))
        cols.sort(key=lambda c: (c.ratio if c.ratio is not None else math.inf, c.label))
        metrics = list(dict.fromkeys(str(r.get("metric")) for r in recs if r.get("metric")))
        sources = list(dict.fromkeys(str(r.get("data_source")) for r in recs if r.get("data_source")))
        out.append(
            TaskSummary(
                model=model,
                task=task,
                metric=", ".join(metrics) or "?",
                data_sources=sources,
                policies=_order(p for p, _ in by_cell),
                budgets=cols,
                cells={k: Cell.of(v) for k, v in by_cell.items()},
                full=Cell.of(full_recs) if full_recs else None,
                records=list(recs),
            )
        )
    return out


# -- formatting ------------------------------------------------------------------------------------


def fmt3(x: float | None) -> str:
    """Three decimals, or an em dash for missing values."""
    return "—" if x is None else f"{x:.3f}"


def fmt_sig(x: float | None, digits: int = 4) -> str:
    """``digits`` significant digits (for KL, which spans orders of magnitude)."""
    if x is None:
        return "—"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _name(policy: str) -> str:
    return "FullKV" if policy == FULL else policy


# -- findings --------------------------------------------------------------------------------------


def findings(s: TaskSummary) -> list[str]:
    """Plain statements computed from the numbers: best policy per budget, wins/losses/ties of the
    proposed method against its rivals, and caveats (uninformative FullKV, small samples)."""
    out: list[str] = []
    full_score = s.full.score if s.full else None
    if s.full is None:
        out.append("No FullKV reference records: scores cannot be compared with the uncompressed model.")
    elif full_score is not None and full_score < NEAR_ZERO:
        out.append(
            f"**FullKV itself scores {fmt3(full_score)}** on this task, so the task says little about "
            "compression on this model: any policy can only match a near-zero reference."
        )
    ns = sorted({c.n for c in s.cells.values()})
    if ns and ns[0] < 20:
        out.append(
            f"Cells hold {ns[0]}" + (f"–{ns[-1]}" if ns[-1] != ns[0] else "") + " samples; a single sample "
            f"moves a mean score by up to {1 / ns[0]:.3f}, so small differences are noise."
        )
    # best per budget
    best_lines = []
    for b in s.budgets:
        scored = [(p, c.score) for p in s.policies if (c := s.cell(p, b)) and c.score is not None]
        if not scored:
            continue
        top = max(v for _, v in scored)
        tied = [p for p, v in scored if top - v < TIE]
        who = _and(tied) + (" (tied)" if len(tied) > 1 else "")
        rel = f", {top / full_score:.0%} of FullKV" if full_score else ""
        best_lines.append(f"{b.label}: {who} {fmt3(top)}{rel}")
    if best_lines:
        out.append("Best score per budget — " + "; ".join(best_lines) + ".")
    # fidelity per budget
    kl_lines = []
    for b in s.budgets:
        kls = [(p, c.kl) for p in s.policies if (c := s.cell(p, b)) and c.kl is not None]
        if kls:
            p, v = min(kls, key=lambda t: t[1])
            kl_lines.append(f"{b.label}: {p} ({fmt_sig(v)})")
    if kl_lines:
        out.append("Lowest mean KL to FullKV per budget — " + "; ".join(kl_lines) + ".")
    # proposed method vs rivals
    if PROPOSED in s.policies:
        for rival in RIVALS:
            if rival not in s.policies:
                continue
            wins, losses, ties, details = [], [], [], []
            for b in s.budgets:
                a, r = s.cell(PROPOSED, b), s.cell(rival, b)
                if not a or not r or a.score is None or r.score is None:
                    continue
                d = a.score - r.score
                note = ""
                if a.mem_ratio and r.mem_ratio and abs(a.mem_ratio / r.mem_ratio - 1) > MEM_TOLERANCE:
                    note = f", not equal memory: {fmt3(a.mem_ratio)} vs {fmt3(r.mem_ratio)} of FullKV"
                if abs(d) < TIE:
                    ties.append(b.label)
                    details.append(f"tie at {b.label} ({fmt3(a.score)}{note})")
                elif d > 0:
                    wins.append(b.label)
                    details.append(f"wins at {b.label} ({fmt3(a.score)} vs {fmt3(r.score)}, +{d:.3f}{note})")
                else:
                    losses.append(b.label)
                    details.append(
                        f"**loses** at {b.label} ({fmt3(a.score)} vs {fmt3(r.score)}, {d:.3f}{note})"
                    )
            if not details:
                continue
            head = (
                f"{PROPOSED} vs {rival}: {len(wins)} win(s), {len(losses)} loss(es), {len(ties)} tie(s) "
                f"over {len(details)} budget(s)"
            )
            if losses and not wins:
                head += f" — {PROPOSED} never beats {rival} on this task"
            elif wins and not losses:
                head += f" — {PROPOSED} never scores below {rival} on this task"
            out.append(head + ": " + "; ".join(details) + ".")
    elif s.policies:
        out.append(f"{PROPOSED} was not run on this task.")
    return out


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
    rows = []
    if s.full is not None:
        rows.append(["**FullKV (reference)**"] + [fmt3(s.full.score)] * len(budgets))
    for p in s.policies:
        rows.append([p] + [fmt3(c.score) if (c := s.cell(p, b)) else "" for b in budgets])
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
    summaries = summarize(records)
    models = list(dict.fromkeys(s.model for s in summaries))
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)

    lines = [f"# lukv-bench report: {suite_name or out_dir.name}", ""]
    lines.append(f"- Model{'s' if len(models) > 1 else ''}: " + ", ".join(f"`{m}`" for m in models))
    lines.append("- **Data used per task** (offline generated data and hub datasets are different claims):")
    for s in summaries:
        tag = f"`{s.task}`" + (f" (`{s.model}`)" if len(models) > 1 else "")
        lines.append(f"  - {tag}: **{'; '.join(s.data_sources) or 'not recorded'}**")
    policies = _order(p for s in summaries for p in [FULL, *s.policies] if p != FULL or s.full)
    lines.append(
        "- Policies: " + ", ".join(_name(p) for p in policies) + " (FullKV = uncompressed reference)"
    )
    params: dict[str, Any] = {}
    for r in records:
        params.setdefault(str(r.get("policy")), r.get("policy_params"))
    shown = {p: v for p, v in params.items() if v}
    if shown:
        lines.append(
            "- Policy parameters: "
            + "; ".join(f"{p} `{json.dumps(shown[p], sort_keys=True)}`" for p in _order(shown))
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
