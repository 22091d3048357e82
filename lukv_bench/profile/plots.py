"""PNG plots of an attention profile (:mod:`lukv_bench.profile.result`), drawn on the Agg canvas.

* ``zigzag.png`` — each measure across layers (mean over samples with its 95% interval);
* ``heads.png`` — LMBA and LMBO per layer and KV head;
* ``allocations.png`` — the per-layer budgets of every layer-adaptive policy next to uniform;
* ``correlations.png`` — Spearman correlations across layers between the measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.ticker import MaxNLocator

from lukv_bench.report.plots import new_figure, policy_style, save_png

if TYPE_CHECKING:
    from lukv_bench.profile.result import ProfileResult

_TITLES = {
    "lmba": ("LMBA: tokens holding tau of the window attention", "fraction of prompt"),
    "lmbo": ("LMBO: budget keeping the layer output (cosine >= c)", "fraction of prompt"),
    "ablation": ("Retrieval ablation: answer log-likelihood drop", "nats / answer token"),
}


def zigzag(result: ProfileResult, measures: list[dict], path: Path) -> Path:
    """One panel per measure: the layer means with a 95% band, one line per tau / threshold."""
    rows = [r for r in measures if r["head"] == "all"]
    fig = new_figure(5.2 * 3, 3.8)
    axes = fig.subplots(1, 3)
    for ax, measure in zip(axes, ("lmba", "lmbo", "ablation")):
        title, unit = _TITLES[measure]
        params = sorted({r["param"] for r in rows if r["measure"] == measure})
        drawn = False
        for param in params:
            cell = [r for r in rows if r["measure"] == measure and r["param"] == param and r["mean"] is not None]
            if not cell:
                continue
            layers = [r["layer"] for r in cell]
            label = {"lmba": f"tau={param}", "lmbo": f"c={param}"}.get(measure, "drop")
            ax.plot(layers, [r["mean"] for r in cell], marker="o", markersize=3, label=label)
            if all(r["ci_low"] is not None for r in cell):
                ax.fill_between(layers, [r["ci_low"] for r in cell], [r["ci_high"] for r in cell], alpha=0.2)
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no sample with the answer\nin its context", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    fig.suptitle(f"{result.model}: per-layer attention profile ({len(result.samples)} samples, 95% interval)",
                 fontsize=10)
    return save_png(fig, path)


def head_heatmaps(result: ProfileResult, measures: list[dict], path: Path) -> Path:
    """LMBA (middle tau) and LMBO (first threshold) per layer (rows) and KV head (columns)."""
    s = result.settings
    picks = [("lmba", f"{s.taus[len(s.taus) // 2]:g}"), ("lmbo", f"{s.cos_thresholds[0]:g}")]
    rows = [r for r in measures if r["head"] != "all"]
    fig = new_figure(3.2 * len(picks) + 1.0, max(3.0, 0.22 * result.n_layers + 1.2))
    axes = fig.subplots(1, len(picks))
    for ax, (measure, param) in zip(axes, picks):
        grid = [[0.0] * result.n_kv_heads for _ in range(result.n_layers)]
        for r in rows:
            if r["measure"] == measure and r["param"] == param:
                grid[r["layer"]][int(r["head"])] = r["mean"]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="upper")
        ax.set_title(f"{measure.upper()} {'tau' if measure == 'lmba' else 'c'}={param}", fontsize=9)
        ax.set_xlabel("KV head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(result.n_kv_heads))
        fig.colorbar(im, ax=ax, label="fraction of prompt")
    return save_png(fig, path)


def allocations(result: ProfileResult, rows: list[dict], path: Path) -> Path:
    """Mean kept fraction of the prompt per layer for each policy at the settings' mean budget."""
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    labels = list(dict.fromkeys(r["policy"] for r in rows))
    for i, label in enumerate(labels):
        cell = [r for r in rows if r["policy"] == label]
        style = policy_style(label, i)
        if label == "uniform":
            style.update(color="black", linestyle="--", marker="")
        ax.plot([r["layer"] for r in cell], [r["mean"] for r in cell], markersize=3, **style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("kept fraction of prompt")
    ax.set_title(f"Per-layer budgets at a mean budget of {result.settings.budget:g} (mean over samples)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def correlations(labels: list[str], matrix: list[list[float]], path: Path) -> Path:
    """Spearman correlation matrix across layers, annotated; blank where a series is constant."""
    k = len(labels)
    fig = new_figure(1.1 * k + 2.5, 0.9 * k + 1.8)
    ax = fig.subplots()
    values = [[float("nan") if v is None else v for v in row] for row in matrix]
    im = ax.imshow(values, cmap="coolwarm", vmin=-1, vmax=1)
    for i in range(k):
        for j in range(k):
            v = matrix[i][j]
            ax.text(j, i, "-" if v is None else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_title("Spearman correlation across layers", fontsize=10)
    fig.colorbar(im, ax=ax)
    return save_png(fig, path)


def draw_all(result: ProfileResult, out: Path, measures: list[dict], allocation_rows: list[dict],
             labels: list[str], matrix: list[list[float]]) -> dict[str, Path]:
    """Draw every plot into ``out`` from the tables ``write_outputs`` already computed; returns name -> path."""
    out = Path(out)
    return {
        "zigzag_png": zigzag(result, measures, out / "zigzag.png"),
        "heads_png": head_heatmaps(result, measures, out / "heads.png"),
        "allocations_png": allocations(result, allocation_rows, out / "allocations.png"),
        "correlations_png": correlations(labels, matrix, out / "correlations.png"),
    }
