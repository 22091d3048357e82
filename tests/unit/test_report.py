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
