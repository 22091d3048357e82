"""The summary model of a results file: cells, per-task summaries, statistics and findings.

:func:`summarize` groups records by (model, task) and aggregates every (policy, budget) cell with
a 95% interval of its mean score (Wilson for binary scores, BCa bootstrap otherwise), and each
policy's paired difference to FullKV and to the proposed policy on the same samples: wins, losses,
ties, an exact raw p and the Holm-adjusted p within the difference's family (one table: one task,
one reference policy). Significant means adjusted p < 0.05 (:mod:`lukv_bench.report.stats`).
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
from lukv_bench.registry import catalog
from lukv_bench.report.stats import ALPHA, finite, holm, is_binary, mean_ci, paired_test
from lukv_bench.runtime.contract import FULL

log = logging.getLogger(__name__)

#: display order of policies: the registered ones in registration order (built-ins first), then the others
POLICY_ORDER = tuple(e.name for e in catalog().policies)
TIE = 0.005  #: absolute score difference below which two policies are called tied
NEAR_ZERO = 0.1  #: FullKV mean score below this makes a task uninformative about compression
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
    return finite(values)


def _mean(values: Iterable[Any]) -> float | None:
    vals = _numbers(values)
    return sum(vals) / len(vals) if vals else None


@dataclass
class Paired:
    """Paired difference of two policies' scores on the same samples, with its exact test.

    ``p_adj`` is the Holm-adjusted p within ``family`` (set by :func:`summarize`; equal to ``p``
    for a test that is a family of its own).
    """

    n: int  #: samples both were scored on
    diff: float  #: mean of (this policy - the other)
    wins: int  #: samples where this policy scored higher
    losses: int  #: samples where it scored lower
    ties: int  #: samples with equal scores
    p: float  #: raw two-sided p (exact sign test for binary scores, sign-flip permutation otherwise)
    method: str  #: the test used
    p_adj: float | None = None  #: Holm-adjusted p within the family
    family: str | None = None  #: the family of tests the adjustment ran over

    @property
    def significant(self) -> bool:
        """True when the Holm-adjusted p is below 0.05."""
        return self.p_adj is not None and self.p_adj < ALPHA

    @classmethod
    def of(cls, mine: dict[str, float], other: dict[str, float], binary: bool | None = None) -> Paired | None:
        """Pair two {sample id: score} maps on their common samples (None if none are shared)."""
        common = [k for k in mine if k in other]
        if not common:
            return None
        t = paired_test([mine[k] for k in common], [other[k] for k in common], binary)
        return cls(n=t.n, diff=t.diff, wins=t.wins, losses=t.losses, ties=t.ties, p=t.p, method=t.method)


def adjust_family(pairs: Sequence[Paired], family: str) -> None:
    """Holm-adjust the raw p of ``pairs`` as one family (in place)."""
    for pair, adj in zip(pairs, holm([q.p for q in pairs]), strict=True):
        pair.p_adj, pair.family = adj, family


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
    score_ci: tuple[float, float] | None = None  #: 95% interval of the mean score (Wilson or BCa)
    vs_full: Paired | None = None  #: paired difference to FullKV on the same samples
    vs_proposed: Paired | None = None  #: paired difference to the proposed policy at the same budget
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)  #: the cell's records (for plots)

    @classmethod
    def of(cls, recs: Sequence[dict[str, Any]], binary: bool | None = None) -> Cell:
        """Aggregate the records of one cell (``binary``: the metric's scores are all 0/1; None: decide here)."""
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
            score_ci=mean_ci(_numbers(r.get("score") for r in recs), binary),
            records=list(recs),
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
    binary: bool = False  #: every score of the task (and its control) is 0 or 1

    @property
    def answers_from_memory(self) -> bool:
        """True when a control ran and FullKV is not clearly above it (not significantly higher)."""
        p = self.full_vs_control
        return self.control is not None and (p is None or not p.significant or p.diff <= 0)

    def family(self, reference: str) -> str:
        """Name of the family of tests of one table: this task, one reference policy."""
        return f"task `{self.task}`, every policy × budget vs {reference}"

    def pairs(self, attr: str) -> list[Paired]:
        """The paired differences of one table (``vs_full`` or ``vs_proposed``), in table order."""
        out = []
        for p in self.policies:
            for b in self.budgets:
                c = self.cell(p, b)
                if c is not None and getattr(c, attr) is not None:
                    out.append(getattr(c, attr))
        return out

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
        """Policies whose per-layer budgets differ across layers in the records."""
        out = []
        for p in self.policies:
            profiles = [c.layer_profile for (q, _), c in self.cells.items() if q == p and c.layer_profile]
            varies = any(max(pr) - min(pr) > 1e-6 * max(1.0, max(pr)) for pr in profiles)
            if profiles and varies:
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


def _main_run(recs: Sequence[dict[str, Any]]) -> str:
    """The run setting most of a task's records share (the FullKV shown as the reference row)."""
    counts: dict[str, int] = defaultdict(int)
    for r in recs:
        counts[str(r.get("run_setting", ""))] += 1
    return max(counts, key=lambda k: counts[k])


def summarize(records: Sequence[dict[str, Any]], proposed: str | None = None,
              rivals: Sequence[str] | None = None) -> list[TaskSummary]:
    """Group records by (model, task) and aggregate each (policy, budget) cell.

    ``proposed`` is the policy every other one is also paired with (None: none); ``rivals`` the
    ones the findings compare it with (None: every other compressing policy). Scores count as binary
    when every score of the task and its control is 0 or 1. The paired differences of each table
    (one task, one reference: FullKV or ``proposed``) are Holm-adjusted as one family; the
    FullKV-vs-control test is a family of its own.
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
        # FullKV does not depend on the budget: one record per sample (a runner may repeat it per budget), and
        # one reference per run setting (``--add-settings`` may have run it under several)
        full_by_run: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for r in recs:
            if r.get("policy") == FULL:
                full_by_run[str(r.get("run_setting", ""))].setdefault(str(r.get("sample_id")), r)
        main = full_by_run.get(_main_run(recs)) or next(iter(full_by_run.values()), {})
        full_recs = list(main.values())
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
        binary = is_binary(r.get("score") for r in [*recs, *controls.get((model, task), [])])
        cells = {k: Cell.of(v, binary) for k, v in by_cell.items()}
        full = Cell.of(full_recs, binary) if full_recs else None
        fulls = {run: Cell.of(list(by_sample.values()), binary) for run, by_sample in full_by_run.items()}
        for (p, bk), c in cells.items():
            own = fulls.get(str(by_cell[(p, bk)][0].get("run_setting", "")), full)
            if own is not None:
                c.vs_full = Paired.of(c.scores, own.scores, binary)
            ref = cells.get((proposed, bk)) if proposed else None
            if ref is not None and p != proposed:
                c.vs_proposed = Paired.of(c.scores, ref.scores, binary)
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
                binary=binary,
            )
        )
        s = out[-1]
        adjust_family(s.pairs("vs_full"), s.family("FullKV"))
        if s.proposed:
            adjust_family(s.pairs("vs_proposed"), s.family(s.proposed))
        ctrl = [r for r in controls.get((model, task), []) if r.get("policy") == FULL]
        if ctrl:
            s.control = Cell.of(list({str(r.get("sample_id")): r for r in ctrl}.values()), binary)
            if full is not None:
                s.full_vs_control = Paired.of(full.scores, s.control.scores, binary)
                if s.full_vs_control is not None:
                    adjust_family([s.full_vs_control], f"task `{task}`: FullKV vs its no-context control (one test)")
    return out


# -- formatting ------------------------------------------------------------------------------------


def fmt_fixed(x: float | None, decimals: int = 3) -> str:
    """``x`` with a fixed number of decimals (one per table column), or an em dash for missing values; a value
    that rounds to zero prints unsigned (never ``-0.000``)."""
    if x is None:
        return "—"
    text = f"{x:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt3(x: float | None) -> str:
    """Three decimals (scores, KL, agreement, ratios), or an em dash for missing values."""
    return fmt_fixed(x, 3)


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 sample``, ``2 samples`` (``words``: an irregular plural)."""
    return f"{n} {word if n == 1 else words or word + 's'}"


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def display_name(policy: str) -> str:
    """``FullKV`` for the reference, the policy name otherwise."""
    return "FullKV" if policy == FULL else policy


# -- findings --------------------------------------------------------------------------------------


def fmt_diff(x: float) -> str:
    """A signed difference with three decimals (``+0.000`` for anything that rounds to zero)."""
    return f"{0.0 if abs(x) < 5e-4 else x:+.3f}"


def fmt_p(p: float | None) -> str:
    """A p-value with three decimals, ``< 0.001`` below that, an em dash when missing."""
    if p is None:
        return "—"
    return "< 0.001" if p < 0.0005 else f"{p:.3f}"


def p_text(p: float | None, label: str = "p") -> str:
    """``p = 0.016`` or ``p < 0.001``."""
    return f"{label} < 0.001" if p is not None and p < 0.001 else f"{label} = {fmt_p(p)}"


def fmt_test(pair: Paired, flip: bool = False) -> str:
    """``7–1 samples, p = 0.070, Holm-adjusted p = 0.840``: the evidence behind a paired verdict
    (``flip``: wins and losses from the other policy's side)."""
    w, lo = (pair.losses, pair.wins) if flip else (pair.wins, pair.losses)
    return f"{w}–{lo} samples, {p_text(pair.p)}, {p_text(pair.p_adj, 'Holm-adjusted p')}"


def min_attainable_p(n: int) -> float:
    """Smallest two-sided p the paired tests can give on ``n`` pairs (every pair the same way): 2 / 2**n."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def findings(s: TaskSummary) -> list[str]:
    """Plain statements computed from the numbers: highest mean per budget (ties called ties), what is
    significantly below FullKV, significant wins/losses of the proposed method against its rivals
    (Holm-adjusted within each table's family), and caveats (uninformative FullKV, small samples).
    Nothing is claimed from a single sample."""
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
        diff = f"FullKV − control {fmt_diff(pair.diff)}, {fmt_test(pair)}" if pair else "not paired"
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
    if ns and ns[0] == 1:
        held = "every cell holds 1" if ns[-1] == 1 else f"cells hold {ns[0]}–{ns[-1]} samples"
        out.append(f"Some cells hold a single sample: they get no interval, no paired test and no place in the "
                   f"findings below ({held}).")
    elif ns and ns[0] < 20:
        held = plural(ns[0], "sample") if ns[-1] == ns[0] else f"{ns[0]}–{ns[-1]} samples"
        out.append(
            f"Cells hold {held}; a single sample moves a mean score by up to {fmt3(1 / ns[0])}, so small "
            "differences are noise."
            + (f" With {plural(ns[-1], 'pair')} no paired test can give p below {min_attainable_p(ns[-1]):.3g}, "
               "so no difference can be significant." if min_attainable_p(ns[-1]) >= ALPHA else "")
        )
    # highest mean per budget (a ranking of means, not a test); ties are ties; nothing from one sample
    top_lines = []
    for b in s.budgets:
        scored = [(p, c.score) for p in s.policies if (c := s.cell(p, b)) and c.score is not None and c.n >= 2]
        if not scored:
            continue
        top = max(v for _, v in scored)
        tied = [p for p, v in scored if top - v < TIE]
        rel = f", {top / full_score:.0%} of FullKV" if full_score else ""
        if len(tied) == len(scored) and len(scored) > 1:
            top_lines.append(f"{b.label}: all tied at {fmt3(top)}{rel}")
        elif len(tied) > 1:
            top_lines.append(f"{b.label}: tie between {_and(tied)} at {fmt3(top)}{rel}")
        else:
            top_lines.append(f"{b.label}: {tied[0]} {fmt3(top)}{rel}")
    if top_lines:
        out.append("Highest mean score per budget (means only; see the paired tests for what is significant) — "
                   + "; ".join(top_lines) + ".")
    # fidelity per budget
    kl_lines = []
    for b in s.budgets:
        kls = [(p, c.kl) for p in s.policies if (c := s.cell(p, b)) and c.kl is not None and c.n >= 2]
        if kls:
            low = min(v for _, v in kls)
            tied = [p for p, v in kls if v - low <= 1e-9 * max(1.0, abs(low))]
            kl_lines.append(f"{b.label}: {_and(tied)}" + (" (tied)" if len(tied) > 1 else "") + f" ({fmt3(low)})")
    if kl_lines:
        out.append("Lowest mean KL to FullKV per budget — " + "; ".join(kl_lines) + ".")
    # significance against FullKV (Holm within the table's family)
    if s.full is not None and any(c.vs_full and c.vs_full.n >= 2 for c in s.cells.values()):
        below, not_below = [], []
        for b in s.budgets:
            sig = [p for p in s.policies if (c := s.cell(p, b)) and c.vs_full and c.vs_full.significant
                   and c.vs_full.diff < 0]
            ok = [p for p in s.policies if (c := s.cell(p, b)) and c.vs_full and c.vs_full.n >= 2
                  and not (c.vs_full.significant and c.vs_full.diff < 0)]
            if sig:
                below.append(f"{b.label}: {_and(sig)}")
            if ok:
                not_below.append(f"{b.label}: {_and(ok)}")
        family = s.family("FullKV")
        out.append(f"Significantly below FullKV (Holm-adjusted p < {ALPHA:g}; family: {family}) — "
                   + ("; ".join(below) if below else "none") + ".")
        if not_below:
            out.append("Not significantly below FullKV (no evidence of a loss at this sample size, which is not "
                       "evidence of none) — " + "; ".join(not_below) + ".")
    # proposed method vs rivals, paired on the same samples
    if s.proposed:
        for rival in s.rivals:
            wins, losses, ties, details = [], [], [], []
            for b in s.budgets:
                a, r = s.cell(s.proposed, b), s.cell(rival, b)
                if not a or not r or r.vs_proposed is None or r.vs_proposed.n < 2:
                    continue
                pair = r.vs_proposed  # rival - proposed
                d = -pair.diff
                ev = fmt_test(pair, flip=True)
                note = ""
                if a.mem_ratio and r.mem_ratio and abs(a.mem_ratio / r.mem_ratio - 1) > MEM_TOLERANCE:
                    note = f", not equal memory: {fmt3(a.mem_ratio)} vs {fmt3(r.mem_ratio)} of FullKV"
                if not pair.significant:
                    ties.append(b.label)
                    details.append(f"no significant difference at {b.label} ({fmt_diff(d)}, {ev}{note})")
                elif d > 0:
                    wins.append(b.label)
                    details.append(f"wins at {b.label} ({fmt3(a.score)} vs {fmt3(r.score)}, {fmt_diff(d)}, {ev}{note})")
                else:
                    losses.append(b.label)
                    details.append(f"**loses** at {b.label} ({fmt3(a.score)} vs {fmt3(r.score)}, "
                                   f"{fmt_diff(d)}, {ev}{note})")
            if not details:
                continue
            head = (f"{s.proposed} vs {rival} (paired on the same samples; family: {s.family(s.proposed)}): "
                    f"{plural(len(wins), 'significant win')}, "
                    f"{plural(len(losses), 'significant loss', 'significant losses')}, "
                    f"{plural(len(ties), 'budget')} without a significant difference")
            out.append(head + ": " + "; ".join(details) + ".")
    return out
