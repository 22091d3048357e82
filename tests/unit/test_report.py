"""Report rendering from a synthetic results.jsonl (no model needed)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from lukv_bench.errors import UserError
from lukv_bench.report.render import render_report
from lukv_bench.report.summary import load_results, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POLICIES = ["full", "snapkv", "pyramidkv", "layer-uncertainty"]
BUDGETS = [0.1, 0.2, 0.4]
N_LAYERS = 6

# layer-uncertainty: below snapkv at 0.1 (loss), tie at 0.2, above at 0.4 (win); every list is written
# twice (8 samples per cell), so that a unanimous paired difference can survive Holm's correction
QA_SCORES = {
    "full": {None: [1.0, 1.0, 0.5, 1.0]},
    "snapkv": {0.1: [0.8, 0.6, 0.7, 0.5], 0.2: [0.7, 0.7, 0.7, 0.7], 0.4: [0.6, 0.6, 0.6, 0.6]},
    "pyramidkv": {0.1: [0.2, 0.2, 0.2, 0.2], 0.2: [0.5, 0.5, 0.5, 0.5], 0.4: [0.9, 0.9, 0.9, 0.9]},
    "layer-uncertainty": {0.1: [0.3, 0.3, 0.3, 0.3], 0.2: [0.7, 0.7, 0.7, 0.7], 0.4: [0.8, 0.8, 0.8, 0.8]},
}


def _profile(policy: str, mean: int) -> list[int]:
    if policy == "pyramidkv":
        shape = [1.5, 1.3, 1.1, 0.9, 0.7, 0.5]
    elif policy == "layer-uncertainty":
        shape = [1.4, 0.6, 1.3, 0.7, 1.2, 0.8]
    else:
        shape = [1.0] * N_LAYERS
    return [round(mean * x) for x in shape]


def _record(task: str, sid: str, policy: str, budget, score, meta=None, **kw) -> dict:
    ctx = 1000
    if budget is None:
        ratio = 1.0
    elif isinstance(budget, dict):
        ratio = budget["tokens"] / ctx
    else:
        ratio = float(budget)
    tokens = int(ctx * ratio)
    full_bytes = 46_000 * ctx
    rec = {
        "model": "tiny",
        "task": task,
        "sample_id": sid,
        "policy": policy,
        "policy_params": {"window": 8} if policy != "full" else {},
        "budget": 1.0 if budget is None else budget,
        "budget_ratio": ratio,
        "budget_tokens_mean": tokens,
        "context_tokens": ctx,
        "layer_budgets": _profile(policy, tokens),
        "head_budgets": None,
        "score": score,
        "metric": "substring",
        "prediction": "x",
        "answers": ["x"],
        "kv_bytes": int(full_bytes * ratio),
        "kv_bytes_full": full_bytes,
        "prefill_s": 0.5,
        "compress_s": 0.0 if policy == "full" else 0.01,
        "decode_s": 0.2 if policy == "full" else 0.1,
        "new_tokens": 8,
        "peak_mem_bytes": 1,
        "kl_mean": None
        if policy == "full"
        else (1 - ratio) * (0.5 if policy == "layer-uncertainty" else 1.0),
        "greedy_agreement": None if policy == "full" else ratio + 0.5,
        "data_source": "offline generated QA (synthetic test data)" if task == "qa" else "offline needle v1",
        "seed": 0,
        "versions": {"lukv_bench": "0.1.0"},
        "meta": meta or {},
        "allocation_info": None,
    }
    rec.update(kw)
    return rec


def _write_results(out: Path, torn: bool = True, proposed: str | None = "layer-uncertainty") -> None:
    recs = []
    for policy, by_budget in QA_SCORES.items():
        for budget, scores in by_budget.items():
            for i, sc in enumerate(scores * 2):
                recs.append(_record("qa", f"qa-{i}", policy, budget, sc))
    rng = random.Random(0)
    for length in (500, 1000):
        for depth in (0.1, 0.5, 0.9):
            sid = f"needle-L{length}-d{depth}"
            meta = {"depth": depth, "length": length}
            recs.append(_record("needle", sid, "full", None, 1.0, meta))
            for policy in POLICIES[1:]:
                for budget in BUDGETS:
                    recs.append(
                        _record("needle", sid, policy, budget, float(rng.random() < budget * 2), meta)
                    )
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(r) for r in recs) + "\n"
    if torn:
        text += json.dumps(recs[0])[:37]  # interrupted append: no newline, cut mid-object
    (out / "results.jsonl").write_text(text)
    suite = {"name": "synthetic-suite"} | ({"report": {"proposed": proposed}} if proposed else {})
    (out / "run.json").write_text(json.dumps({"suite": suite, "versions": {"torch": "x"}}))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("out")
    _write_results(out)
    path = render_report(out)
    return out, path.read_text()


def _row(md: str, section_marker: str, label: str) -> list[str]:
    """Cells of the first table row starting with ``label`` after ``section_marker``."""
    tail = md[md.index(section_marker) :]
    for line in tail.splitlines():
        if line.startswith(f"| {label} |"):
            return [c.strip() for c in line.strip("|").split("|")][1:]
    raise AssertionError(f"no row {label!r} after {section_marker!r}")


def test_header_states_suite_model_and_data(rendered):
    _, md = rendered
    assert md.startswith("# lukv-bench report: synthetic-suite")
    assert "`tiny`" in md
    assert "**offline generated QA (synthetic test data)**" in md
    assert "**offline needle v1**" in md
    assert "torn" in md or "Skipped 1" in md


def test_score_table_means_by_hand(rendered):
    _, md = rendered
    qa = md[md.index("## Task `qa`") : md.index("## Task `needle`")]
    # snapkv @ 0.1 = mean(0.8, 0.6, 0.7, 0.5) = 0.65 ; FullKV = mean(1, 1, .5, 1) = 0.875
    means = [c.split(" [")[0] for c in _row(qa, "### Mean score", "snapkv")]
    assert means == ["0.650", "0.700", "0.600"]
    assert [c.split(" [")[0] for c in _row(qa, "### Mean score", "**FullKV (reference)**")] == ["0.875"] * 3
    # continuous scores: BCa bootstrap; a constant cell has no interval
    assert "BCa bootstrap interval" in qa
    assert _row(qa, "### Mean score", "layer-uncertainty") == ["0.300", "0.700", "0.800"]
    lo, hi = map(float, _row(qa, "### Mean score", "snapkv")[0].split(" [")[1].rstrip("]").split(", "))
    assert 0.5 <= lo < 0.65 < hi <= 0.8  # a bootstrap interval of the mean of 0.8, 0.6, 0.7, 0.5 (twice)
    assert "Samples per cell: 8 (every cell)." in qa
    # binary scores (needle): Wilson intervals; FullKV is 1.0 on all 6 samples
    needle = md[md.index("## Task `needle`") :]
    assert "Wilson score interval" in needle
    assert _row(needle, "### Mean score", "**FullKV (reference)**")[0] == "1.000 [0.610, 1.000]"
    assert "| policy | 0.1 | 0.2 | 0.4 |" in qa


def test_fidelity_and_cost_tables(rendered):
    _, md = rendered
    qa = md[md.index("## Task `qa`") : md.index("## Task `needle`")]
    # KL for layer-uncertainty at 0.1 = 0.9 * 0.5 = 0.45 ; agreement = 0.6
    assert _row(qa, "### Fidelity", "layer-uncertainty")[0] == "0.450 / 0.600"
    assert _row(qa, "### Fidelity", "snapkv")[2] == "0.600 / 0.900"
    # memory ratio = budget ; latency = (0.01 + 0.1) / 0.2 = 0.55
    assert _row(qa, "### Cost", "pyramidkv") == ["0.100 / 0.550", "0.200 / 0.550", "0.400 / 0.550"]


def test_findings_state_loss_tie_and_win(rendered):
    _, md = rendered
    qa = md[md.index("## Task `qa`") : md.index("## Task `needle`")]
    findings = qa[qa.index("### Findings") :]
    line = next(ln for ln in findings.splitlines() if "layer-uncertainty vs snapkv" in ln)
    assert "family: task `qa`, every policy × budget vs layer-uncertainty" in line
    assert "1 significant win, 1 significant loss, 1 budget without a significant difference" in line
    # 8 of 8 samples the same way: exact p = 2/256; Holm over the 6 tests of the table, 5 of them 8-0
    assert "**loses** at 0.1 (0.300 vs 0.650, -0.350, 0–8 samples, p = 0.008, Holm-adjusted p = 0.047)" in line
    assert "no significant difference at 0.2 (+0.000, 0–0 samples, p = 1.000, Holm-adjusted p = 1.000)" in line
    assert "wins at 0.4 (0.800 vs 0.600, +0.200, 8–0 samples" in line
    # highest mean per budget: snapkv at 0.1, a tie at 0.2 (called a tie), pyramidkv at 0.4
    assert "Highest mean score per budget" in findings and "Best" not in findings
    assert "0.1: snapkv 0.650" in findings
    assert re.search(r"0\.2: tie between snapkv and layer-uncertainty at 0\.700", findings)
    assert "0.4: pyramidkv 0.900" in findings
    assert "layer-uncertainty vs pyramidkv" in findings


def test_near_zero_fullkv_is_flagged(tmp_path):
    recs = [_record("hard", f"h{i}", "full", None, 0.0) for i in range(3)]
    recs += [_record("hard", f"h{i}", "snapkv", 0.2, 0.0) for i in range(3)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    md = render_report(tmp_path).read_text()
    assert "FullKV itself scores 0.000" in md
    assert "says little about compression" in md


def test_plots_are_valid_pngs_and_linked(rendered):
    out, md = rendered
    pngs = sorted((out / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    for stem in ("qa", "needle"):
        for kind in ("score", "kl", "layers"):
            assert f"{stem}_{kind}.png" in names
    assert "needle_heatmap.png" in names
    assert "qa_heatmap.png" not in names  # qa samples carry no depth/length
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert len(data) > 5_000, p
        assert f"](plots/{p.name})" in md


def test_torn_last_line_is_tolerated(tmp_path):
    _write_results(tmp_path, torn=True)
    records, skipped = load_results(tmp_path / "results.jsonl")
    assert skipped == 1
    assert len(records) == 8 * 10 + 6 * (1 + 3 * 3)
    assert {s.task for s in summarize(records)} == {"qa", "needle"}


def test_duplicates_keep_last_and_missing_file_errors(tmp_path):
    a = _record("qa", "s", "snapkv", 0.1, 0.0)
    b = _record("qa", "s", "snapkv", 0.1, 1.0)
    (tmp_path / "results.jsonl").write_text(json.dumps(a) + "\n" + json.dumps(b) + "\n")
    records, _ = load_results(tmp_path / "results.jsonl")
    assert [r["score"] for r in records] == [1.0]
    with pytest.raises(UserError, match="results.jsonl"):
        render_report(tmp_path / "nowhere")


def test_token_budgets_and_no_full(tmp_path):
    recs = [_record("qa", f"s{i}", "snapkv", {"tokens": 128}, 0.5) for i in range(2)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    md = render_report(tmp_path).read_text()
    assert "| policy | 128 tok |" in md
    assert "No FullKV reference" in md


def test_paired_differences_mark_significance(rendered):
    _, md = rendered
    qa = md[md.index("## Task `qa`") : md.index("## Task `needle`")]
    # layer-uncertainty - snapkv per sample at 0.4: +0.2 on all 8 samples: exact sign-flip p = 2/2**8,
    # Holm over the 6 tests of the table (5 of them 8-0 or 0-8) -> 6 * 0.0078 = 0.047: significant
    row = _row(qa, "### Paired difference to layer-uncertainty", "snapkv")
    assert row[2] == "-0.200 (0–8; p 0.008, adj 0.047)*"
    assert row[1] == "+0.000 (0–0; p 1.000, adj 1.000)"
    assert "the 6 tests of this table (task `qa`, every policy × budget vs layer-uncertainty)" in qa
    # vs FullKV: pyramidkv at 0.4 is 0.9 on every sample vs FullKV (1, 1, .5, 1, ...): 2-6, not significant
    full_row = _row(qa, "### Paired difference to FullKV", "pyramidkv")
    assert full_row[2].startswith("+0.025 (2–6;") and not full_row[2].endswith("*")
    # 0.1 vs FullKV: below on all 8 samples (p = 0.0078), but 9 tests of that p in the table: 9 * p = 0.07
    assert full_row[0] == "-0.675 (0–8; p 0.008, adj 0.070)"
    assert "the 9 tests of this table (task `qa`, every policy × budget vs FullKV)" in qa


def test_needle_paired_tests_are_exact_sign_tests(rendered):
    _, md = rendered
    needle = md[md.index("## Task `needle`") :]
    assert "exact sign test on the samples where the two differ" in needle
    # with 6 samples no difference can reach p < 0.05 after Holm over 9 tests: no star anywhere
    table = needle[needle.index("### Paired difference to FullKV") : needle.index("### Fidelity")]
    assert "*" not in table.replace("* = significant", "")


def test_paired_section_only_when_the_suite_names_a_proposed_policy(tmp_path):
    _write_results(tmp_path, proposed=None)
    md = render_report(tmp_path).read_text()
    assert "### Paired difference to FullKV" in md
    assert "### Paired difference to layer-uncertainty" not in md and "layer-uncertainty vs" not in md
    cells = json.loads((tmp_path / "summary.json").read_text())["cells"]
    assert all(c["proposed"] is None and c["diff_vs_proposed"] is None for c in cells)
    assert any(c["diff_vs_full"] is not None for c in cells)


def test_report_setting_picks_proposed_and_rivals(tmp_path):
    _write_results(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"suite": {"name": "s", "report": {
        "proposed": "pyramidkv", "rivals": ["snapkv"]}}}))
    md = render_report(tmp_path).read_text()
    assert "pyramidkv vs snapkv (paired on the same samples" in md
    assert "layer-uncertainty vs" not in md and "### Paired difference to pyramidkv" in md


def test_pairing_and_holm_flags():
    from lukv_bench.report.summary import Paired, adjust_family

    pair = Paired.of({"a": 1.0, "b": 1.0, "c": 0.0}, {"a": 0.0, "b": 0.0, "x": 5.0})
    assert pair.n == 2 and pair.diff == 1.0 and (pair.wins, pair.losses, pair.ties) == (2, 0, 0)
    assert pair.p == 0.5 and pair.p_adj is None and not pair.significant  # 2-0 is nowhere near significant
    assert Paired.of({"a": 1.0}, {"b": 1.0}) is None
    ids = [str(i) for i in range(12)]
    strong = Paired.of(dict.fromkeys(ids, 1.0), dict.fromkeys(ids, 0.0))  # 12-0: p = 2 / 4096
    weak = Paired.of(dict.fromkeys(ids[:8], 1.0) | dict.fromkeys(ids[8:], 0.0), dict.fromkeys(ids, 0.0))  # 8-0
    adjust_family([strong, weak] + [Paired.of({"a": 0.0}, {"a": 0.0}) for _ in range(26)], "t")
    assert strong.significant and strong.family == "t" and abs(strong.p_adj - 28 * 2 / 4096) < 1e-12
    assert weak.p == 2 / 256 and not weak.significant  # 8-0 of 12 is significant alone, not among 28 tests


def test_budget_at_or_below_window_is_flagged(tmp_path):
    recs = [_record("qa", f"s{i}", "full", None, 1.0) for i in range(2)]
    recs += [_record("qa", f"s{i}", "snapkv", {"tokens": 16}, 0.0,
                     meta={"budget_warning": "a budget of 16 tokens ... at or below the observation window"})
             for i in range(2)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    md = render_report(tmp_path).read_text()
    assert "Budget 16 tok is at or below the observation window" in md


def test_each_policy_pairs_with_the_fullkv_of_its_own_run_setting() -> None:
    """After --add-settings (here: another window), a policy is compared with the FullKV run under the same
    settings, not with FullKV records of other settings merged together."""
    from lukv_bench.report.summary import summarize

    recs = []
    for i in range(8):
        sid = f"s{i}"
        recs.append(_record("t", sid, "full", None, 1.0, setting="fa", run_setting="A"))
        recs.append(_record("t", sid, "snapkv", 0.2, 1.0, setting="sa", run_setting="A"))
        recs.append(_record("t", sid, "full", None, 0.0, setting="fb", run_setting="B"))
        recs.append(_record("t", sid, "snapkv", 0.2, 0.0, setting="sb", run_setting="B"))
    (s,) = summarize(recs)
    diffs = {p: s.cell(p, s.budgets[0]).vs_full for p in s.policies}
    assert set(diffs) == {"snapkv@sa", "snapkv@sb"}
    assert all(d.diff == 0 and d.wins == 0 and d.losses == 0 for d in diffs.values()), diffs


# -- summary.csv / summary.json / cost.csv ---------------------------------------------------------------------


def test_summary_csv_and_json_hold_every_cell(rendered):
    import csv

    from lukv_bench.report.tables import CELL_COLUMNS

    out, _ = rendered
    with (out / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(CELL_COLUMNS)
    doc = json.loads((out / "summary.json").read_text())
    assert doc["columns"]["cells"] == CELL_COLUMNS and len(doc["cells"]) == len(rows)
    # qa: the FullKV reference and 3 policies x 3 budgets; needle: the same
    assert [(r["task"], r["role"]) for r in rows].count(("qa", "policy")) == 9
    ref = next(r for r in doc["cells"] if r["task"] == "qa" and r["role"] == "reference")
    assert ref["policy"] == "full" and ref["n"] == 8 and ref["mean_score"] == pytest.approx(0.875)
    assert ref["diff_vs_full"] is None and ref["latency_ratio"] is None
    cell = next(r for r in doc["cells"] if (r["task"], r["policy"], r["budget"]) == ("qa", "snapkv", "0.1"))
    assert cell["mean_score"] == pytest.approx(0.65) and cell["ci_method"] == "bca"
    assert cell["ci_low"] < 0.65 < cell["ci_high"]
    # the same numbers as the report's paired tables (vs FullKV: 2-6; vs layer-uncertainty: 8-0)
    md = (out / "report.md").read_text()
    qa = md[md.index("## Task `qa`") : md.index("## Task `needle`")]
    diff, wins, losses, p, adj = re.match(r"(\S+) \((\d+)–(\d+); p (\S+), adj (\S+)\)",
                                          _row(qa, "### Paired difference to FullKV", "snapkv")[0]).groups()
    counts = (cell["wins_vs_full"], cell["losses_vs_full"], cell["ties_vs_full"])
    assert counts == (int(wins), int(losses), 0) == (2, 6, 0)
    assert f"{cell['diff_vs_full']:+.3f}" == diff and cell["diff_vs_full"] == pytest.approx(0.65 - 0.875)
    assert (f"{cell['p_vs_full']:.3f}", f"{cell['p_holm_vs_full']:.3f}") == (p, adj)
    assert cell["p_holm_vs_full"] >= cell["p_vs_full"] and cell["significant_vs_full"] is False
    assert cell["proposed"] == "layer-uncertainty" and cell["diff_vs_proposed"] == pytest.approx(0.35)
    assert cell["significant_vs_proposed"] is True
    assert cell["kv_bytes_ratio"] == pytest.approx(0.1) and cell["latency_ratio"] == pytest.approx(0.55)
    assert cell["kl_mean"] == pytest.approx(0.9)
    same = next(r for r in rows if (r["task"], r["policy"], r["budget"]) == ("qa", "snapkv", "0.1"))
    assert float(same["p_holm_vs_full"]) == pytest.approx(cell["p_holm_vs_full"])
    assert same["significant_vs_full"] == "false" and same["significant_vs_proposed"] == "true"
    needle = next(r for r in rows if r["task"] == "needle" and r["role"] == "reference")
    assert needle["ci_method"] == "wilson" and needle["diff_vs_full"] == ""
    assert not (out / "cost.csv").exists()  # no latency task


def _latency_record(length: int, policy: str, budget, scale: float) -> dict:
    kv = 1000.0 * length * (1.0 if policy == "full" else budget)
    return {"model": "tiny", "task": "cost", "sample_id": f"len-{length}", "policy": policy, "budget": budget,
            "metric": "latency", "context_tokens": length, "kv_bytes": kv, "peak_mem_bytes": 2 * kv,
            "prefill_peak_mem_bytes": 3.0 * length, "prefill_s": 1e-4 * length, "compress_s": 0.001,
            "decode_s": 0.1, "new_tokens": 4, "data_source": "synthetic",
            "meta": {"decode_ms_per_token": scale * length ** 0.5, "tokens_per_s": 10.0, "vs_full": {},
                     "device": "cpu", "threads": 1, "repeats": 1, "warmup": 0}}


def test_growth_exponents_need_three_lengths_and_carry_their_interval(tmp_path):
    lengths = [100, 200, 400, 800]
    recs = [_latency_record(n, "full", 1.0, 1.0) for n in lengths]
    recs += [_latency_record(n, "snapkv", 0.5, 1.0 + 0.1 * (i % 2)) for i, n in enumerate(lengths)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    md = render_report(tmp_path).read_text()
    growth = md[md.index("### Growth with context length"):]
    assert _row(growth, "| setting", "FullKV")[0] == "0.50 [0.50, 0.50], R² 1.00"  # exact: no spread
    noisy = _row(growth, "| setting", "snapkv @ 0.5")[0]
    k, lo, hi = map(float, re.match(r"(\S+) \[(\S+), (\S+)\]", noisy).groups())
    assert lo < 0.5 < hi and k - lo == pytest.approx(hi - k, abs=0.011)
    growth_rows = json.loads((tmp_path / "summary.json").read_text())["growth"]
    fit = next(g for g in growth_rows if g["setting"] == "snapkv @ 0.5" and g["figure"] == "decode_ms")
    assert fit["lengths"] == lengths and fit["k_ci_low"] < fit["k"] < fit["k_ci_high"] and fit["k_se"] > 0
    cost = (tmp_path / "cost.csv").read_text().splitlines()
    assert cost[0].startswith("model,task,policy,budget,setting,context_tokens") and len(cost) == 1 + 8
    # two lengths: no exponent, no extrapolated context, and the report says why
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in recs if r["context_tokens"] <= 200))
    md = render_report(tmp_path).read_text()
    assert "No growth exponent and no longest context: the task measured 2 lengths, a fit needs 3 or more." in md
    assert json.loads((tmp_path / "summary.json").read_text())["growth"] == []


def test_fit_power_spread_shrinks_with_more_lengths():
    from lukv_bench.report.cost import fit_power

    noise = [1.1, 0.9, 1.05, 0.95, 1.1, 0.9]
    ns = [100 * 2**i for i in range(6)]
    few = fit_power(ns[:3], [n * e for n, e in zip(ns, noise[:3])])
    many = fit_power(ns, [n * e for n, e in zip(ns, noise)])
    assert fit_power(ns[:2], [1.0, 2.0]) is None and fit_power([100, 100, 200], [1.0, 2.0, 3.0]) is None
    assert few.k_ci[0] < 1.0 < few.k_ci[1] and many.k_ci[0] < 1.0 < many.k_ci[1]
    assert many.k_ci[1] - many.k_ci[0] < few.k_ci[1] - few.k_ci[0]
    assert fit_power(ns[:3], [5.0, 5.0, 5.0]).k == 0.0


# -- findings at small n, formatting, wall time ----------------------------------------------------------------


def test_no_claims_from_a_single_sample_and_ties_are_ties(tmp_path):
    recs = [_record("one", "s0", "full", None, 1.0)]
    recs += [_record("one", "s0", p, 0.2, 0.0) for p in ("snapkv", "pyramidkv", "layer-uncertainty")]
    recs += [_record("two", f"s{i}", "full", None, 1.0) for i in range(3)]
    recs += [_record("two", f"s{i}", p, 0.2, 0.0) for i in range(3) for p in ("snapkv", "pyramidkv", "streaming")]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    md = render_report(tmp_path).read_text()
    one = md[md.index("## Task `one`"):md.index("## Task `two`")]
    found = one[one.index("### Findings"):]
    assert "Some cells hold a single sample" in found and "(every cell holds 1)" in found
    for claim in ("Highest mean", "Lowest mean KL", "below FullKV", "vs snapkv", "samples;"):
        assert claim not in found, claim
    assert "1 samples" not in md and "Samples per cell: 1 (every cell)." in one
    two = md[md.index("## Task `two`"):]
    assert "0.2: all tied at 0.000, 0% of FullKV" in two and "Cells hold 3 samples" in two
    assert "With 3 pairs no paired test can give p below 0.25" in two


def test_numbers_have_fixed_decimals_and_no_negative_zero():
    from lukv_bench.report.summary import fmt3, fmt_diff, fmt_fixed, fmt_p, plural

    assert fmt3(-0.0001) == "0.000" and fmt_fixed(-0.004, 2) == "0.00" and fmt_fixed(-0.006, 2) == "-0.01"
    assert fmt3(0.45) == "0.450" and fmt3(None) == "—" and fmt_diff(-0.0004) == "+0.000"
    assert [fmt_p(p) for p in (1.0, 0.0078, 0.25, 0.0004, None)] == ["1.000", "0.008", "0.250", "< 0.001", "—"]
    assert plural(1, "sample") == "1 sample" and plural(0, "sample") == "0 samples"
    assert plural(2, "significant loss", "significant losses") == "2 significant losses"


def test_wall_time_from_run_json(tmp_path):
    _write_results(tmp_path)
    md = render_report(tmp_path).read_text()
    assert "- Wall time: not recorded (run.json has no start and end time" in md
    run = json.loads((tmp_path / "run.json").read_text())
    run |= {"started": "2026-01-02T10:00:00+00:00", "finished": "2026-01-02T10:07:12+00:00"}
    (tmp_path / "run.json").write_text(json.dumps(run))
    md = render_report(tmp_path).read_text()
    assert ("- Wall time: 7.2 min (of the last `lukv-bench run` that added records here, 2026-01-02T10:00:00+00:00 "
            "to 2026-01-02T10:07:12+00:00)") in md


def test_markdown_to_html_keeps_structure_and_escapes():
    from lukv_bench.report.html import markdown_to_html

    md = ("# Title <x>\n\n- top **bold**\n  - nested `code`\n- next\n\n## Task `t`\n\n### Mean score\n\n"
          "| policy | 0.1 |\n|---|---:|\n| a & b | 0.5 |\n\n![missing plot](plots/none.png)\n\nline one\nline two\n")
    html = markdown_to_html(md, Path("/nonexistent"))
    assert "<h1>Title &lt;x&gt;</h1>" in html
    assert "<ul><li>top <strong>bold</strong><ul><li>nested <code>code</code></li></ul></li><li>next</li></ul>" in html
    assert '<table class="sortable" data-section="Task t / Mean score">' in html
    assert '<th class="num" scope="col">0.1</th>' in html and '<td class="">a &amp; b</td>' in html
    assert "missing plot (plot file plots/none.png missing)" in html
    assert "<p>line one line two</p>" in html
