"""PNG plots for the report and for ``lukv-bench compare``, drawn on matplotlib's Agg canvas.

Figures are created as ``Figure`` objects bound to ``FigureCanvasAgg`` directly, never through pyplot,
so no display is needed and the process-wide backend of a caller (a notebook, say) is left untouched.

Per task: score vs measured KV memory and fidelity (KL) vs memory, each point with its 95% interval;
the Pareto plot (score retained vs KV bytes, both relative to FullKV on the same samples); per-layer
budget profiles of the layer-adaptive policies at the median budget; for depth x length tasks (needle)
a heatmap grid. Per latency task: decode ms/token and peak memory vs context length (log-log), one
panel per budget. Every title names the model; legends sit outside the axes; each policy has its own
colour, marker and line style, and the series of one axes are shifted slightly sideways (the axis label
says so) so that equal values stay visible.

The report owns the files named ``<stem>_<kind>.png`` in its plot folder, ``kind`` one of
:data:`PLOT_KINDS`: :func:`clear_plots` deletes those (and nothing else) before a new render.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from lukv_bench.report.stats import finite, mean_ci
from lukv_bench.report.summary import POLICY_ORDER, budget_key, budget_label
from lukv_bench.runtime.contract import FULL

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from lukv_bench.report.cost import CostSeries, CostSummary
    from lukv_bench.report.summary import Cell, TaskSummary

DPI = 110
_MARKERS = "osD^v<>phX*"
_COLORS = ("C0", "C1", "C2", "C4", "C5", "C6", "C7", "C8", "C9")  #: no red: red is the proposed method
_LINESTYLES = ("-", "--", "-.", ":")
DODGE = 0.01  #: sideways shift between neighbouring series, as a share of the x span (log decades on log axes)
MAX_SPREAD = 0.06  #: the most the outermost series lie apart, as a share of the x span (many series: smaller steps)
#: the file suffixes of the plots the report draws (``<stem>_<kind>.png``): the files :func:`clear_plots` owns
PLOT_KINDS = ("score", "kl", "pareto", "layers", "heatmap", "decode", "memory")
_FULL_STYLE: dict[str, Any] = {"color": "black", "marker": "*", "markersize": 12, "linestyle": "none", "zorder": 7}


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (no pyplot, no display)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG; returns the path."""
    fig.savefig(path, format="png")
    return path


def policy_style(policy: str, i: int, proposed: str | None = None) -> dict[str, Any]:
    """Line style of a policy: the same colour, marker and line style in every plot, the proposed method
    emphasised (``i``: the policy's position, used for policies outside the registered ones)."""
    k = POLICY_ORDER.index(policy) if policy in POLICY_ORDER else len(POLICY_ORDER) + i
    style: dict[str, Any] = {
        "marker": _MARKERS[k % len(_MARKERS)],
        "linestyle": _LINESTYLES[k % len(_LINESTYLES)],
        "label": policy,
        "color": _COLORS[k % len(_COLORS)],
    }
    if policy == proposed:
        style.update(linewidth=2.6, color="crimson", zorder=5)
    return style


def owned_plots(plot_dir: Path) -> list[Path]:
    """The PNGs in ``plot_dir`` that the report draws (named ``<stem>_<kind>.png``, kind in :data:`PLOT_KINDS`)."""
    if not plot_dir.is_dir():
        return []
    return sorted(p for p in plot_dir.glob("*_*.png")
                  if p.is_file() and p.stem.rsplit("_", 1)[1] in PLOT_KINDS)


def clear_plots(plot_dir: Path) -> list[Path]:
    """Delete the report's own PNGs from ``plot_dir`` (stale ones included) before a new render; other files
    stay. Returns the paths deleted."""
    gone = owned_plots(plot_dir)
    for p in gone:
        p.unlink()
    return gone


def dodged(xs: Sequence[float], j: int, n_series: int, span: float, log: bool = False) -> list[float]:
    """``xs`` of series ``j`` of ``n_series`` shifted sideways by ``DODGE * span`` per step (less when the
    outermost would lie more than ``MAX_SPREAD * span`` apart), centred on the true values; on a log axis the
    shift is multiplicative (``span`` in decades)."""
    share = min(DODGE, MAX_SPREAD / max(1, n_series - 1))
    step = (j - (n_series - 1) / 2) * share * span
    return [x * 10**step for x in xs] if log else [x + step for x in xs]


def _span(xs: Iterable[float], log: bool = False) -> float:
    """Range of ``xs`` (decades on a log axis); 1 when they do not vary."""
    vals = [math.log10(x) if log else x for x in xs if not log or x > 0]
    return (max(vals) - min(vals)) or 1.0 if vals else 1.0


def outside_legend(fig: Figure, ax: Axes | None = None, title: str | None = None) -> None:
    """One legend for the figure outside the data (constrained layout makes room for it): right of ``ax``, or
    with ``ax`` None the entries of every axes (each label once) below the panels, clear of the title."""
    source = ax if ax is not None else fig.axes[0]
    handles, labels = source.get_legend_handles_labels()
    if ax is None:
        seen: dict[str, Any] = {}
        for a in fig.axes:
            for h, lab in zip(*a.get_legend_handles_labels(), strict=True):
                seen.setdefault(lab, h)
        handles, labels = list(seen.values()), list(seen)
    if handles:
        # below the panels: as many columns as the figure's width holds (about 2.8 inches per entry)
        ncol = max(1, min(len(handles), int(fig.get_figwidth() / 2.8)))
        where = {"loc": "outside right upper"} if ax is not None else {"loc": "outside lower center", "ncol": ncol}
        fig.legend(handles, labels, fontsize=8, title=title, title_fontsize=8, **where)


def model_title(what: str, task: str, model: str) -> str:
    """A plot title naming the task and the model: ``task — model`` over ``what``."""
    return f"{task} — {model}\n{what}"


# -- per-cell values --------------------------------------------------------------------------------


def kv_ratio(rec: Mapping[str, Any]) -> float | None:
    """A record's measured KV bytes relative to FullKV's on the same sample (``kv_bytes / kv_bytes_full``)."""
    kv, full = rec.get("kv_bytes"), rec.get("kv_bytes_full")
    if isinstance(kv, (int, float)) and isinstance(full, (int, float)) and full > 0:
        return float(kv) / float(full)
    return None


def cell_values(s: TaskSummary, policy: str, bkey: str,
                value: Callable[[Mapping[str, Any]], Any]) -> dict[str, float]:
    """{sample id: ``value(record)``} over the records of one cell of ``s`` (non-finite values left out)."""
    cell = s.cells.get((policy, bkey))
    out = {}
    for r in cell.records if cell is not None else ():
        v = finite([value(r)])
        if v:
            out[str(r.get("sample_id"))] = v[0]
    return out


def kl_interval(s: TaskSummary, policy: str, bkey: str) -> tuple[float, float] | None:
    """95% BCa interval of a cell's mean KL(FullKV || policy) (None from fewer than 2 distinct values)."""
    return mean_ci(list(cell_values(s, policy, bkey, lambda r: r.get("kl_mean")).values()), binary=False)


# -- score and KL vs memory --------------------------------------------------------------------------

Point = tuple[float, float, "tuple[float, float] | None"]  #: x, y and the 95% interval of y


def _memory_series(s: TaskSummary, value: Callable[[str, str, Cell], tuple[float | None, Any]]
                   ) -> list[tuple[str, list[Point]]]:
    """(policy, points) per policy: ``value(policy, budget key, cell)`` -> (y, interval) against the cell's
    measured KV memory, ascending in memory; policies without a point are left out."""
    out = []
    for p in s.policies:
        pts: list[Point] = []
        for b in s.budgets:
            c = s.cell(p, b)
            if c is None or c.mem_ratio is None:
                continue
            y, ci = value(p, b.key, c)
            if y is not None:
                pts.append((c.mem_ratio, y, ci))
        if pts:
            out.append((p, sorted(pts, key=lambda t: t[0])))
    return out


def _draw_series(ax: Axes, series: list[tuple[dict[str, Any], list[Point]]], log_x: bool = False,
                 log_y: bool = False) -> None:
    """Draw each (style, points) with error bars from the points' intervals, dodged sideways."""
    span = _span((x for _, pts in series for x, _, _ in pts), log_x)
    for j, (style, pts) in enumerate(series):
        xs = dodged([x for x, _, _ in pts], j, len(series), span, log_x)
        ys = [y for _, y, _ in pts]
        # a side of an interval that lies beyond its mean (BCa can do that on tiny samples) draws as no bar
        lo = [max(0.0, y - ci[0]) if ci else 0.0 for _, y, ci in pts]
        hi = [max(0.0, ci[1] - y) if ci else 0.0 for _, y, ci in pts]
        if log_y:
            lo = [min(d, 0.999 * y) for d, y in zip(lo, ys, strict=True)]  # a bar may not reach 0 on a log axis
        ax.errorbar(xs, ys, yerr=[lo, hi], capsize=2.5, elinewidth=0.9, **style)


def _dodge_note(n_series: int) -> str:
    return " — series shifted slightly sideways for visibility" if n_series > 1 else ""


def score_vs_memory(s: TaskSummary, path: Path) -> Path | None:
    """(a) Mean score (95% interval) vs measured KV memory (kv_bytes / kv_bytes_full), one line per policy;
    FullKV as a horizontal line with its interval as a band."""
    series = _memory_series(s, lambda p, bk, c: (c.score, c.score_ci))
    full = s.full if s.full is not None and s.full.score is not None else None
    if not series and full is None:
        return None
    fig = new_figure(8.4, 4.6)
    ax = fig.add_subplot()
    if full is not None:
        ax.axhline(full.score, color="black", linestyle="--", linewidth=1.2, label="FullKV")
        if full.score_ci:
            ax.axhspan(*full.score_ci, color="black", alpha=0.08, linewidth=0, label="FullKV 95% interval")
    _draw_series(ax, [(policy_style(p, i, s.proposed), pts) for i, (p, pts) in enumerate(series)])
    ax.set_xlabel("KV memory / FullKV (measured)" + _dodge_note(len(series)), fontsize=9)
    ax.set_ylabel(f"mean score ({s.metric}), 95% interval")
    ax.set_title(model_title("score vs KV memory", s.task, s.model), fontsize=10)
    ax.grid(alpha=0.3)
    outside_legend(fig, ax)
    return save_png(fig, path)


def kl_vs_memory(s: TaskSummary, path: Path) -> Path | None:
    """(b) Mean KL(FullKV || policy) (95% BCa interval) vs measured KV memory, log scale; zero or missing KL
    is omitted."""
    series = _memory_series(s, lambda p, bk, c: (c.kl, kl_interval(s, p, bk)) if c.kl and c.kl > 0 else (None, None))
    if not series:
        return None
    fig = new_figure(8.4, 4.6)
    ax = fig.add_subplot()
    _draw_series(ax, [(policy_style(p, i, s.proposed), pts) for i, (p, pts) in enumerate(series)], log_y=True)
    ax.set_yscale("log")
    ax.set_xlabel("KV memory / FullKV (measured)" + _dodge_note(len(series)), fontsize=9)
    ax.set_ylabel("mean KL(FullKV ‖ policy), 95% interval, log")
    ax.set_title(model_title("fidelity vs KV memory (lower is better)", s.task, s.model), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    outside_legend(fig, ax)
    return save_png(fig, path)


# -- Pareto: score retained vs KV bytes --------------------------------------------------------------


@dataclass(frozen=True)
class ParetoPoint:
    """One cell on the Pareto plot, both figures relative to FullKV on the same samples."""

    label: str  #: the budget's label (``FullKV`` for the reference point)
    kv: float  #: mean over the samples of kv_bytes / FullKV's kv_bytes
    retained: float  #: sum of the policy's scores / sum of FullKV's scores (= ratio of the means)
    n: int  #: samples the ratio is taken over


def pareto_point(label: str, scores: Mapping[str, float], full: Mapping[str, float],
                 kvs: Mapping[str, float]) -> ParetoPoint | None:
    """The point of one cell over the samples where it has a score (``scores``), FullKV a score (``full``) and
    it a KV ratio (``kvs``; {sample id: value} each): score retained = sum of its scores / sum of FullKV's
    (the ratio of the means), KV = the mean ratio. None when they share no sample or FullKV scores 0 on all
    of them (nothing to retain)."""
    common = [k for k in scores if k in full and k in kvs]
    den = sum(full[k] for k in common)
    if not common or den <= 0:
        return None
    return ParetoPoint(label, sum(kvs[k] for k in common) / len(common), sum(scores[k] for k in common) / den,
                       len(common))


def pareto_series(s: TaskSummary) -> dict[str, list[ParetoPoint]]:
    """{policy: its points over the budgets, ascending in KV bytes} for one task, FullKV (key ``FULL``) as the
    single point (1, 1); empty when FullKV has no positive score (nothing to be retained)."""
    if s.full is None or sum(s.full.scores.values()) <= 0:
        return {}
    out = {FULL: [ParetoPoint("FullKV", 1.0, 1.0, len(s.full.scores))]}
    for p in s.policies:
        pts = []
        for b in s.budgets:
            c = s.cell(p, b)
            if c is not None and (pt := pareto_point(b.label, c.scores, s.full.scores,
                                                     cell_values(s, p, b.key, kv_ratio))):
                pts.append(pt)
        if pts:
            out[p] = sorted(pts, key=lambda q: q.kv)
    return out


def pareto_front(points: Iterable[ParetoPoint]) -> list[ParetoPoint]:
    """The points no other point dominates (at most as much KV memory and at least as much score retained,
    better in one), ascending in KV memory."""
    pts = sorted(points, key=lambda q: (q.kv, -q.retained))
    front: list[ParetoPoint] = []
    for q in pts:
        if not front or q.retained > front[-1].retained:
            front.append(q)
    return front


def draw_pareto(ax: Axes, lines: Sequence[tuple[dict[str, Any], list[ParetoPoint]]], title: str) -> None:
    """Draw (style, points) lines on ``ax`` as a Pareto plot: the frontier of every point dashed grey, the
    reference at (1, 1) as a black star."""
    front = pareto_front(q for _, pts in lines for q in pts)
    if len(front) > 1:
        ax.plot([q.kv for q in front], [q.retained for q in front], color="gray", linestyle=(0, (4, 3)),
                linewidth=1.0, alpha=0.7, label="Pareto frontier", zorder=1)
    span = _span(q.kv for _, pts in lines for q in pts)
    for j, (style, pts) in enumerate(lines):
        if all(q.label == "FullKV" for q in pts):
            ax.plot([q.kv for q in pts], [q.retained for q in pts], **{**_FULL_STYLE, **style})
            continue
        xs = dodged([q.kv for q in pts], j, len(lines), span)
        ax.plot(xs, [q.retained for q in pts], **style)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=0.8)
    ax.set_xlabel("KV bytes / FullKV (measured)" + _dodge_note(len(lines)), fontsize=8)
    ax.set_ylabel("score retained (score / FullKV's, same samples)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def pareto_plot(s: TaskSummary, path: Path) -> Path | None:
    """(e) Score retained vs KV bytes, both relative to FullKV on the same samples: every policy a line over
    its budgets, FullKV at (1, 1). None when FullKV scores 0 (no score to retain) or no policy has a point."""
    series = pareto_series(s)
    if len(series) < 2:
        return None
    fig = new_figure(8.4, 4.8)
    ax = fig.add_subplot()
    lines = [(({"label": "FullKV"} if p == FULL else policy_style(p, i, s.proposed)), pts)
             for i, (p, pts) in enumerate(series.items())]
    draw_pareto(ax, lines, model_title("score retained vs KV memory (up and left is better)", s.task, s.model))
    outside_legend(fig, ax)
    return save_png(fig, path)


# -- layer profiles and heatmaps ---------------------------------------------------------------------


def layer_profiles(s: TaskSummary, path: Path) -> Path | None:
    """(c) Tokens kept per layer / mean over layers, per layer-adaptive policy, at the median budget."""
    adaptive = s.layer_adaptive()
    if not adaptive or not s.budgets:
        return None
    # median budget among those where some adaptive policy has a profile
    cols = [b for b in s.budgets if any((c := s.cell(p, b)) and c.layer_profile for p in adaptive)]
    if not cols:
        return None
    b = cols[(len(cols) - 1) // 2]
    series: list[tuple[dict[str, Any], list[float]]] = []
    for i, p in enumerate(adaptive):
        c = s.cell(p, b)
        if c is None or not c.layer_profile:
            continue
        mean = sum(c.layer_profile) / len(c.layer_profile)
        if mean > 0:
            series.append((policy_style(p, i, s.proposed), [v / mean for v in c.layer_profile]))
    if not series:
        return None
    fig = new_figure(8.4, 4.2)
    ax = fig.add_subplot()
    for j, (style, ys) in enumerate(series):
        ax.plot(dodged(list(range(len(ys))), j, len(series), len(ys) - 1 or 1), ys, **style)
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1.2, label="uniform")
    ax.set_xlabel("layer" + _dodge_note(len(series)), fontsize=9)
    ax.set_ylabel("tokens kept / mean over layers")
    ax.set_title(model_title(f"per-layer budget at budget {b.label}", s.task, s.model), fontsize=10)
    ax.grid(alpha=0.3)
    outside_legend(fig, ax)
    return save_png(fig, path)


def _text_color(rgb: tuple[float, float, float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgb`` (relative luminance)."""
    r, g, b = rgb
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def needle_heatmaps(s: TaskSummary, path: Path) -> Path | None:
    """(d) Mean score on a depth x length grid: rows = policies (FullKV first), columns = budgets."""
    if not s.has_grid:
        return None
    acc: dict[tuple[str, str, float, float], list[float]] = defaultdict(list)
    depths: set[float] = set()
    lengths: set[float] = set()
    for r in s.records:
        m = r.get("meta") or {}
        if r.get("score") is None:
            continue
        d, length = float(m["depth"]), float(m["length"])
        depths.add(d)
        lengths.add(length)
        bk = "*" if r.get("policy") == FULL else budget_key(r.get("budget"))
        acc[(str(r.get("policy")), bk, d, length)].append(float(r["score"]))
    if not acc:
        return None
    ds, ls = sorted(depths), sorted(lengths)
    values = [sum(v) / len(v) for v in acc.values()]
    vmin, vmax = min(0.0, min(values)), max(1.0, max(values))
    rows = ([FULL] if any(k[0] == FULL for k in acc) else []) + list(s.policies)
    ncols = max(1, len(s.budgets))
    annotate = len(ds) * len(ls) <= 40
    fig = new_figure(max(2.6 * ncols, 1.0 + 0.7 * len(ls) * ncols) + 1.2, (0.32 * len(ds) + 0.9) * len(rows) + 0.8)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    image = None
    for ri, p in enumerate(rows):
        for ci in range(ncols):
            ax = axes[ri][ci]
            if p == FULL:
                bk, title = "*", "FullKV (every budget)"
                if ci > 0:
                    ax.set_visible(False)
                    continue
            else:
                bk, title = s.budgets[ci].key, f"{p} @ {s.budgets[ci].label}"
            grid = [[float("nan")] * len(ls) for _ in ds]
            for di, d in enumerate(ds):
                for li, length in enumerate(ls):
                    vals = acc.get((p, bk, d, length))
                    if vals:
                        grid[di][li] = sum(vals) / len(vals)
            image = ax.imshow(grid, vmin=vmin, vmax=vmax, cmap="RdYlGn", aspect="auto", origin="upper")
            if annotate:
                for di in range(len(ds)):
                    for li in range(len(ls)):
                        v = grid[di][li]
                        if v == v:  # not NaN
                            rgb = to_rgb(image.cmap(image.norm(v)))
                            ax.text(li, di, f"{v:.2f}", ha="center", va="center", fontsize=8, color=_text_color(rgb))
            ax.set_title(title, fontsize=9, fontweight="bold" if p == s.proposed else "normal")
            ax.set_xticks(range(len(ls)), [f"{x:g}" for x in ls], fontsize=8)
            ax.set_yticks(range(len(ds)), [f"{x:g}" for x in ds], fontsize=8)
            if ri == len(rows) - 1 or (p == FULL and len(rows) == 1):
                ax.set_xlabel("context length (tokens)", fontsize=8)
            if ci == 0:
                ax.set_ylabel("needle depth", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=[a for row in axes for a in row if a.get_visible()], shrink=0.5, label="mean score")
    fig.suptitle(f"{s.task} — {s.model}\nscore by needle depth × context length", fontsize=11)
    return save_png(fig, path)


def _draw(summary: Any, plots: Sequence[tuple[str, Callable[[Any, Path], Path | None], str]], plot_dir: Path,
          stem: str) -> dict[str, Path]:
    """Draw ``plots`` ((caption, function, file suffix)) of one task's summary; {caption: png} of those drawn."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for caption, fn, suffix in plots:
        png = fn(summary, plot_dir / f"{stem}_{suffix}.png")
        if png is not None:
            out[f"{summary.task}: {caption}"] = png
    return out


def task_plots(s: TaskSummary, plot_dir: Path, stem: str) -> dict[str, Path]:
    """Draw every plot that applies to ``s`` into ``plot_dir``; return {caption: png path}."""
    return _draw(s, (
        ("score vs KV memory", score_vs_memory, "score"),
        ("fidelity (KL) vs KV memory", kl_vs_memory, "kl"),
        ("score retained vs KV memory (Pareto)", pareto_plot, "pareto"),
        ("per-layer budget profile", layer_profiles, "layers"),
        ("score by depth x length", needle_heatmaps, "heatmap"),
    ), plot_dir, stem)


# -- cost (latency tasks) ---------------------------------------------------------------------------


def cost_panels(c: CostSummary) -> list[tuple[str, list[CostSeries]]]:
    """The series of a latency task split into one panel per budget: (budget label, [FullKV, the policies at
    that budget]); a single FullKV panel when no policy ran."""
    full = [s for s in c.series if s.policy == FULL]
    by_budget: dict[str, list[CostSeries]] = {}
    for s in c.series:
        if s.policy != FULL:
            by_budget.setdefault(budget_key(s.budget), []).append(s)
    if not by_budget:
        return [("FullKV", full)] if full else []
    return [(f"budget {budget_label(ss[0].budget)}", full + ss) for ss in by_budget.values()]


def _cost_lines(series: list[CostSeries], figure: str, scale: float, ax: Axes, log_span: float) -> bool:
    """One line per series of ``figure`` / ``scale`` vs context length (FullKV black), dodged; whether any."""
    drawn = False
    for j, s in enumerate(series):
        pts = [(p.length, getattr(p, figure) / scale) for p in s.points if (getattr(p, figure) or 0) > 0]
        if not pts:
            continue
        if s.policy == FULL:
            style: dict[str, Any] = {"color": "black", "marker": "o", "linewidth": 2.0, "zorder": 6, "label": "FullKV"}
        else:
            style = policy_style(s.policy, j)
        ax.plot(dodged([x for x, _ in pts], j, len(series), log_span, log=True), [y for _, y in pts], **style)
        drawn = True
    return drawn


def _log_axes(ax: Axes, c: CostSummary, note: str) -> None:
    """Log-log axes with the measured lengths as the x ticks."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(c.lengths, [str(n) for n in c.lengths])
    ax.set_xticks([], minor=True)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("context length (tokens), log" + note, fontsize=8)
    ax.grid(alpha=0.3, which="both")


def _cost_figure(c: CostSummary, rows: list[tuple[str, float, str, str]], title: str, path: Path,
                 limit: float | None = None) -> Path | None:
    """A grid of panels: one row per (figure, scale, y label, row title), one column per budget (y shared
    along a row); ``limit`` a horizontal line in every panel."""
    panels = cost_panels(c)
    if not panels:
        return None
    fig = new_figure(4.2 * len(panels) + 2.2, 3.6 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), len(panels), squeeze=False, sharey="row")
    span = _span(c.lengths, log=True)
    drawn = False
    for ri, (figure, scale, ylabel, what) in enumerate(rows):
        for ci, (budget, series) in enumerate(panels):
            ax = axes[ri][ci]
            drawn = _cost_lines(series, figure, scale, ax, span) or drawn
            if limit is not None:
                ax.axhline(limit, color="gray", linestyle=":", linewidth=1.2, label=f"limit {limit / 1024:g} GiB")
            _log_axes(ax, c, _dodge_note(len(series)).replace(" — ", "\n"))
            ax.set_title(f"{budget}: {what}", fontsize=9)
            if ci == 0:
                ax.set_ylabel(ylabel, fontsize=8)
    if not drawn:
        return None
    fig.suptitle(f"{c.task} — {c.model}\n{title}", fontsize=10)
    outside_legend(fig)
    return save_png(fig, path)


def cost_decode(c: CostSummary, path: Path) -> Path | None:
    """Decode ms/token vs context length, log-log, one panel per budget (FullKV in each); wall time, and
    CPU time in a second row when measured."""
    rows = [("decode_ms", 1.0, "decode ms / token (median), log", "wall time")]
    if c.has_cpu_time:
        rows.append(("decode_cpu_ms", 1.0, "decode CPU ms / token (median), log", "process CPU time"))
    return _cost_figure(c, rows, f"time per decoded token (batch 1, {c.meta.get('device')})", path)


def cost_memory(c: CostSummary, path: Path) -> Path | None:
    """Peak memory while decoding (cache + one step) vs context length, log-log, one panel per budget, with
    the memory limit."""
    rows = [("peak_mem_bytes", 2**20, "peak memory while decoding (MiB), log", "peak memory")]
    return _cost_figure(c, rows, "KV cache + one decode step vs context (weights not counted)", path,
                        limit=c.limit_bytes / 2**20)


def cost_plots(c: CostSummary, plot_dir: Path, stem: str) -> dict[str, Path]:
    """Draw the cost plots of one latency task into ``plot_dir``; return {caption: png path}."""
    return _draw(c, (
        ("decode ms/token vs context length", cost_decode, "decode"),
        ("peak memory vs context length", cost_memory, "memory"),
    ), plot_dir, stem)
