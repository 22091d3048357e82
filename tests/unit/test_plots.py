"""Report plots: the numbers handed to matplotlib (points, intervals, Pareto points, panels), the report's
ownership of its plot folder, and the figures' labels. Synthetic records, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lukv_bench.report import plots
from lukv_bench.report.cost import CostPoint, CostSeries, CostSummary
from lukv_bench.report.plots import ParetoPoint
from lukv_bench.report.render import render_report
from lukv_bench.report.summary import summarize
from lukv_bench.runtime.contract import FULL

MODEL = "tiny-model-x"
FULL_BYTES = 1000


def record(sid: str, policy: str, budget, score: float, kv: float = 1.0, kl: float | None = None,
           task: str = "qa") -> dict:
    """One scored record; ``kv`` is its KV bytes relative to FullKV's."""
    return {
        "model": MODEL, "task": task, "sample_id": sid, "policy": policy, "budget": budget, "score": score,
        "metric": "f1", "kv_bytes": kv * FULL_BYTES, "kv_bytes_full": FULL_BYTES, "budget_ratio": kv,
        "kl_mean": kl, "data_source": "synthetic", "layer_budgets": None, "meta": {},
    }


#: FullKV on s0..s3 (sum 3.0); snapkv at 0.2 also on s4, which FullKV lacks
RECORDS = [
    record("s0", FULL, 1.0, 1.0), record("s1", FULL, 1.0, 1.0), record("s2", FULL, 1.0, 0.5),
    record("s3", FULL, 1.0, 0.5),
    record("s0", "snapkv", 0.2, 1.0, kv=0.2, kl=0.5), record("s1", "snapkv", 0.2, 0.0, kv=0.2, kl=0.7),
    record("s2", "snapkv", 0.2, 0.5, kv=0.3, kl=0.9), record("s3", "snapkv", 0.2, 0.0, kv=0.3, kl=1.1),
    record("s4", "snapkv", 0.2, 1.0, kv=0.9, kl=2.0),
    record("s0", "snapkv", 0.5, 1.0, kv=0.5, kl=0.1), record("s1", "snapkv", 0.5, 1.0, kv=0.5, kl=0.3),
    record("s2", "snapkv", 0.5, 0.5, kv=0.5, kl=0.2), record("s3", "snapkv", 0.5, 0.5, kv=0.5, kl=0.4),
    record("s0", "h2o", 0.2, 0.0, kv=0.2, kl=1.5), record("s1", "h2o", 0.2, 0.5, kv=0.2, kl=1.0),
    record("s2", "h2o", 0.2, 0.5, kv=0.2, kl=1.2), record("s3", "h2o", 0.2, 0.0, kv=0.2, kl=1.9),
]


@pytest.fixture(scope="module")
def summary():
    (s,) = summarize(RECORDS)
    return s


@pytest.fixture()
def drawn(monkeypatch):
    """The figures the plot functions save (they are still written)."""
    figures = []
    save = plots.save_png

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "save_png", keep)
    return figures


def test_pareto_points_are_relative_to_fullkv_on_the_same_samples(summary):
    series = plots.pareto_series(summary)
    assert series[FULL] == [ParetoPoint("FullKV", 1.0, 1.0, 4)]
    # snapkv @ 0.2 on s0..s3 (s4 has no FullKV): (1 + 0 + 0.5 + 0) / (1 + 1 + 0.5 + 0.5); KV (.2+.2+.3+.3) / 4
    low, high = series["snapkv"]
    assert (low.label, low.n) == ("0.2", 4)
    assert low.retained == pytest.approx(1.5 / 3.0)
    assert low.kv == pytest.approx(0.25)
    assert (high.label, high.retained, high.kv) == ("0.5", pytest.approx(3.0 / 3.0), pytest.approx(0.5))
    assert series["h2o"] == [ParetoPoint("0.2", pytest.approx(0.2), pytest.approx(1.0 / 3.0), 4)]


def test_pareto_point_needs_a_positive_fullkv_score():
    assert plots.pareto_point("b", {"a": 1.0}, {"a": 0.0}, {"a": 0.5}) is None
    assert plots.pareto_point("b", {"a": 1.0}, {"z": 1.0}, {"a": 0.5}) is None
    assert plots.pareto_point("b", {"a": 1.0, "b": 0.0}, {"a": 2.0, "b": 2.0}, {"a": 0.5, "b": 0.1}) == \
        ParetoPoint("b", pytest.approx(0.3), 0.25, 2)
    zero = summarize([record("s0", FULL, 1.0, 0.0), record("s0", "snapkv", 0.2, 0.0, kv=0.2)])[0]
    assert plots.pareto_series(zero) == {}


def test_pareto_front_keeps_the_undominated_points():
    pts = [ParetoPoint("a", 0.2, 0.5, 1), ParetoPoint("b", 0.3, 0.4, 1), ParetoPoint("c", 0.5, 1.0, 1),
           ParetoPoint("d", 0.5, 0.9, 1), ParetoPoint("FullKV", 1.0, 1.0, 1), ParetoPoint("e", 0.1, 0.1, 1)]
    assert [q.label for q in plots.pareto_front(pts)] == ["e", "a", "c"]


def test_score_plot_draws_each_cells_mean_and_interval(summary, drawn, tmp_path):
    assert plots.score_vs_memory(summary, tmp_path / "x_score.png").is_file()
    (ax,) = drawn[0].axes
    bars = {c.get_label(): c for c in ax.containers}
    assert set(bars) == {"h2o", "snapkv"}
    line, _, (segments,) = bars["snapkv"]
    cell_low = summary.cells[("snapkv", "0.2")]
    cell_high = summary.cells[("snapkv", "0.5")]
    assert list(line.get_ydata()) == pytest.approx([cell_low.score, cell_high.score])
    # the bars span the cell's 95% interval; the points sit sideways of the measured memory by the dodge only
    (lo0, hi0) = segments.get_segments()[0][:, 1]
    assert (lo0, hi0) == pytest.approx(cell_low.score_ci)
    xs = line.get_xdata()
    assert xs[0] == pytest.approx(cell_low.mem_ratio, abs=0.02)
    assert xs[0] != cell_low.mem_ratio
    labels = ax.get_legend_handles_labels()[1]
    assert "FullKV" in labels and "FullKV 95% interval" in labels
    assert MODEL in ax.get_title()
    assert drawn[0].legends, "the legend belongs to the figure, outside the axes"
    assert not ax.get_legend()


def test_kl_plot_draws_bca_intervals_of_the_per_sample_kl(summary, drawn, tmp_path):
    plots.kl_vs_memory(summary, tmp_path / "x_kl.png")
    (ax,) = drawn[0].axes
    line, _, (segments,) = {c.get_label(): c for c in ax.containers}["h2o"]
    kls = [1.5, 1.0, 1.2, 1.9]
    assert line.get_ydata()[0] == pytest.approx(sum(kls) / 4)
    lo, hi = segments.get_segments()[0][:, 1]
    assert lo < sum(kls) / 4 < hi
    assert (lo, hi) == pytest.approx(plots.kl_interval(summary, "h2o", "0.2"))
    assert ax.get_yscale() == "log"


def test_pareto_plot_has_every_policy_and_fullkv_at_one(summary, drawn, tmp_path):
    plots.pareto_plot(summary, tmp_path / "x_pareto.png")
    (ax,) = drawn[0].axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert {"FullKV", "snapkv", "h2o", "Pareto frontier"} <= set(lines)
    assert (list(lines["FullKV"].get_xdata()), list(lines["FullKV"].get_ydata())) == ([1.0], [1.0])
    assert list(lines["snapkv"].get_ydata()) == pytest.approx([0.5, 1.0])
    assert MODEL in ax.get_title()


def test_task_plots_link_the_pareto_plot(summary, tmp_path):
    out = plots.task_plots(summary, tmp_path, "qa")
    assert out["qa: score retained vs KV memory (Pareto)"] == tmp_path / "qa_pareto.png"
    assert {p.name for p in out.values()} == {"qa_score.png", "qa_kl.png", "qa_pareto.png"}


def test_dodge_is_centred_and_multiplicative_on_log_axes():
    assert plots.dodged([1.0], 0, 3, 10.0) == [pytest.approx(1.0 - plots.DODGE * 10)]
    assert plots.dodged([1.0], 1, 3, 10.0) == [1.0]
    (x,) = plots.dodged([1000.0], 2, 3, 1.0, log=True)
    assert x == pytest.approx(1000.0 * 10**plots.DODGE)
    many = [plots.dodged([0.0], j, 20, 1.0)[0] for j in range(20)]
    assert max(many) - min(many) == pytest.approx(plots.MAX_SPREAD)
    assert sum(many) == pytest.approx(0.0)


def _cost(policies: list[str], budgets: list[float]) -> CostSummary:
    def point(n: int, ratio: float) -> CostPoint:
        return CostPoint(length=n, kv_bytes=n * ratio, kv_ratio=ratio, peak_mem_bytes=n * ratio * 2**20,
                         peak_ratio=ratio, prefill_peak_bytes=n, prefill_peak_ratio=1.0, prefill_s=0.1,
                         prefill_ratio=1.0, compress_s=0.01, compress_share=0.1, decode_ms=10 * ratio,
                         decode_ratio=ratio, tokens_per_s=100.0)

    series = [CostSeries(FULL, 1.0, [point(n, 1.0) for n in (1024, 2048)])]
    series += [CostSeries(p, b, [point(n, b) for n in (1024, 2048)]) for p in policies for b in budgets]
    return CostSummary(model=MODEL, task="cost", series=series, memory_limit_gb=1.0, data_source="synthetic",
                       meta={"device": "cpu"})


def test_cost_plots_are_faceted_one_panel_per_budget(drawn, tmp_path):
    policies = ["streaming", "h2o", "snapkv", "pyramidkv", "adakv", "cake", "layer-uncertainty"]
    c = _cost(policies, [0.1, 0.2, 0.4, 0.8])  # 28 series besides FullKV
    panels = plots.cost_panels(c)
    assert [label for label, _ in panels] == ["budget 0.1", "budget 0.2", "budget 0.4", "budget 0.8"]
    for _, series in panels:
        assert [s.policy for s in series] == [FULL, *policies]
        assert len({plots.budget_key(s.budget) for s in series[1:]}) == 1
    plots.cost_memory(c, tmp_path / "cost_memory.png")
    axes = drawn[0].axes
    assert len(axes) == 4
    for ax in axes:
        labels = [ln.get_label() for ln in ax.get_lines()]
        assert labels == ["FullKV", *policies, "limit 1 GiB"]
    assert MODEL in drawn[0].get_suptitle()


def test_clear_plots_deletes_only_the_reports_own_pngs(tmp_path):
    names = ["qa_score.png", "old-task_pareto.png", "cost_decode.png", "passkey_heatmap.png",
             "notes.png", "my_figure.png", "qa_score.svg", "score.png"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    gone = plots.clear_plots(tmp_path)
    assert sorted(p.name for p in gone) == ["cost_decode.png", "old-task_pareto.png", "passkey_heatmap.png",
                                            "qa_score.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_figure.png", "notes.png", "qa_score.svg",
                                                          "score.png"]


def test_report_replaces_stale_plots_and_keeps_foreign_files(tmp_path):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    plot_dir = tmp_path / "plots"
    plot_dir.mkdir()
    (plot_dir / "removed-task_score.png").write_bytes(b"stale")
    (plot_dir / "diagram.png").write_bytes(b"mine")
    md = render_report(tmp_path).read_text()
    names = sorted(p.name for p in plot_dir.iterdir())
    assert names == ["diagram.png", "qa_kl.png", "qa_pareto.png", "qa_score.png"]
    assert "](plots/qa_pareto.png)" in md
    assert (plot_dir / "diagram.png").read_bytes() == b"mine"


def test_heatmap_titles_name_the_model(drawn, tmp_path):
    recs = []
    for d in (0.2, 0.8):
        for n in (500, 1000):
            meta = {"depth": d, "length": n}
            recs.append(record(f"L{n}-d{d}", FULL, 1.0, 1.0, task="needle") | {"meta": meta})
            recs.append(record(f"L{n}-d{d}", "snapkv", 0.2, float(d > 0.5), kv=0.2, task="needle") | {"meta": meta})
    (s,) = summarize(recs)
    plots.needle_heatmaps(s, tmp_path / "needle_heatmap.png")
    fig = drawn[0]
    assert MODEL in fig.get_suptitle()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("1.00") == 4 + 2 and texts.count("0.00") == 2
    assert all(t.get_fontsize() >= 8 for ax in fig.axes for t in ax.texts)


def test_plot_kinds_cover_every_plot_the_report_draws(summary, tmp_path):
    drawn_names = [p.name for p in plots.task_plots(summary, tmp_path, "qa").values()]
    drawn_names += [p.name for p in plots.cost_plots(_cost(["snapkv"], [0.2]), tmp_path, "c").values()]
    assert all(Path(n).stem.rsplit("_", 1)[1] in plots.PLOT_KINDS for n in drawn_names)
    assert sorted(plots.owned_plots(tmp_path)) == sorted(tmp_path / n for n in drawn_names)
