"""``lukv-bench compare DIR... --out OUT``: runs (or models) side by side, paired on the samples they share.

Each folder is a run written by ``lukv-bench run`` (its ``results.jsonl``); a run that holds several
models counts as one *arm* per model. An arm is labelled by its folder's name, with the model added when
the arms' models differ; the first arm is the baseline. A cell (task, policy, budget) is compared only
when every arm ran it, and only on the samples every arm scored it on: per arm the mean score there, the
score retained (the arm's mean score / its own FullKV's on the same samples), the measured KV bytes
relative to its own FullKV, and the paired difference to the baseline on those samples (the exact tests of
:mod:`lukv_bench.report.stats`, Holm-adjusted within each task). Latency records are not compared.

Writes ``OUT/compare.md`` (the table per task and the plot), ``OUT/compare.csv`` (the same numbers, one row
per cell and arm) and ``OUT/plots/compare-pareto.png`` (one Pareto panel per task, every arm's FullKV at
(1, 1)).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lukv_bench.errors import UserError
from lukv_bench.report import plots
from lukv_bench.report.cost import is_cost_record
from lukv_bench.report.stats import ALPHA
from lukv_bench.report.summary import (
    Paired,
    TaskSummary,
    adjust_family,
    display_name,
    fmt3,
    fmt_diff,
    fmt_p,
    load_results,
    summarize,
)
from lukv_bench.runtime.contract import FULL

PARETO_PNG = "compare-pareto.png"  #: under OUT/plots/; not a name the report owns (plots.PLOT_KINDS)
_ARM_LINES = ("-", "--", ":", "-.")


@dataclass
class Arm:
    """One compared run: a results folder and one model in it, with its per-task summaries."""

    label: str
    folder: Path
    model: str
    tasks: dict[str, TaskSummary]  #: task -> summary (FullKV, cells with their per-sample scores)


@dataclass
class ArmCell:
    """One arm's figures on the shared samples of a compared cell."""

    score: float  #: mean score over the shared samples
    kv: float | None  #: mean kv_bytes / kv_bytes_full over the shared samples (1 for FullKV)
    point: plots.ParetoPoint | None  #: score retained vs KV bytes (None when its FullKV scores 0 there)
    vs_base: Paired | None = None  #: this arm minus the baseline on the shared samples (None for the baseline)


@dataclass
class Row:
    """One (task, policy, budget) cell compared across every arm on the samples they share."""

    task: str
    policy: str  #: ``FULL`` for the reference row
    budget: str  #: the budget's label (``—`` for FullKV)
    bkey: str  #: the budget's key (:func:`summary.budget_key`; empty for FullKV)
    samples: list[str]  #: the shared sample ids
    arms: list[ArmCell]  #: one per arm, in the arms' order


@dataclass
class Comparison:
    """Everything ``compare`` writes: the arms, the compared rows and what could not be paired."""

    arms: list[Arm]
    rows: list[Row]
    not_compared: list[str] = field(default_factory=list)  #: one line per task or cell left out, and why


# -- loading ---------------------------------------------------------------------------------------


def _labels(folders: Sequence[Path]) -> list[str]:
    """The folders' names, or the paths as given where two names collide."""
    names = [f.resolve().name or str(f) for f in folders]
    return [str(f) if names.count(n) > 1 else n for f, n in zip(folders, names, strict=True)]


def load_arms(folders: Sequence[Path]) -> list[Arm]:
    """The arms of ``folders`` (one per folder and model), each summarized; UserError for fewer than two
    folders, a folder given twice, a folder without results.jsonl or without scored records."""
    if len(folders) < 2:
        raise UserError(f"compare needs at least two result folders (got {len(folders)}): "
                        "lukv-bench compare RUN_A RUN_B [...] --out DIR")
    seen: dict[Path, Path] = {}
    for f in folders:
        if f.resolve() in seen:
            raise UserError(f"{f} is given twice (as {seen[f.resolve()]} and {f}): pass each run folder once")
        seen[f.resolve()] = f
    loaded = []
    for f, label in zip(folders, _labels(folders), strict=True):
        results = f / "results.jsonl"
        if not results.is_file():
            raise UserError(f"{f}: no results.jsonl there; pass folders written by "
                            f"`lukv-bench run SUITE --out {f}`")
        records, _ = load_results(results)
        scored = [r for r in records if not is_cost_record(r)]
        if not scored:
            raise UserError(f"{results} holds no scored records (latency records are not compared): pass runs "
                            "of suites with scored tasks")
        by_model: dict[str, dict[str, TaskSummary]] = {}
        for s in summarize(scored):
            by_model.setdefault(s.model, {})[s.task] = s
        loaded += [(label, f, model, tasks) for model, tasks in by_model.items()]
    models = {model for _, _, model, _ in loaded}
    return [Arm(label + (f" ({model})" if len(models) > 1 else ""), f, model, tasks)
            for label, f, model, tasks in loaded]


# -- pairing ---------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _full_row(task: str, ss: list[TaskSummary]) -> Row | None:
    """FullKV across the arms on the samples every arm's FullKV scored."""
    fulls = [s.full.scores if s.full else {} for s in ss]
    shared = [k for k in fulls[0] if all(k in f for f in fulls[1:])]
    if not shared:
        return None
    cells = []
    for f in fulls:
        sc = {k: f[k] for k in shared}
        point = plots.pareto_point("FullKV", sc, sc, dict.fromkeys(sc, 1.0))
        cells.append(ArmCell(score=sum(sc.values()) / len(sc), kv=1.0, point=point))
    return Row(task, FULL, "—", "", shared, cells)


def _cell_row(task: str, ss: list[TaskSummary], policy: str, bkey: str, label: str) -> Row | None:
    """One (policy, budget) cell across the arms on the samples every arm scored it on (None: none shared)."""
    cells = [s.cells[(policy, bkey)] for s in ss]
    shared = [k for k in cells[0].scores if all(k in c.scores for c in cells[1:])]
    if not shared:
        return None
    out = []
    for s, c in zip(ss, cells, strict=True):
        sc = {k: c.scores[k] for k in shared}
        kvs = plots.cell_values(s, policy, bkey, plots.kv_ratio)
        kv = _mean([kvs[k] for k in shared if k in kvs])
        full = s.full.scores if s.full else {}
        out.append(ArmCell(score=sum(sc.values()) / len(sc), kv=kv, point=plots.pareto_point(label, sc, full, kvs)))
    return Row(task, policy, label, bkey, shared, out)


def compare(arms: Sequence[Arm]) -> Comparison:
    """Pair the arms cell by cell on their shared (task, sample)s; the paired differences to the first arm
    are Holm-adjusted as one family per task. UserError when no task and sample is shared by every arm."""
    arms = list(arms)
    base = arms[0]
    result = Comparison(arms, [])
    shared_tasks = [t for t in base.tasks if all(t in a.tasks for a in arms[1:])]
    for a in arms:
        only = [t for t in a.tasks if t not in shared_tasks]
        if only:
            result.not_compared.append(f"{a.label}: task(s) {', '.join(f'`{t}`' for t in only)} not run by every "
                                       "run")
    for task in shared_tasks:
        ss = [a.tasks[task] for a in arms]
        rows = [r for r in [_full_row(task, ss)] if r is not None]
        # every arm's cells (the baseline's first), grouped by policy
        cells = list(dict.fromkeys((p, b.key, b.label) for s in ss for p in s.policies for b in s.budgets
                                   if (p, b.key) in s.cells))
        order = list(dict.fromkeys(p for p, _, _ in cells))
        cells.sort(key=lambda c: order.index(c[0]))
        for p, bkey, label in cells:
            missing = [a.label for a, s in zip(arms, ss, strict=True) if (p, bkey) not in s.cells]
            row = None if missing else _cell_row(task, ss, p, bkey, label)
            if row is not None:
                rows.append(row)
            else:
                why = f"not run by {', '.join(missing)}" if missing else "no sample scored by every run"
                result.not_compared.append(f"`{task}` {p} @ {label}: {why}")
        binary = all(s.binary for s in ss)
        pairs = []
        for row in rows:
            base_scores = dict(zip(row.samples, _scores_of(ss[0], row), strict=True))
            for s, cell in zip(ss[1:], row.arms[1:], strict=True):
                cell.vs_base = Paired.of(dict(zip(row.samples, _scores_of(s, row), strict=True)), base_scores, binary)
                if cell.vs_base is not None:
                    pairs.append(cell.vs_base)
        adjust_family(pairs, f"task `{task}`, every compared cell of every run vs {base.label}")
        result.rows += rows
    if not result.rows:
        held = "; ".join(f"{a.label} ({a.folder}): tasks {', '.join(f'`{t}`' for t in a.tasks) or 'none'}"
                         for a in arms)
        raise UserError(f"no task and sample is scored by every run ({held}); compare runs of suites that share "
                        "tasks and samples (same data, seed and --limit)")
    return result


def _scores_of(s: TaskSummary, row: Row) -> list[float]:
    """The arm's scores of ``row``'s cell on the row's shared samples, in the row's order."""
    scores = (s.full.scores if s.full else {}) if row.policy == FULL else s.cells[(row.policy, row.bkey)].scores
    return [scores[k] for k in row.samples]


# -- writing ---------------------------------------------------------------------------------------


def _paired_text(pair: Paired | None) -> str:
    """``+0.250 (2–0; p 0.500, adj 1.000)``, with ``*`` when the Holm-adjusted p is below 0.05."""
    if pair is None:
        return ""
    mark = "*" if pair.significant else ""
    return f"{fmt_diff(pair.diff)} ({pair.wins}–{pair.losses}; p {fmt_p(pair.p)}, adj {fmt_p(pair.p_adj)}){mark}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _markdown(c: Comparison, plot: Path | None, out: Path) -> list[str]:
    base = c.arms[0].label
    lines = ["# lukv-bench compare", "", "Runs (the first is the baseline):", ""]
    for a in c.arms:
        n = sum(len(s.records) for s in a.tasks.values())
        lines.append(f"- `{a.label}`: {a.folder} — model `{a.model}`, {n} scored records")
    lines += [
        "",
        "A cell (task, policy, budget) is compared only when every run ran it, and only on the samples every run "
        "scored it on (`samples`). Per run: mean score there; retained = that score / the run's own FullKV mean "
        "score on the same samples; KV = mean kv_bytes / the run's own FullKV kv_bytes. "
        f"Δ vs `{base}`: mean of (run − {base}) per sample (samples higher–lower; raw two-sided p of the exact "
        "sign test for 0/1 scores, else of the exact sign-flip permutation test; Holm-adjusted p over every "
        f"difference of the task). * = adjusted p < {ALPHA:g}.",
        "",
    ]
    if c.not_compared:
        lines += ["Not compared:", ""] + [f"- {line}" for line in c.not_compared] + [""]
    for task in dict.fromkeys(r.task for r in c.rows):
        header = ["policy", "budget", "samples"]
        for i, a in enumerate(c.arms):
            header += [f"{a.label} score", f"{a.label} retained", f"{a.label} KV"]
            if i:
                header.append(f"{a.label} Δ vs {base}")
        body = []
        for r in (r for r in c.rows if r.task == task):
            cells = [display_name(r.policy), r.budget, str(len(r.samples))]
            for i, ac in enumerate(r.arms):
                cells += [fmt3(ac.score), fmt3(ac.point.retained if ac.point else None), fmt3(ac.kv)]
                if i:
                    cells.append(_paired_text(ac.vs_base))
            body.append(cells)
        lines += [f"## Task `{task}`", ""] + _table(header, body) + [""]
    if plot is not None:
        lines += ["## Score retained vs KV memory", "", f"![score retained vs KV memory, every run]"
                  f"({plot.relative_to(out).as_posix()})", ""]
    return lines


def _csv(c: Comparison, path: Path) -> Path:
    """One row per compared cell and arm."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["task", "policy", "budget", "run", "model", "folder", "samples", "score", "retained", "kv_ratio",
                    "diff_vs_baseline", "wins", "losses", "ties", "p", "p_holm", "test"])
        for r in c.rows:
            for a, ac in zip(c.arms, r.arms, strict=True):
                pair = ac.vs_base
                w.writerow([r.task, display_name(r.policy), r.budget, a.label, a.model, str(a.folder), len(r.samples),
                            ac.score, ac.point.retained if ac.point else "", "" if ac.kv is None else ac.kv,
                            *([pair.diff, pair.wins, pair.losses, pair.ties, pair.p, pair.p_adj, pair.method]
                              if pair else [""] * 7)])
    return path


def pareto_lines(c: Comparison, task: str) -> list[tuple[dict[str, object], list[plots.ParetoPoint]]]:
    """The Pareto lines of one task: (style, points) per arm and policy (colour and marker: the policy; line
    style and hollow markers: the arm), FullKV once at (1, 1)."""
    rows = [r for r in c.rows if r.task == task]
    lines: list[tuple[dict[str, object], list[plots.ParetoPoint]]] = []
    full = [r for r in rows if r.policy == FULL]
    if full and any(ac.point for ac in full[0].arms):
        lines.append(({"label": "FullKV (every run)"}, [plots.ParetoPoint("FullKV", 1.0, 1.0, len(full[0].samples))]))
    policies = list(dict.fromkeys(r.policy for r in rows if r.policy != FULL))
    for j, a in enumerate(c.arms):
        for i, p in enumerate(policies):
            pts = sorted((ac.point for r in rows if r.policy == p and (ac := r.arms[j]).point), key=lambda q: q.kv)
            if pts:
                style = plots.policy_style(p, i)
                style.update(linestyle=_ARM_LINES[j % len(_ARM_LINES)], label=f"{p} · {a.label}")
                if j:
                    style["markerfacecolor"] = "white"
                lines.append((style, pts))
    return lines


def pareto_figure(c: Comparison, path: Path) -> Path | None:
    """One Pareto panel per compared task (score retained vs KV bytes, each relative to the run's own FullKV);
    None when no task has a point."""
    tasks = [t for t in dict.fromkeys(r.task for r in c.rows) if len(pareto_lines(c, t)) > 1]
    if not tasks:
        return None
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig = plots.new_figure(max(8.4, 5.2 * ncols + 0.6), 4.2 * nrows + 1.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(a for row in axes for a in row):
        if k >= len(tasks):
            ax.set_visible(False)
            continue
        plots.draw_pareto(ax, pareto_lines(c, tasks[k]), f"task {tasks[k]}")
    models = list(dict.fromkeys(a.model for a in c.arms))
    fig.suptitle("score retained vs KV memory (each run relative to its own FullKV, shared samples)\n"
                 + ("model: " if len(models) == 1 else "models: ") + "; ".join(models), fontsize=10)
    plots.outside_legend(fig)
    return plots.save_png(fig, path)


def write_comparison(folders: Sequence[Path], out: Path) -> Path:
    """Compare the runs in ``folders``; write OUT/compare.md, OUT/compare.csv and the Pareto plot under
    OUT/plots/. Returns the path of compare.md."""
    c = compare(load_arms(folders))
    out.mkdir(parents=True, exist_ok=True)
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    stale = plot_dir / PARETO_PNG
    stale.unlink(missing_ok=True)
    plot = pareto_figure(c, plot_dir / PARETO_PNG)
    _csv(c, out / "compare.csv")
    md = out / "compare.md"
    md.write_text("\n".join(_markdown(c, plot, out)).rstrip() + "\n", encoding="utf-8")
    return md
