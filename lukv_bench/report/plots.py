"""PNG plots for the report, drawn on matplotlib's Agg canvas.

Figures are created as ``Figure`` objects bound to ``FigureCanvasAgg`` directly, never through pyplot,
so no display is needed and the process-wide backend of a caller (a notebook, say) is left untouched.

Per task: score vs measured KV memory, fidelity (KL) vs memory, per-layer budget profiles of the
layer-adaptive policies at the median budget, and for depth x length tasks (needle) a heatmap grid.
Per latency task: decode ms/token and peak memory vs context length (log-log).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from lukv_bench.report.summary import POLICY_ORDER, budget_key
from lukv_bench.runtime.contract import FULL

if TYPE_CHECKING:
    from lukv_bench.report.cost import CostSummary
    from lukv_bench.report.summary import TaskSummary

DPI = 110
_MARKERS = "osD^v<>phX*"
_COLORS = ("C0", "C1", "C2", "C4", "C5", "C6", "C7", "C8", "C9")  #: no red: red is the proposed method


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (no pyplot, no display)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG; returns the path."""
    fig.savefig(path, format="png")
    return path


def policy_style(policy: str, i: int, proposed: str | None = None) -> dict[str, object]:
    """Line style of a policy: the same colour in every plot, the proposed method emphasised."""

    k = POLICY_ORDER.index(policy) if policy in POLICY_ORDER else len(POLICY_ORDER) + i
    style: dict[str, object] = {
        "marker": _MARKERS[k % len(_MARKERS)],
        "label": policy,
        "color": _COLORS[k % len(_COLORS)],
    }
    if policy == proposed:
        style.update(linewidth=2.6, color="crimson", zorder=5)
    return style


def _lines_vs_memory(ax: Any, s: TaskSummary, value: Callable[[Any], float | None]) -> bool:
    """One line per policy of ``value(cell)`` against measured KV memory; whether anything was drawn."""
    drawn = False
    for i, p in enumerate(s.policies):
        pts = sorted(
            (c.mem_ratio, v) for b in s.budgets
            if (c := s.cell(p, b)) and c.mem_ratio is not None and (v := value(c)) is not None
        )
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], **policy_style(p, i, s.proposed))
            drawn = True
    return drawn


def score_vs_memory(s: TaskSummary, path: Path) -> Path | None:
    """(a) Mean score vs measured KV memory (kv_bytes / kv_bytes_full), one line per policy."""
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    drawn = _lines_vs_memory(ax, s, lambda c: c.score)
    if s.full is not None and s.full.score is not None:
        ax.axhline(s.full.score, color="black", linestyle="--", linewidth=1.2, label="FullKV")
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("KV memory / FullKV (measured)")
    ax.set_ylabel(f"mean score ({s.metric})")
    ax.set_title(f"{s.task}: score vs KV memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_png(fig, path)


def kl_vs_memory(s: TaskSummary, path: Path) -> Path | None:
    """(b) Mean KL(FullKV || policy) vs measured KV memory, log scale; zero or missing KL is omitted."""
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    if not _lines_vs_memory(ax, s, lambda c: c.kl if c.kl is not None and c.kl > 0 else None):
        return None
    ax.set_yscale("log")
    ax.set_xlabel("KV memory / FullKV (measured)")
    ax.set_ylabel("mean KL(FullKV ‖ policy), log")
    ax.set_title(f"{s.task}: fidelity vs KV memory (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return save_png(fig, path)


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
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    drawn = False
    for i, p in enumerate(adaptive):
        c = s.cell(p, b)
        if c is None or not c.layer_profile:
            continue
        mean = sum(c.layer_profile) / len(c.layer_profile)
        if mean <= 0:
            continue
        ax.plot(range(len(c.layer_profile)), [v / mean for v in c.layer_profile], **policy_style(p, i, s.proposed))
        drawn = True
    if not drawn:
        return None
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1.2, label="uniform")
    ax.set_xlabel("layer")
    ax.set_ylabel("tokens kept / mean over layers")
    ax.set_title(f"{s.task}: per-layer budget at budget {b.label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_png(fig, path)


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
    annotate = len(ds) * len(ls) <= 30
    fig = new_figure(2.4 * ncols + 1.0, 1.9 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    image = None
    for ri, p in enumerate(rows):
        for ci in range(ncols):
            ax = axes[ri][ci]
            if p == FULL:
                bk, title = "*", "FullKV (all budgets)"
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
                            ax.text(li, di, f"{v:.2f}", ha="center", va="center", fontsize=6)
            ax.set_title(title, fontsize=8)
            ax.set_xticks(range(len(ls)), [f"{x:g}" for x in ls], fontsize=6)
            ax.set_yticks(range(len(ds)), [f"{x:g}" for x in ds], fontsize=6)
            if ri == len(rows) - 1:
                ax.set_xlabel("length (tokens)", fontsize=7)
            if ci == 0:
                ax.set_ylabel("depth", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=[a for row in axes for a in row if a.get_visible()], shrink=0.6, label="score")
    fig.suptitle(f"{s.task}: score by needle depth x context length", fontsize=10)
    return save_png(fig, path)


def _draw(summary, plots, plot_dir: Path, stem: str) -> dict[str, Path]:
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
        ("per-layer budget profile", layer_profiles, "layers"),
        ("score by depth x length", needle_heatmaps, "heatmap"),
    ), plot_dir, stem)


# -- cost (latency tasks) ---------------------------------------------------------------------------

_DASHES = ("-", "--", ":", "-.")


def _cost_lines(c: CostSummary, figure: str, scale: float, ax) -> bool:
    """One line per (policy, budget) series of ``figure`` / ``scale`` vs context length; FullKV black."""
    budgets = sorted({budget_key(s.budget) for s in c.series if s.policy != FULL})
    drawn = False
    for i, s in enumerate(c.series):
        pts = [(p.length, getattr(p, figure) / scale) for p in s.points if (getattr(p, figure) or 0) > 0]
        if not pts:
            continue
        if s.policy == FULL:
            style: dict[str, object] = {"color": "black", "marker": "o", "linewidth": 2.0, "zorder": 6}
        else:
            style = policy_style(s.policy, i)
            style["linestyle"] = _DASHES[budgets.index(budget_key(s.budget)) % len(_DASHES)]
        style["label"] = s.label
        ax.plot([x for x, _ in pts], [y for _, y in pts], **style)
        drawn = True
    return drawn


def _log_axes(ax, c: CostSummary) -> None:
    """Log-log axes with the measured lengths as the x ticks."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(c.lengths, [str(n) for n in c.lengths])
    ax.set_xticks([], minor=True)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("context length (tokens), log")


def cost_decode(c: CostSummary, path: Path) -> Path | None:
    """Decode ms/token vs context length, log-log, one line per (policy, budget); wall time, and CPU time
    beside it when measured."""
    panels = [("decode_ms", "wall")] + ([("decode_cpu_ms", "process CPU")] if c.has_cpu_time else [])
    fig = new_figure(6.4 * len(panels), 4.6)
    drawn = False
    for ax, (figure, what) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        if not _cost_lines(c, figure, 1.0, ax):
            continue
        drawn = True
        _log_axes(ax, c)
        ax.set_ylabel(f"decode ms / token, {what} time (median), log")
        ax.set_title(f"{c.task}: {what} time per token (batch 1, {c.meta.get('device')})", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best", ncol=2)
    return save_png(fig, path) if drawn else None


def cost_memory(c: CostSummary, path: Path) -> Path | None:
    """Peak memory while decoding (cache + one step) vs context length, log-log, with the memory limit."""
    fig = new_figure(7.0, 4.6)
    ax = fig.add_subplot()
    if not _cost_lines(c, "peak_mem_bytes", 2**20, ax):
        return None
    ax.axhline(c.limit_bytes / 2**20, color="gray", linestyle=":", linewidth=1.2,
               label=f"limit {c.memory_limit_gb:g} GiB")
    _log_axes(ax, c)
    ax.set_ylabel("peak memory while decoding (MiB), log")
    ax.set_title(f"{c.task}: KV cache + one decode step vs context (weights not counted)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best", ncol=2)
    return save_png(fig, path)


def cost_plots(c: CostSummary, plot_dir: Path, stem: str) -> dict[str, Path]:
    """Draw the cost plots of one latency task into ``plot_dir``; return {caption: png path}."""
    return _draw(c, (
        ("decode ms/token vs context length", cost_decode, "decode"),
        ("peak memory vs context length", cost_memory, "memory"),
    ), plot_dir, stem)
