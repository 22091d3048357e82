"""Apply docs/study/round1.md's selection rule to a results folder of docs/study/search.yaml; write tables and plots.

Usage: python docs/study/analyze.py RESULTS_DIR OUT_PREFIX [--baseline snapkv] [--faithful layer-uncertainty]
                                    [--families F1,F2] [--also F1,F2,F3 ...]

RESULTS_DIR is the output folder of a run (its results.jsonl). The held-out run's records are committed in
docs/study/heldout-records/ (rerun on 2026-12-04: every published figure reproduced); the search run's are
not, so rerun it first (docs/study.md, "What was run"). Writes OUT_PREFIX.md (tables: controls, relative score
per family, ranks, eligibility, the pick, the headline figures with intervals) and OUT_PREFIX-<family>.png
(score relative to FullKV vs budget, one line per policy). Everything comes from lukv_bench.report.summary
and lukv_bench.report.stats (cells, intervals, exact paired tests, Holm); nothing is typed in by hand.

Families that count: by default those whose FullKV is significantly above the no-context control on these
samples (exact paired test); ``--families`` fixes the counted set instead (the held-out analysis uses the set
the rule chose on the search samples). ``--also`` adds headline figures over other family sets.

Multiplicity: every paired test of a policy against the baseline on a counted (family, budget) cell belongs
to one family of tests (the study's pre-registered comparisons) and is Holm-adjusted over it; "significantly"
means adjusted p < 0.05.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lukv_bench.report.stats import ALPHA, holm, mean_ratio_ci
from lukv_bench.report.summary import fmt_p, load_results, summarize


def _rank(values: dict[str, float]) -> dict[str, float]:
    """Rank 1 = best; ties share their mean rank."""
    ordered = sorted(values, key=lambda p: -values[p])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and abs(values[ordered[j + 1]] - values[ordered[i]]) < 1e-12:
            j += 1
        for k in range(i, j + 1):
            ranks[ordered[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def headline(sets: list[tuple[str, list]], policies: list[str], budgets: list[str]) -> list[str]:
    """Mean over families of (policy mean score / FullKV mean score) with a 95% interval, per family set.

    Interval: BCa bootstrap (scipy.stats.bootstrap, 9,999 resamples, seeded) resampling the samples of
    each family with replacement, independently per family, each sample's policy and FullKV scores kept
    together (:func:`lukv_bench.report.stats.mean_ratio_ci`).
    """
    lines = ["### Headline: mean relative score with 95% intervals", "",
             "Mean over the families of the set of (policy mean score / FullKV mean score) [95% BCa bootstrap "
             "interval: samples resampled within each family, paired with FullKV on the same sample; none "
             "when the figure cannot vary].", ""]
    for name, fams in sets:
        if not fams:
            continue
        lines += [f"**Families {name}**: {', '.join(s.task for s in fams)}", "",
                  "| policy | " + " | ".join(budgets) + " |", "|---|" + "---:|" * len(budgets)]
        for p in policies:
            row = []
            for bl in budgets:
                groups = []
                for s in fams:
                    b = next((b for b in s.budgets if b.label == bl), None)
                    c = s.cell(p, b) if b else None
                    if c is None or s.full is None:
                        break
                    ids = [k for k in c.scores if k in s.full.scores]
                    groups.append(([c.scores[k] for k in ids], [s.full.scores[k] for k in ids]))
                if len(groups) != len(fams):
                    row.append("")
                    continue
                point = sum(sum(a) / len(a) / (sum(f) / len(f)) for a, f in groups) / len(groups)
                ci = mean_ratio_ci(groups)
                row.append(f"{point:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
            lines.append(f"| {p} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the analysis; print the pick."""
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("out")
    ap.add_argument("--baseline", default="snapkv")
    ap.add_argument("--faithful", default="layer-uncertainty")
    ap.add_argument("--families", default=None, help="comma-separated families to count (default: the control test)")
    ap.add_argument("--also", action="append", default=[], help="comma-separated families: extra headline set")
    args = ap.parse_args(argv)
    records, _ = load_results(Path(args.results) / "results.jsonl")
    summaries = summarize(records, proposed=args.baseline)
    lines = [f"Results: `{args.results}` ({len(records)} records).", ""]

    fixed = args.families.split(",") if args.families else None
    lines += ["### Families and their no-context controls", "",
              "FullKV − control: mean paired difference (samples where FullKV scored higher–lower; two-sided p of "
              "the exact sign test for 0/1 scores, of the exact sign-flip permutation test otherwise). Each control "
              "test is its own family (one test per task). Passes: FullKV significantly above the control.", "",
              "| family | n | FullKV | control | FullKV − control | passes the control test | counts |",
              "|---|---:|---:|---:|---|---|---|"]
    counted, gated = [], []
    for s in summaries:
        p = s.full_vs_control
        test = f"{p.diff:+.3f} ({p.wins}–{p.losses}, p {fmt_p(p.p)})" if p else "—"
        ok = s.control is not None and not s.answers_from_memory and s.full is not None
        counts = s.task in fixed if fixed is not None else ok
        lines.append(f"| {s.task} | {s.full.n if s.full else 0} | {s.full.score:.3f} | "
                     f"{s.control.score if s.control else float('nan'):.3f} | {test} | {'yes' if ok else '**no**'} "
                     f"| {'yes' if counts else 'no'} |")
        if ok:
            gated.append(s)
        if counts:
            counted.append(s)
    lines.append("")
    if fixed is not None:
        lines += [f"Counted families fixed by `--families` (the set the rule chose on the search samples): "
                  f"{', '.join(fixed)}.", ""]
    if not counted:
        lines.append("No family counts: nothing to rank.")
        Path(args.out + ".md").write_text("\n".join(lines) + "\n")
        return 1

    policies = counted[0].policies
    budgets = [b.label for b in counted[0].budgets]
    rel: dict[tuple[str, str, str], float] = {}  # (family, policy, budget) -> score / FullKV
    ranks: dict[str, list[float]] = {p: [] for p in policies}
    below: dict[str, list[str]] = {p: [] for p in policies}
    above: dict[str, list[str]] = {p: [] for p in policies}
    tests = []  # (policy, family, budget, pair): the study's pre-registered comparisons, one Holm family
    for s in counted:
        for b in s.budgets:
            scores = {p: c.score for p in policies if (c := s.cell(p, b)) and c.score is not None}
            for p, v in scores.items():
                rel[(s.task, p, b.label)] = v / s.full.score
            for p, r in _rank(scores).items():
                ranks[p].append(r)
            for p in policies:
                c = s.cell(p, b)
                if p != args.baseline and c and c.vs_proposed:  # summarize() paired every cell with the baseline's
                    tests.append((p, s.task, b.label, c.vs_proposed))
    adjusted = holm([t[3].p for t in tests])
    for (p, task, bl, pair), adj in zip(tests, adjusted, strict=True):
        if adj < ALPHA:
            side = below if pair.diff < 0 else above
            side[p].append(f"{task}@{bl} ({pair.diff:+.2f}, {pair.wins}–{pair.losses}, p {fmt_p(pair.p)}, "
                           f"adj {fmt_p(adj)})")

    lines += ["### Score relative to FullKV (family mean score / FullKV mean score)", ""]
    for s in counted:
        lines += [f"**{s.task}** (FullKV {s.full.score:.3f}, n = {s.full.n})", "",
                  "| policy | " + " | ".join(budgets) + " |", "|---|" + "---:|" * len(budgets)]
        for p in policies:
            cells = []
            for b in s.budgets:
                c = s.cell(p, b)
                ci = f" [{c.score_ci[0]:.2f}, {c.score_ci[1]:.2f}]" if c and c.score_ci else ""  # Wilson / BCa
                cells.append(f"{rel[(s.task, p, b.label)]:.2f} ({c.score:.2f}{ci})" if c else "")
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        lines.append("")

    left_out = [s for s in summaries if s not in counted]
    if left_out:
        lines += ["### Families left out of the ranking (raw mean scores; FullKV not clearly above the control)", "",
                  "| family | FullKV | policy | " + " | ".join(budgets) + " |",
                  "|---|---:|---|" + "---:|" * len(budgets)]
        for s in left_out:
            for p in s.policies:
                cells = [f"{c.score:.2f}" if (c := s.cell(p, b)) and c.score is not None else "" for b in s.budgets]
                lines.append(f"| {s.task} | {s.full.score:.2f} | {p} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += [f"### Paired tests against {args.baseline}", "",
              f"One family of {len(tests)} tests: every other policy against {args.baseline} on every counted "
              f"(family, budget) cell, Holm-adjusted together. Listed: the tests with raw p < {ALPHA:g} "
              "(policy − baseline; samples where the policy scored higher–lower).", "",
              "| policy | family@budget | difference | higher–lower | raw p | Holm-adjusted p |",
              "|---|---|---:|---:|---:|---:|"]
    listed = [(t, adj) for t, adj in zip(tests, adjusted, strict=True) if t[3].p < ALPHA]
    for (p, task, bl, pair), adj in sorted(listed, key=lambda x: x[0][3].p):
        lines.append(f"| {p} | {task}@{bl} | {pair.diff:+.3f} | {pair.wins}–{pair.losses} | {fmt_p(pair.p)} "
                     f"| {fmt_p(adj)} |")
    if not listed:
        lines.append("| — | none | | | | |")
    lines += ["", f"Significant after Holm: {sum(a < ALPHA for a in adjusted)} of {len(tests)}.", ""]

    lines += ["### Mean over counted families of the score relative to FullKV", "",
              "| policy | " + " | ".join(budgets) + f" | mean rank | significantly below {args.baseline} on "
              f"| significantly above {args.baseline} on |", "|---|" + "---:|" * (len(budgets) + 1) + "---|---|"]
    mean_rank = {p: sum(ranks[p]) / len(ranks[p]) for p in policies if ranks[p]}
    mean_rel = {}
    for p in policies:
        row = []
        for bl in budgets:
            vals = [rel[(s.task, p, bl)] for s in counted if (s.task, p, bl) in rel]
            mean_rel[(p, bl)] = sum(vals) / len(vals) if vals else float("nan")
            row.append(f"{mean_rel[(p, bl)]:.3f}")
        lines.append(f"| {p} | " + " | ".join(row) + f" | {mean_rank.get(p, float('nan')):.2f} "
                     f"| {', '.join(below[p]) or '—'} | {', '.join(above[p]) or '—'} |")
    lines.append("")

    candidates = [p for p in policies if p not in (args.baseline, args.faithful)]
    eligible = [p for p in candidates if not below[p]]
    at20 = next((bl for bl in budgets if bl in ("0.2",)), budgets[-1])
    pick = min(eligible, key=lambda p: (mean_rank[p], -mean_rel[(p, at20)])) if eligible else None
    lines += ["### The rule applied", "",
              f"- Families counted: {', '.join(s.task for s in counted)}.",
              f"- Eligible candidates (never significantly below {args.baseline}): {', '.join(eligible) or 'none'}.",
              f"- Pick: **{pick}** (mean rank {mean_rank[pick]:.2f} vs {args.baseline} {mean_rank[args.baseline]:.2f},"
              f" {args.faithful} {mean_rank[args.faithful]:.2f})." if pick else "- Pick: none.",
              ""]
    sets = [("counted", counted)]
    if fixed is not None:
        sets.append(("passing the control test on these samples", gated))
    by_name = {s.task: s for s in summaries}
    for extra in args.also:
        sets.append((f"`--also {extra}`", [by_name[f] for f in extra.split(",") if f in by_name]))
    lines += headline(sets, policies, budgets)
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    xs = [float(b) for b in budgets]
    for s in counted:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for p in policies:
            ys = [rel.get((s.task, p, bl), float("nan")) for bl in budgets]
            ax.plot(xs, ys, marker="o", label=p, linewidth=2.2 if p in (pick, args.faithful) else 1.0)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:.0%}" for x in xs])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("KV budget (share of the context)")
        ax.set_ylabel("score / FullKV")
        ax.set_title(f"{s.task} (FullKV {s.full.score:.2f}, n={s.full.n})")
        ax.axhline(1.0, color="grey", linestyle=":")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{args.out}-{s.task}.png", dpi=110)
        plt.close(fig)
    print(pick or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
