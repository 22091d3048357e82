"""The summary model of a results file: cells, per-task summaries, statistics and findings.

:func:`summarize` groups records by (model, task) and aggregates every (policy, budget) cell with
a 95% bootstrap confidence interval of its mean score, and each policy's paired difference to
FullKV and to the proposed policy on the same samples (significant when its interval excludes 0).
:func:`findings` turns those numbers into plain statements. The report (:mod:`lukv_bench.report.render`)
and the plots (:mod:`lukv_bench.report.plots`) both read this model; neither imports the other.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lukv_bench.errors import UserError
from lukv_bench.records import record_key

log = logging.getLogger(__name__)

FULL = "full"
#: display order of the built-in policies; others follow in order of appearance
POLICY_ORDER = ("full", "random", "streaming", "h2o", "snapkv", "pyramidkv", "adakv", "cake", "layer-uncertainty")
#: built-ins that allocate different budgets to different layers (others are detected from the data)
LAYER_ADAPTIVE = frozenset({"layer-uncertainty", "pyramidkv", "cake"})
#: the proposed policy when the suite's ``report`` setting names none
DEFAULT_PROPOSED = "layer-uncertainty"
TIE = 0.005  #: absolute score difference below which two policies are called tied
NEAR_ZERO = 0.1  #: FullKV mean score below this makes a task uninformative about compression
CONFIDENCE = 0.95  #: level of the bootstrap intervals
BOOTSTRAP = 2000  #: bootstrap resamples per interval (seeded: a report is reproducible)
MEM_TOLERANCE = 0.05  #: relative memory difference still counted as "equal memory"


# -- loading ---------------------------------------------------------------------------------------


def load_results(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Read a results file; return (records, number of unreadable lines skipped).

    A torn last line (an interrupted append) is expected and skipped; unreadable lines elsewhere
    are skipped with a warning. Later duplicates of a key replace earlier ones.
    """
    from lukv_bench.run.results import read_records

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run a suite first (lukv-bench run SUITE --out DIR)")
    skipped: list[int] = []
    records = {record_key(r): r for r in read_records(path, skipped=skipped)}
    return list(records.values()), len(skipped)


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


def _numbers(values: Iterable[Any]) -> list[float]:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [v for v in vals if math.isfinite(v)]


def _mean(values: Iterable[Any]) -> float | None:
    vals = _numbers(values)
    return sum(vals) / len(vals) if vals else None


def bootstrap_ci(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (None for fewer than 2 values).

    Seeded by the values themselves, so the same data always gives the same interval.
    """
    import numpy as np

    vals = np.asarray(_numbers(values), dtype=float)
    if vals.size < 2:
        return None
    seed = int.from_bytes(json.dumps(vals.round(12).tolist()).encode()[-8:].ljust(8, b"0"), "little")
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, vals.size, size=(BOOTSTRAP, vals.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass
class Paired:
    """Mean difference of two policies' scores on the same samples, with its bootstrap interval."""

    n: int  #: samples both were scored on
    diff: float  #: mean of (this policy - the other)
    ci: tuple[float, float] | None

    @property
    def significant(self) -> bool:
        """True when the interval excludes zero."""
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)

    @classmethod
    def of(cls, mine: dict[str, float], other: dict[str, float]) -> Paired | None:
        """Pair two {sample id: score} maps on their common samples (None if none are shared)."""
        common = [k for k in mine if k in other]
        if not common:
            return None
        diffs = [mine[k] - other[k] for k in common]
        return cls(n=len(diffs), diff=sum(diffs) / len(diffs), ci=bootstrap_ci(diffs))


def _scores(recs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """{sample id: score} of the records that have a numeric score."""
    out = {}
    for r in recs:
        v = r.get("score")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[str(r.get("sample_id"))] = float(v)
    return out


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
    scores: dict[str, float] = field(default_factory=dict, repr=False)  #: sample id -> score
    score_ci: tuple[float, float] | None = None  #: 95% bootstrap interval of the mean score
    vs_full: Paired | None = None  #: paired difference to FullKV on the same samples
    vs_proposed: Paired | None = None  #: paired difference to the proposed policy at the same budget

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
            scores=_scores(recs),
            score_ci=bootstrap_ci(r.get("score") for r in recs),
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
    proposed: str | None = None  #: the policy the findings compare with its rivals
    rivals: list[str] = field(default_factory=list)
    control: Cell | None = None  #: FullKV on the questions without their context (``<task>:no-context``)
    full_vs_control: Paired | None = None  #: FullKV minus the control, paired on the same samples

    @property
    def answers_from_memory(self) -> bool:
        """True when a control ran and FullKV is not clearly above it (paired interval not above 0)."""
        p = self.full_vs_control
        return self.control is not None and (p is None or p.ci is None or p.ci[0] <= 0)

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


def order_policies(policies: Iterable[str]) -> list[str]:
    """Policies in display order: the built-ins first, others as they appear."""
    seen = list(dict.fromkeys(policies))
    known = [p for p in POLICY_ORDER if p in seen]
    return known + [p for p in seen if p not in POLICY_ORDER]


def _labels(recs: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Display name per record: the policy name, or ``name@setting`` when one name ran under several
    settings in the same folder (``lukv-bench run --add-settings``)."""
    settings: dict[str, set[str]] = defaultdict(set)
    for r in recs:
        settings[str(r.get("policy"))].add(str(r.get("setting", "")))
    out = {}
    for i, r in enumerate(recs):
        name = str(r.get("policy"))
        out[i] = f"{name}@{str(r.get('setting', ''))[:6]}" if len(settings[name]) > 1 else name
    return out


def summarize(records: Sequence[dict[str, Any]], proposed: str | None = DEFAULT_PROPOSED,
              rivals: Sequence[str] | None = None) -> list[TaskSummary]:
    """Group records by (model, task) and aggregate each (policy, budget) cell.

    ``proposed`` is the policy every other one is also paired with (None: none); ``rivals`` the
    ones the findings compare it with (None: every other compressing policy).
    """
    from lukv_bench.tasks.control import base_task, is_control

    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(str(r.get("model")), str(r.get("task")))].append(r)
    # a no-context control joins its task's summary (a control without its task keeps its own)
    controls = {(m, base_task(t)): groups.pop((m, t)) for m, t in list(groups)
                if is_control(t) and (m, base_task(t)) in groups}
    out = []
    for (model, task), recs in groups.items():
        names = _labels(recs)
        # FullKV does not depend on the budget: one record per sample (a runner may repeat it per budget)
        full_recs = list({str(r.get("sample_id")): r for r in recs if r.get("policy") == FULL}.values())
        by_cell: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        budgets: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for i, r in enumerate(recs):
            if r.get("policy") == FULL:
                continue
            bk = budget_key(r.get("budget"))
            by_cell[(names[i], bk)].append(r)
            budgets[bk].append(r)
        cols = []
        for bk, brecs in budgets.items():
            b = brecs[0].get("budget")
            cols.append(BudgetColumn(bk, budget_label(b), b, _mean(r.get("budget_ratio") for r in brecs)))
        cols.sort(key=lambda c: (c.ratio if c.ratio is not None else math.inf, c.label))
        metrics = list(dict.fromkeys(str(r.get("metric")) for r in recs if r.get("metric")))
        sources = list(dict.fromkeys(str(r.get("data_source")) for r in recs if r.get("data_source")))
        cells = {k: Cell.of(v) for k, v in by_cell.items()}
        full = Cell.of(full_recs) if full_recs else None
        for (p, bk), c in cells.items():
            if full is not None:
                c.vs_full = Paired.of(c.scores, full.scores)
            ref = cells.get((proposed, bk)) if proposed else None
            if ref is not None and p != proposed:
                c.vs_proposed = Paired.of(c.scores, ref.scores)
        policies = order_policies(p for p, _ in by_cell)
        out.append(
            TaskSummary(
                model=model,
                task=task,
                metric=", ".join(metrics) or "?",
                data_sources=sources,
                policies=policies,
                budgets=cols,
                cells=cells,
                full=full,
                records=list(recs),
                proposed=proposed if proposed in policies else None,
                rivals=[p for p in (rivals if rivals is not None else policies) if p in policies and p != proposed],
            )
        )
        ctrl = [r for r in controls.get((model, task), []) if r.get("policy") == FULL]
        if ctrl:
            out[-1].control = Cell.of(list({str(r.get("sample_id")): r for r in ctrl}.values()))
            if full is not None:
                out[-1].full_vs_control = Paired.of(full.scores, out[-1].control.scores)
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


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def display_name(policy: str) -> str:
    """``FullKV`` for the reference, the policy name otherwise."""
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
    if s.control is not None:
        pair = s.full_vs_control
        diff = f"FullKV − control {pair.diff:+.3f}" + (f", 95% CI [{pair.ci[0]:+.3f}, {pair.ci[1]:+.3f}]"
                                                        if pair and pair.ci else "") if pair else "not paired"
        if s.answers_from_memory:
            why = ("the model may answer from memory" if (s.control.score or 0) > 0
                   else "the model rarely uses the context well enough to beat a blind guess")
            out.append(f"**FullKV is not clearly above the no-context control** ({why}): without the context it "
                       f"scores {fmt3(s.control.score)} against FullKV's {fmt3(full_score)} ({diff}), so this task "
                       "says little about what compression removes from the context.")
        else:
            out.append(f"No-context control: {fmt3(s.control.score)} against FullKV's {fmt3(full_score)} ({diff}); "
                       "the answers come from the context.")
    warned = sorted({b.label for b in s.budgets for r in s.records
                     if budget_key(r.get("budget")) == b.key and (r.get("meta") or {}).get("budget_warning")})
    if warned:
        out.append(f"**Budget {_and(warned)} is at or below the observation window** on some samples: every "
                   "policy keeps the same newest tokens there, so policies cannot differ (see meta.budget_warning).")
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
    # significance against FullKV
    lossless = []
    for b in s.budgets:
        ok = [p for p in s.policies if (c := s.cell(p, b)) and c.vs_full and not c.vs_full.significant]
        if ok:
            lossless.append(f"{b.label}: {_and(ok)}")
    if s.full is not None and s.cells:
        out.append("Not significantly below FullKV (paired 95% interval includes 0) — "
                   + ("; ".join(lossless) if lossless else "no policy at any budget") + ".")
    # proposed method vs rivals, paired on the same samples
    if s.proposed:
        for rival in s.rivals:
            wins, losses, ties, details = [], [], [], []
            for b in s.budgets:
                a, r = s.cell(s.proposed, b), s.cell(rival, b)
                if not a or not r or r.vs_proposed is None:
                    continue
                pair = r.vs_proposed  # rival - proposed
                d = -pair.diff
                ci = f", 95% CI [{-pair.ci[1]:+.3f}, {-pair.ci[0]:+.3f}]" if pair.ci else ""
                note = ""
                if a.mem_ratio and r.mem_ratio and abs(a.mem_ratio / r.mem_ratio - 1) > MEM_TOLERANCE:
                    note = f", not equal memory: {fmt3(a.mem_ratio)} vs {fmt3(r.mem_ratio)} of FullKV"
                if not pair.significant:
                    ties.append(b.label)
                    details.append(f"no significant difference at {b.label} ({d:+.3f}{ci}{note})")
                elif d > 0:
                    wins.append(b.label)
                    details.append(f"wins at {b.label} ({fmt3(a.score)} vs {fmt3(r.score)}, {d:+.3f}{ci}{note})")
                else:
                    losses.append(b.label)
                    details.append(f"**loses** at {b.label} ({fmt3(a.score)} vs {fmt3(r.score)}, {d:+.3f}{ci}{note})")
            if not details:
                continue
            head = (f"{s.proposed} vs {rival} (paired on the same samples): {len(wins)} significant win(s), "
                    f"{len(losses)} significant loss(es), {len(ties)} budget(s) without a significant difference")
            out.append(head + ": " + "; ".join(details) + ".")
    elif s.policies and s.rivals:
        out.append("No proposed policy was run on this task (the suite's report.proposed).")
    return out
