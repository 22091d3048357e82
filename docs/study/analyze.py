"""Apply docs/study.md's selection rule to a results folder of suites/families.yaml; write tables and plots.

Usage: python docs/study/analyze.py RESULTS_DIR OUT_PREFIX [--baseline snapkv] [--faithful layer-uncertainty]

Writes OUT_PREFIX.md (tables: controls, relative score per family, ranks, eligibility, the pick) and
OUT_PREFIX-<family>.png (score relative to FullKV vs budget, one line per policy). Everything comes from
lukv_bench.report.summary (cells, bootstrap intervals, paired differences); nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lukv_bench.report.summary import load_results, summarize


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


def main(argv: list[str] | None = None) -> int:
    """Run the analysis; print the pick."""
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("out")
    ap.add_argument("--baseline", default="snapkv")
    ap.add_argument("--faithful", default="layer-uncertainty")
    args = ap.parse_args(argv)
    records, _ = load_results(Path(args.results) / "results.jsonl")
    summaries = summarize(records, proposed=args.baseline)
    lines = [f"Results: `{args.results}` ({len(records)} records).", ""]

    lines += ["### Families and their no-context controls", "",
              "| family | n | FullKV | control | FullKV − control [95% CI] | counts |", "|---|---:|---:|---:|---|---|"]
    counted = []
    for s in summaries:
        p = s.full_vs_control
        ci = f"{p.diff:+.3f} [{p.ci[0]:+.3f}, {p.ci[1]:+.3f}]" if p and p.ci else "—"
        ok = s.control is not None and not s.answers_from_memory and s.full is not None
        lines.append(f"| {s.task} | {s.full.n if s.full else 0} | {s.full.score:.3f} | "
                     f"{s.control.score if s.control else float('nan'):.3f} | {ci} | {'yes' if ok else '**no**'} |")
        if ok:
            counted.append(s)
    lines.append("")
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
    for s in counted:
        for b in s.budgets:
            scores = {p: c.score for p in policies if (c := s.cell(p, b)) and c.score is not None}
            for p, v in scores.items():
                rel[(s.task, p, b.label)] = v / s.full.score
            for p, r in _rank(scores).items():
                ranks[p].append(r)
            for p in policies:
                c = s.cell(p, b)
                if p != args.baseline and c:
                    pair = c.vs_proposed  # summarize() paired every cell with the baseline's (the "proposed")
                    if pair and pair.significant:
                        side = below if pair.diff < 0 else above
                        side[p].append(f"{s.task}@{b.label} ({pair.diff:+.2f} [{pair.ci[0]:+.2f}, {pair.ci[1]:+.2f}])")

    lines += ["### Score relative to FullKV (family mean score / FullKV mean score)", ""]
    for s in counted:
        lines += [f"**{s.task}** (FullKV {s.full.score:.3f}, n = {s.full.n})", "",
                  "| policy | " + " | ".join(budgets) + " |", "|---|" + "---:|" * len(budgets)]
        for p in policies:
            cells = []
            for b in s.budgets:
                c = s.cell(p, b)
                ci = f" [{c.score_ci[0]:.2f}, {c.score_ci[1]:.2f}]" if c and c.score_ci else ""
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
