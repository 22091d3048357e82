"""Apply round 2's rule (docs/study.md, "The rule") to the two protocols' results folders; write tables and plots.

Usage::

    python docs/study/round2/analyze.py stage0  PROMPT_DIR CONTEXT_DIR --out PREFIX
    python docs/study/round2/analyze.py search  PROMPT_DIR CONTEXT_DIR --families-prompt a,b --families-context a,c \\
                                                --out PREFIX
    python docs/study/round2/analyze.py heldout PROMPT_DIR CONTEXT_DIR --families-prompt a,b --families-context a,c \\
                                                --pick NAME [--runner-up NAME] --out PREFIX

PROMPT_DIR and CONTEXT_DIR are the output folders (their ``results.jsonl``) of the same suite run with
``--compress prompt`` and ``--compress context``.

- ``stage0``: FullKV against its no-context control per family and protocol: the exact sign test on the samples
  where FullKV scored higher / lower, Holm over every family x protocol test as one family; a family counts in a
  protocol when FullKV is above the control on more samples than below, the adjusted p is below 0.05 and FullKV's
  mean is at least 0.25. Writes PREFIX.md; prints one line per protocol, ``prompt: a,b``, for ``--families-*``.
- ``search``: ``R_p(c, b)`` = mean over the counted families of protocol p of (c's mean score / FullKV's), per
  protocol and per family; eligibility (every candidate's cells paired with snapkv's, on every counted
  (family, protocol, budget) cell, Holm over all of them as one family; random is never eligible); the pick and
  the runner-up by the tie rule; the costs. Writes PREFIX.md and PREFIX-<protocol>-<family>.png; prints the pick.
- ``heldout``: the pick's ``R_p(pick, b)`` with paired BCa intervals on the counted families and on every family
  of the folder; the pick's per-family ratio at 20% against 0.9; rule step 3 (the recommended default); question
  2 (the pre-registered adaptive / uniform pairs, every counted (family, protocol, budget) cell, Holm over all of
  them as one family). Writes PREFIX.md; prints the step-3 verdict and one line per pair.

Everything comes from :mod:`lukv_bench.report.summary` (cells, paired tests) and :mod:`lukv_bench.report.stats`
(the sign test, Holm, BCa intervals); nothing is typed in by hand except the rule's constants below, which are
docs/study.md's. Policies or families missing from a folder are reported as missing.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lukv_bench.report.stats import ALPHA, holm, mean_ratio_ci, sign_test
from lukv_bench.report.summary import Paired, TaskSummary, fmt3, fmt_diff, fmt_fixed, fmt_p, load_results, summarize
from lukv_bench.tasks.control import is_control

# -- the rule's constants (docs/study.md) ------------------------------------------------------------------------

PROTOCOLS = ("prompt", "context")  #: the two protocols, in the order of the command line
BASELINE = "snapkv"  #: eligibility is "never significantly below snapkv"
DEFAULT = "layer-uncertainty-plus"  #: the current recommended default (rule step 3)
FAITHFUL = "layer-uncertainty"  #: the paper's rule (highlighted in the plots)
FLOOR = "random"  #: never eligible
AT = "0.2"  #: the budget of the pick
NEXT = "0.1"  #: the budget of the first tie-break
TIE_WIDTH = 0.02  #: candidates within this of the best mean R_p(c, 0.2) tie
MIN_FULL = 0.25  #: FullKV's mean score must be at least this for a family to count
TARGET = 0.9  #: the quality target: 90% of FullKV's score
EPS = 1e-12  #: float slack in the rule's comparisons
#: question 2's pre-registered (adaptive, uniform twin) pairs, in the order of docs/study.md's table
PAIRS = (
    ("layer-uncertainty", "snapkv"),
    ("pyramidkv", "snapkv"),
    ("adakv", "snapkv"),
    ("lu-k15", "snapkv-k15"),
    ("layer-uncertainty-plus", "snapkv-k15"),
    ("heads-k15", "snapkv-k15"),
    ("layer-defensivekv", "defensive-uniform"),
)

BOLD_COLORS = ("black", "tab:red", "tab:blue")  #: the plots' highlighted lines: the pick, snapkv, the paper's rule
Folder = dict[str, TaskSummary]  #: task name -> its summary, for one protocol's folder


# -- loading -----------------------------------------------------------------------------------------------------


def load_folder(folder: str | Path, proposed: str | None = BASELINE) -> tuple[Folder, int]:
    """The task summaries of a results folder (``proposed``: the policy every cell is paired with), and its
    number of records. A no-context control joins its task's summary; a folder with several models is refused; a
    folder without ``results.jsonl`` (a run not started yet) is empty: everything in it is reported missing."""
    if not (Path(folder) / "results.jsonl").is_file():
        print(f"warning: {folder} has no results.jsonl: every family and policy of it is missing", file=sys.stderr)
        return {}, 0
    records, _ = load_results(Path(folder) / "results.jsonl")
    out: Folder = {}
    for s in summarize(records, proposed=proposed):
        if is_control(s.task):
            continue  # a control without its task: nothing to compare it with
        if s.task in out:
            raise SystemExit(f"{folder}: task {s.task} ran with several models ({out[s.task].model}, {s.model})")
        out[s.task] = s
    return out, len(records)


def parse_families(text: str | None) -> list[str]:
    """``a,b`` -> ``["a", "b"]`` (empty for None or ``""``)."""
    return [f.strip() for f in (text or "").split(",") if f.strip()]


def paired_groups(s: TaskSummary, policy: str, label: str) -> tuple[list[float], list[float]] | None:
    """(policy's scores, FullKV's scores) on their common samples at the budget labelled ``label``; None when the
    cell, FullKV or a common sample is missing."""
    b = next((b for b in s.budgets if b.label == label), None)
    c = s.cell(policy, b) if b is not None else None
    if c is None or s.full is None:
        return None
    ids = [k for k in c.scores if k in s.full.scores]
    if not ids:
        return None
    return [c.scores[k] for k in ids], [s.full.scores[k] for k in ids]


def ratio(s: TaskSummary, policy: str, label: str) -> float | None:
    """A family's policy mean score / FullKV mean score on their common samples (None: missing, or FullKV 0)."""
    g = paired_groups(s, policy, label)
    if g is None or sum(g[1]) == 0:
        return None
    return (sum(g[0]) / len(g[0])) / (sum(g[1]) / len(g[1]))


def r_p(folder: Folder, families: Sequence[str], policy: str, label: str) -> float | None:
    """``R_p(policy, b)``: the mean over ``families`` of :func:`ratio`; None when any family's ratio is missing."""
    vals = [ratio(folder[f], policy, label) if f in folder else None for f in families]
    if not vals or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)  # type: ignore[arg-type]


def policies_of(folders: Sequence[Folder]) -> list[str]:
    """Every compressing policy of the folders, in the summaries' display order."""
    out: list[str] = []
    for folder in folders:
        for s in folder.values():
            out += [p for p in s.policies if p not in out]
    return out


def budgets_of(folders: Sequence[Folder]) -> list[str]:
    """Every budget label of the folders, smallest first."""
    seen: dict[str, float] = {}
    for folder in folders:
        for s in folder.values():
            for b in s.budgets:
                seen.setdefault(b.label, b.ratio if b.ratio is not None else math.inf)
    return sorted(seen, key=lambda k: (seen[k], k))


def compress_times(folder: Folder, families: Sequence[str], policy: str) -> list[float]:
    """The ``compress_s`` of every record of ``policy`` in ``families`` (all budgets)."""
    out = []
    for f in families:
        if f not in folder:
            continue
        for (p, _), c in folder[f].cells.items():
            if p == policy:
                out += [float(r["compress_s"]) for r in c.records if isinstance(r.get("compress_s"), (int, float))]
    return out


def median_or_none(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def counted_lines(counted: dict[str, list[str]]) -> list[str]:
    """The per-protocol counted family sets, as markdown."""
    return ["**Counted families** (given on the command line: stage 0's result on the search samples):", ""] + [
        f"- `{p}`: {', '.join(counted[p]) or 'none'}" for p in PROTOCOLS] + [""]


# -- stage 0 -----------------------------------------------------------------------------------------------------


@dataclass
class ControlTest:
    """FullKV against its no-context control on one (family, protocol)."""

    protocol: str
    family: str
    n: int = 0  #: paired samples
    full: float | None = None  #: FullKV's mean score
    control: float | None = None  #: the control's mean score
    wins: int = 0  #: samples where FullKV scored higher
    losses: int = 0  #: samples where it scored lower
    p: float | None = None  #: exact two-sided sign test
    p_adj: float | None = None  #: Holm over every test of the stage
    missing: str = ""  #: why there is no test
    counts: bool = False

    def why_not(self) -> str:
        """Why the family does not count ("" when it does)."""
        if self.missing:
            return self.missing
        out = []
        if self.wins <= self.losses:
            out.append("not above the control on more samples than below")
        if self.p_adj is None or self.p_adj >= ALPHA:
            out.append(f"Holm-adjusted p ≥ {ALPHA:g}")
        if self.full is None or self.full < MIN_FULL - EPS:
            out.append(f"FullKV mean < {MIN_FULL:g}")
        return "; ".join(out)


def control_tests(folders: dict[str, Folder]) -> list[ControlTest]:
    """Stage 0's tests: one per (family, protocol) of the folders, Holm-adjusted together, with the verdict."""
    families: list[str] = []
    for folder in folders.values():
        families += [t for t in folder if t not in families]
    tests = []
    for proto, folder in folders.items():
        for fam in families:
            t = ControlTest(proto, fam)
            s = folder.get(fam)
            if s is None:
                t.missing = "family missing from the folder"
            elif s.full is None:
                t.missing = "no FullKV records"
            elif s.control is None:
                t.missing = "no control records"
            elif s.full_vs_control is None:
                t.missing = "FullKV and the control share no sample"
            else:
                pair = s.full_vs_control
                t.n, t.full, t.control = pair.n, s.full.score, s.control.score
                t.wins, t.losses, t.p = pair.wins, pair.losses, sign_test(pair.wins, pair.losses)
            tests.append(t)
    done = [t for t in tests if t.p is not None]
    for t, adj in zip(done, holm([t.p for t in done]), strict=True):  # type: ignore[misc]
        t.p_adj = adj
        t.counts = t.wins > t.losses and adj < ALPHA and t.full is not None and t.full >= MIN_FULL - EPS
    return tests


def run_stage0(prompt_dir: str, context_dir: str, out: str) -> dict[str, list[str]]:
    """Stage 0: write ``out``.md; return the counted families per protocol."""
    folders, sizes = {}, {}
    for proto, d in zip(PROTOCOLS, (prompt_dir, context_dir), strict=True):
        folders[proto], sizes[proto] = load_folder(d, proposed=None)
    tests = control_tests(folders)
    done = [t for t in tests if t.p is not None]
    counted = {p: [t.family for t in tests if t.protocol == p and t.counts] for p in PROTOCOLS}
    lines = ["# Round 2, stage 0: which families count", "",
             *[f"- `{p}`: `{d}` ({sizes[p]} records)" for p, d in zip(PROTOCOLS, (prompt_dir, context_dir),
                                                                       strict=True)], "",
             f"FullKV against the no-context control on the same samples: higher–lower = samples where FullKV scored "
             f"higher–lower; p: the exact two-sided sign test on them; Holm over the {len(done)} family × protocol "
             f"tests as one family. A family counts when FullKV is higher on more samples than lower, the adjusted "
             f"p < {ALPHA:g} and FullKV's mean ≥ {MIN_FULL:g}.", "",
             "| protocol | family | n | FullKV | control | higher–lower | p | Holm-adjusted p | counts | why not |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for t in tests:
        lines.append(f"| {t.protocol} | {t.family} | {t.n} | {fmt3(t.full)} | {fmt3(t.control)} | "
                     f"{t.wins}–{t.losses} | {fmt_p(t.p)} | {fmt_p(t.p_adj)} | {'**yes**' if t.counts else 'no'} "
                     f"| {t.why_not() or '—'} |")
    lines += ["", "## Counted families per protocol", ""]
    lines += [f"- `{p}`: {', '.join(counted[p]) or 'none'}" for p in PROTOCOLS]
    lines += ["", "Next: `search ... " + " ".join(f"--families-{p} {','.join(counted[p]) or repr('')}"
                                                for p in PROTOCOLS) + "`", ""]
    Path(out + ".md").write_text("\n".join(lines))
    for p in PROTOCOLS:
        print(f"{p}: {','.join(counted[p])}")
    return counted


# -- stage 1: the search -----------------------------------------------------------------------------------------


@dataclass
class CellTest:
    """One paired test of a policy against another on a (family, protocol, budget) cell."""

    policy: str
    other: str
    protocol: str
    family: str
    budget: str
    n: int
    diff: float  #: mean of policy − other
    wins: int
    losses: int
    p: float
    method: str
    p_adj: float = 1.0

    @property
    def above(self) -> bool:
        """Significantly above the other policy (Holm-adjusted)."""
        return self.p_adj < ALPHA and self.diff > 0

    @property
    def below(self) -> bool:
        """Significantly below the other policy (Holm-adjusted)."""
        return self.p_adj < ALPHA and self.diff < 0

    def where(self) -> str:
        """``protocol/family@budget (+0.12, 9–1, p 0.021, adj 0.040)``."""
        return (f"{self.protocol}/{self.family}@{self.budget} ({self.diff:+.3f}, {self.wins}–{self.losses}, "
                f"p {fmt_p(self.p)}, adj {fmt_p(self.p_adj)})")


def baseline_tests(folders: dict[str, Folder], counted: dict[str, list[str]],
                   candidates: Sequence[str]) -> list[CellTest]:
    """Every candidate's cell paired with ``snapkv``'s on every counted (family, protocol, budget) cell (the
    summaries' ``vs_proposed``), Holm-adjusted together as one family."""
    tests = []
    for proto, folder in folders.items():
        for fam in counted[proto]:
            s = folder.get(fam)
            if s is None:
                continue
            for c in candidates:
                if c == BASELINE:
                    continue
                for b in s.budgets:
                    cell = s.cell(c, b)
                    pair = cell.vs_proposed if cell is not None else None
                    if pair is not None:
                        tests.append(CellTest(c, BASELINE, proto, fam, b.label, pair.n, pair.diff, pair.wins,
                                              pair.losses, pair.p, pair.method))
    for t, adj in zip(tests, holm([t.p for t in tests]), strict=True):
        t.p_adj = adj
    return tests


def apply_rule(figures: dict[str, tuple[float, float, float | None]]) -> tuple[str | None, list[str]]:
    """Rule step 2 on ``{candidate: (mean R_p(c, 0.2), mean R_p(c, 0.1), median compress_s)}``: the candidates
    within :data:`TIE_WIDTH` of the largest first figure tie; the larger second figure breaks a tie, then the
    smaller third (None: unknown, last), then the name (for a deterministic answer). Returns (pick, the tie)."""
    if not figures:
        return None, []
    best = max(v[0] for v in figures.values())
    tied = [c for c, v in figures.items() if best - v[0] <= TIE_WIDTH + EPS]

    def key(c: str) -> tuple[float, float, str]:
        _, at_next, cost = figures[c]
        return (-round(at_next, 9), cost if cost is not None else math.inf, c)

    tied.sort(key=key)
    return tied[0], tied


@dataclass
class SearchResult:
    """What stage 1 decided."""

    pick: str | None
    runner_up: str | None
    tied: list[str]  #: the candidates that tied with the best (the pick among them)
    eligible: list[str]
    ineligible: dict[str, list[str]]  #: candidate -> why (cells significantly below snapkv, or the floor)
    incomplete: dict[str, str]  #: eligible candidates left out of the pick: a figure is missing
    figures: dict[str, tuple[float, float, float | None]] = field(default_factory=dict)


def run_search(prompt_dir: str, context_dir: str, counted: dict[str, list[str]], out: str,
               plots: bool = True) -> SearchResult:
    """Stage 1: write ``out``.md and the plots; return the pick and everything behind it."""
    folders, sizes = {}, {}
    for proto, d in zip(PROTOCOLS, (prompt_dir, context_dir), strict=True):
        folders[proto], sizes[proto] = load_folder(d)
    policies = policies_of(list(folders.values()))
    budgets = budgets_of(list(folders.values()))
    active = [p for p in PROTOCOLS if counted[p]]  # protocols with a counted family
    lines = ["# Round 2, stage 1: the search", "",
             *[f"- `{p}`: `{d}` ({sizes[p]} records)" for p, d in zip(PROTOCOLS, (prompt_dir, context_dir),
                                                                       strict=True)], "",
             *counted_lines(counted)]
    problems = [f"`{p}`: {f} is counted but missing from the folder" for p in PROTOCOLS for f in counted[p]
                if f not in folders[p]]
    missing = {p: [c for c in policies if any(f in folders[p] and not any(q == c for q, _ in folders[p][f].cells)
                                              for f in counted[p])] for p in PROTOCOLS}
    problems += [f"`{p}`: {c} has no cell on some counted family" for p in PROTOCOLS for c in missing[p]]
    if BASELINE not in policies:
        problems.append(f"{BASELINE} is missing from both folders: no eligibility test can run")
    if len(active) < len(PROTOCOLS):
        problems.append("no family counts in " + ", ".join(p for p in PROTOCOLS if p not in active)
                        + ": the means over protocols are over " + (", ".join(active) or "nothing"))
    if problems:
        lines += ["**Missing:**", "", *[f"- {x}" for x in problems], ""]

    rp = {(p, c, b): r_p(folders[p], counted[p], c, b) for p in PROTOCOLS for c in policies for b in budgets}

    def over_protocols(c: str, b: str) -> float | None:
        vals = [rp[(p, c, b)] for p in active]
        return sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None  # type: ignore[misc]

    # eligibility
    tests = baseline_tests(folders, counted, policies)
    below: dict[str, list[CellTest]] = {c: [t for t in tests if t.policy == c and t.below] for c in policies}
    above: dict[str, list[CellTest]] = {c: [t for t in tests if t.policy == c and t.above] for c in policies}
    ineligible = {c: [t.where() for t in below[c]] for c in policies if below[c]}
    if FLOOR in policies:
        ineligible[FLOOR] = ["the floor: never eligible", *ineligible.get(FLOOR, [])]
    if BASELINE not in policies:
        ineligible.update({c: [f"{BASELINE} missing: not tested"] for c in policies})
    eligible = [c for c in policies if c not in ineligible]

    # the pick
    cost = {c: median_or_none([x for p in active for x in compress_times(folders[p], counted[p], c)])
            for c in policies}
    figures, incomplete = {}, {}
    for c in eligible:
        a, n = over_protocols(c, AT), over_protocols(c, NEXT)
        if a is None or n is None:
            incomplete[c] = f"R_p at {AT if a is None else NEXT} missing in some protocol"
        else:
            figures[c] = (a, n, cost[c])
    pick, tied = apply_rule(figures)
    runner_up, _ = apply_rule({c: v for c, v in figures.items() if c != pick})
    result = SearchResult(pick, runner_up, tied, eligible, ineligible, incomplete, figures)

    # tables
    head = "| policy | " + " | ".join(budgets) + " |"
    rule = "|---|" + "---:|" * len(budgets)
    lines += ["## R_p(c, b): mean over the counted families of (c's mean score / FullKV's mean score)", ""]
    for p in PROTOCOLS:
        lines += [f"### `{p}` (families: {', '.join(counted[p]) or 'none'})", "", head, rule]
        lines += [f"| {c} | " + " | ".join(fmt3(rp[(p, c, b)]) for b in budgets) + " |" for c in policies]
        lines.append("")
    lines += [f"### Mean over the protocols ({', '.join(active) or 'none'})", "", head, rule]
    lines += [f"| {c} | " + " | ".join(fmt3(over_protocols(c, b)) for b in budgets) + " |" for c in policies]
    lines += ["", "## Per family: policy mean score / FullKV mean score (policy mean score)", ""]
    for p in PROTOCOLS:
        for f in counted[p]:
            s = folders[p].get(f)
            if s is None:
                continue
            lines += [f"### `{p}` / {f} (FullKV {fmt3(s.full.score if s.full else None)}, "
                      f"n = {s.full.n if s.full else 0})", "", head, rule]
            for c in policies:
                row = []
                for b in budgets:
                    col = next((x for x in s.budgets if x.label == b), None)
                    cell = s.cell(c, col) if col is not None else None
                    r = ratio(s, c, b)
                    row.append("missing" if cell is None else f"{fmt_fixed(r, 2)} ({fmt3(cell.score)})")
                lines.append(f"| {c} | " + " | ".join(row) + " |")
            lines.append("")

    lines += [f"## Eligibility: paired tests against {BASELINE}", "",
              f"One family of {len(tests)} tests: every candidate against {BASELINE} on every counted (family, "
              f"protocol, budget) cell (exact sign test for 0/1 scores, exact sign-flip permutation test otherwise; "
              f"two-sided), Holm-adjusted together ({FLOOR}'s tests included: it is a candidate, the floor). A "
              f"candidate is eligible unless some cell is significantly below {BASELINE} (adjusted p < {ALPHA:g}); "
              f"{FLOOR} never is.", "",
              "| candidate | eligible | significantly below on | significantly above on |", "|---|---|---|---|"]
    for c in policies:
        why = ineligible.get(c, [])
        lines.append(f"| {c} | {'no' if c in ineligible else 'yes'} | {'; '.join(why) or '—'} "
                     f"| {'; '.join(t.where() for t in above[c]) or '—'} |")
    lines += ["", f"Significant after Holm: {sum(t.p_adj < ALPHA for t in tests)} of {len(tests)}.", ""]

    lines += ["## The pick", "",
              f"Eligible candidates by the mean over the protocols of R_p(c, {AT}); those within {TIE_WIDTH:g} of the "
              f"largest tie, a tie is broken by the larger mean R_p(c, {NEXT}), then by the smaller median "
              f"compress_s (every search record of the candidate on the counted families, both protocols).", "",
              f"| candidate | mean R_p(c, {AT}) | mean R_p(c, {NEXT}) | median compress_s | ties with the best |",
              "|---|---:|---:|---:|---|"]
    for c in sorted(figures, key=lambda c: -figures[c][0]):
        a, n, cs = figures[c]
        lines.append(f"| {c} | {a:.3f} | {n:.3f} | {fmt_fixed(cs, 4)} | {'yes' if c in tied else ''} |")
    for c, why in incomplete.items():
        lines.append(f"| {c} | {fmt3(over_protocols(c, AT))} | {fmt3(over_protocols(c, NEXT))} | "
                     f"{fmt_fixed(cost[c], 4)} | left out: {why} |")
    lines += ["", f"- Pick: **{pick or 'none'}**" + (f" (tied: {', '.join(tied)})" if len(tied) > 1 else ""),
              f"- Runner-up: **{runner_up or 'none'}** (the rule applied to the eligible candidates without the pick)",
              ""]

    lines += [f"## Costs: median compress_s relative to {BASELINE}'s, per protocol", "",
              "Median over the candidate's search records on the counted families (all budgets).", "",
              "| candidate | " + " | ".join(f"{p}: compress_s / {BASELINE} | {p}: R_p(c, {AT})" for p in PROTOCOLS)
              + " |", "|---|" + "---:|" * (2 * len(PROTOCOLS))]
    base = {p: median_or_none(compress_times(folders[p], counted[p], BASELINE)) for p in PROTOCOLS}
    for c in policies:
        row = []
        for p in PROTOCOLS:
            mine = median_or_none(compress_times(folders[p], counted[p], c))
            rel = mine / base[p] if mine is not None and base[p] else None
            row += [fmt_fixed(rel, 2), fmt3(rp[(p, c, AT)])]
        lines.append(f"| {c} | " + " | ".join(row) + " |")
    lines.append("")
    Path(out + ".md").write_text("\n".join(lines))
    if plots:
        plot_families(folders, counted, policies, budgets, out,
                      list(dict.fromkeys(x for x in (pick, BASELINE, FAITHFUL) if x)))
    print(pick or "none")
    return result


def plot_families(folders: dict[str, Folder], counted: dict[str, list[str]], policies: Sequence[str],
                  budgets: Sequence[str], out: str, highlight: Sequence[str]) -> list[Path]:
    """One plot per counted (protocol, family): score / FullKV against the budget, ``highlight`` drawn bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    xs = [float(b) for b in budgets]
    for p in PROTOCOLS:
        for f in counted[p]:
            s = folders[p].get(f)
            if s is None or s.full is None:
                continue
            fig, ax = plt.subplots(figsize=(7.5, 4.2))
            others = iter(plt.get_cmap("tab20").colors)
            for c in policies:
                ys = [ratio(s, c, b) for b in budgets]
                ys = [math.nan if y is None else y for y in ys]
                bold = c in highlight
                color = BOLD_COLORS[highlight.index(c) % len(BOLD_COLORS)] if bold else next(others, "grey")
                ax.plot(xs, ys, marker="o", markersize=4 if bold else 2, label=c, linewidth=2.6 if bold else 0.8,
                        alpha=1.0 if bold else 0.6, zorder=3 if bold else 2, color=color)
            ax.set_xscale("log")
            ax.set_xticks(xs, [f"{x:.0%}" for x in xs])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("KV budget (share of the context)")
            ax.set_ylabel("score / FullKV")
            ax.set_title(f"{p}: {f} (FullKV {s.full.score:.2f}, n={s.full.n}); bold: {', '.join(highlight)}",
                         fontsize=8)
            ax.axhline(1.0, color="grey", linestyle=":")
            ax.axhline(TARGET, color="grey", linestyle="--", linewidth=0.8)
            ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
            fig.tight_layout()
            path = Path(f"{out}-{p}-{f}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


# -- stage 2: held-out and question 2 ----------------------------------------------------------------------------


@dataclass
class PairVerdict:
    """Question 2's verdict on one (adaptive, uniform) pair."""

    adaptive: str
    uniform: str
    verdict: str  #: "beats uniform", "loses", "no significant difference" or "missing: ..."
    tests: list[CellTest] = field(default_factory=list)
    missing_cells: list[str] = field(default_factory=list)


@dataclass
class HeldoutResult:
    """What stage 2 found."""

    figures_at: dict[str, float | None]  #: policy -> mean over the protocols of R_p(policy, 0.2), counted families
    becomes_default: bool
    reason: str
    pairs: list[PairVerdict]


def pair_tests(folders: dict[str, Folder], counted: dict[str, list[str]]) -> list[PairVerdict]:
    """Question 2: every pre-registered pair on every counted (family, protocol, budget) cell, adaptive minus
    uniform on the same samples; all tests of all pairs Holm-adjusted as one family; a verdict per pair."""
    verdicts = []
    for a, u in PAIRS:
        v = PairVerdict(a, u, "")
        absent = [x for x in (a, u) if not any(x in s.policies for f in PROTOCOLS for s in folders[f].values())]
        if absent:
            v.verdict = "missing: " + ", ".join(absent) + " not in the folders"
        for proto in PROTOCOLS:
            for fam in counted[proto]:
                s = folders[proto].get(fam)
                if s is None:
                    v.missing_cells.append(f"{proto}/{fam} (family missing)")
                    continue
                for b in s.budgets:
                    ca, cu = s.cell(a, b), s.cell(u, b)
                    pair = Paired.of(ca.scores, cu.scores, s.binary) if ca is not None and cu is not None else None
                    if pair is None:
                        if not absent:
                            v.missing_cells.append(f"{proto}/{fam}@{b.label}")
                        continue
                    v.tests.append(CellTest(a, u, proto, fam, b.label, pair.n, pair.diff, pair.wins, pair.losses,
                                            pair.p, pair.method))
        verdicts.append(v)
    every = [t for v in verdicts for t in v.tests]
    for t, adj in zip(every, holm([t.p for t in every]), strict=True):
        t.p_adj = adj
    for v in verdicts:
        if v.verdict:
            continue
        if not v.tests:
            v.verdict = "missing: no cell with both policies"
        elif any(t.below for t in v.tests):
            v.verdict = "loses"
        elif any(t.above for t in v.tests):
            v.verdict = "beats uniform"
        else:
            v.verdict = "no significant difference"
    return verdicts


def headline_cell(folder: Folder, families: Sequence[str], policy: str, label: str) -> str:
    """``0.912 [0.85, 0.97]``: the mean over ``families`` of the paired ratios with its BCa interval."""
    groups = [paired_groups(folder[f], policy, label) if f in folder else None for f in families]
    if not groups or any(g is None for g in groups):
        return "missing"
    point = r_p(folder, families, policy, label)
    if point is None:
        return "undefined (FullKV 0)"
    ci = mean_ratio_ci(groups)  # type: ignore[arg-type]
    return f"{point:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def run_heldout(prompt_dir: str, context_dir: str, counted: dict[str, list[str]], pick: str, out: str,
                runner_up: str | None = None) -> HeldoutResult:
    """Stage 2 and question 2: write ``out``.md; return the step-3 verdict and the pairs' verdicts."""
    folders, sizes = {}, {}
    for proto, d in zip(PROTOCOLS, (prompt_dir, context_dir), strict=True):
        folders[proto], sizes[proto] = load_folder(d, proposed=None)
    policies = policies_of(list(folders.values()))
    budgets = budgets_of(list(folders.values()))
    active = [p for p in PROTOCOLS if counted[p]]
    lines = ["# Round 2, stage 2: held-out", "",
             *[f"- `{p}`: `{d}` ({sizes[p]} records)" for p, d in zip(PROTOCOLS, (prompt_dir, context_dir),
                                                                       strict=True)], "",
             *counted_lines(counted), f"Pick (from the search): **{pick}**.", ""]
    shown = list(dict.fromkeys(x for x in (pick, runner_up, BASELINE, DEFAULT) if x))
    absent = [x for x in shown if x not in policies]
    if absent:
        lines += [f"**Missing from both folders:** {', '.join(absent)}.", ""]

    # headline
    lines += ["## Headline: R_p(c, b) with 95% intervals", "",
              "Mean over the families of (c's mean score / FullKV's mean score), paired on the same samples [95% BCa "
              "bootstrap interval: samples resampled within each family, each with its FullKV score; none when the "
              "figure cannot vary].", ""]
    for p in PROTOCOLS:
        every = list(folders[p])
        defined = [f for f in every if folders[p][f].full is not None and (folders[p][f].full.score or 0) > 0]
        sets = [("counted", counted[p]), ("every family of the folder", defined)]
        for name, fams in sets:
            lines += [f"### `{p}`, {name}: {', '.join(fams) or 'none'}", ""]
            if name != "counted" and len(defined) < len(every):
                lines += [f"Left out (FullKV scored 0: no ratio): {', '.join(f for f in every if f not in defined)}.",
                          ""]
            if not fams:
                continue
            lines += ["| policy | " + " | ".join(budgets) + " |", "|---|" + "---:|" * len(budgets)]
            for c in shown:
                if c in policies:
                    lines.append(f"| {c} | " + " | ".join(headline_cell(folders[p], fams, c, b) for b in budgets)
                                 + " |")
            lines.append("")

    # per family at 20%
    lines += [f"## {pick} per family at {AT}: ratio to FullKV and its distance from {TARGET:g}", "",
              "| protocol | family | counted | FullKV | pick | pick / FullKV | − " + f"{TARGET:g} |",
              "|---|---|---|---:|---:|---:|---:|"]
    for p in PROTOCOLS:
        for f, s in folders[p].items():
            col = next((x for x in s.budgets if x.label == AT), None)
            cell = s.cell(pick, col) if col is not None else None
            r = ratio(s, pick, AT)
            lines.append(f"| {p} | {f} | {'yes' if f in counted[p] else 'no'} | "
                         f"{fmt3(s.full.score if s.full else None)} | "
                         f"{'missing' if cell is None else fmt3(cell.score)} | {fmt3(r)} | "
                         f"{'—' if r is None else fmt_diff(r - TARGET)} |")
    lines.append("")

    # rule step 3
    def at20(c: str) -> float | None:
        vals = [r_p(folders[p], counted[p], c, AT) for p in active]
        return sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None  # type: ignore[misc]

    figs = {c: at20(c) for c in (pick, BASELINE, DEFAULT)}
    mine = figs[pick]
    short = [c for c in (BASELINE, DEFAULT) if c != pick and (figs[c] is None or mine is None or mine < figs[c] - EPS)]
    becomes = mine is not None and not short
    if becomes:
        reason = (f"{pick}'s held-out mean R_p at {AT} ({mine:.3f}) is at least {BASELINE}'s "
                  f"({fmt3(figs[BASELINE])}) and {DEFAULT}'s ({fmt3(figs[DEFAULT])})")
    elif mine is None:
        reason = f"{pick}'s held-out figure at {AT} is missing"
    else:
        reason = "; ".join(f"{pick} {mine:.3f} < {c} {fmt3(figs[c])}" if figs[c] is not None
                           else f"{c}'s figure is missing" for c in short)
    lines += ["## Rule step 3: the recommended default", "",
              f"Mean over the protocols ({', '.join(active) or 'none'}) of R_p(c, {AT}) on the counted families:", "",
              "| policy | held-out figure |", "|---|---:|"]
    lines += [f"| {c} | {fmt3(v)} |" for c, v in figs.items()]
    lines += ["", f"- **{pick + ' becomes the recommended default' if becomes else DEFAULT + ' stays the default'}**"
              f": {reason}.", ""]

    # question 2
    verdicts = pair_tests(folders, counted)
    n_tests = sum(len(v.tests) for v in verdicts)
    lines += ["## Question 2: adaptive vs uniform with the same selection", "",
              f"Adaptive minus uniform on the same samples, on every counted (family, protocol, budget) cell; one "
              f"family of {n_tests} tests (all pairs), Holm-adjusted. \"Beats uniform\": at least one cell "
              f"significantly above (adjusted p < {ALPHA:g}) and none significantly below; \"loses\": some cell "
              f"significantly below.", "",
              "| adaptive | uniform twin | cells tested | verdict | significantly above on | significantly below on |",
              "|---|---|---:|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v.adaptive} | {v.uniform} | {len(v.tests)} | **{v.verdict}** | "
                     f"{'; '.join(t.where() for t in v.tests if t.above) or '—'} | "
                     f"{'; '.join(t.where() for t in v.tests if t.below) or '—'} |")
    lines.append("")
    gaps = [(v, c) for v in verdicts for c in v.missing_cells]
    if gaps:
        lines += ["Missing cells (not tested): " + "; ".join(f"{v.adaptive} vs {v.uniform} {c}" for v, c in gaps)
                  + ".", ""]
    Path(out + ".md").write_text("\n".join(lines))
    print(("default: " + pick) if becomes else f"default stays {DEFAULT}: {reason}")
    for v in verdicts:
        print(f"{v.adaptive} vs {v.uniform}: {v.verdict}")
    return HeldoutResult(figs, becomes, reason, verdicts)


# -- command line ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand (``stage0``, ``search`` or ``heldout``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("stage0", "search", "heldout"):
        sp = sub.add_parser(name)
        sp.add_argument("prompt_dir")
        sp.add_argument("context_dir")
        sp.add_argument("--out", required=True, help="output prefix: PREFIX.md (and PREFIX-*.png)")
        if name != "stage0":
            sp.add_argument("--families-prompt", required=True, help="counted families of the prompt protocol")
            sp.add_argument("--families-context", required=True, help="counted families of the context protocol")
        if name == "search":
            sp.add_argument("--no-plots", action="store_true")
        if name == "heldout":
            sp.add_argument("--pick", required=True)
            sp.add_argument("--runner-up", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "stage0":
        run_stage0(args.prompt_dir, args.context_dir, args.out)
        return 0
    counted = {"prompt": parse_families(args.families_prompt), "context": parse_families(args.families_context)}
    if args.cmd == "search":
        res = run_search(args.prompt_dir, args.context_dir, counted, args.out, plots=not args.no_plots)
        return 0 if res.pick else 1
    run_heldout(args.prompt_dir, args.context_dir, counted, args.pick, args.out, args.runner_up)
    return 0


if __name__ == "__main__":
    sys.exit(main())
