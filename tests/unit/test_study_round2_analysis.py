"""docs/study/round2/analyze.py on synthetic results folders: stage 0's counting, eligibility, the pick and its
tie-breaks, the recommended-default check and question 2's verdicts."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "study" / "round2" / "analyze.py"
N = 24  #: samples per family, as in the study
BUDGETS = (0.05, 0.1, 0.2, 0.4)


@pytest.fixture(scope="module")
def an():
    """The script, imported from its path (it lives under docs/, not in a package)."""
    spec = importlib.util.spec_from_file_location("study_round2_analyze", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _rec(task: str, sid: int, policy: str, budget: float, score: float, compress_s: float = 0.01) -> dict:
    return {"model": "m", "task": task, "sample_id": str(sid), "policy": policy, "budget": budget,
            "budget_ratio": budget, "score": score, "metric": "substring", "setting": "s", "run_setting": "r",
            "compress_s": 0.0 if policy == "full" else compress_s}


def _write(folder: Path, records: list[dict]) -> str:
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(folder)


def _ones(k: int) -> list[float]:
    """k successes then failures: two such lists pair up with no sample going the other way."""
    return [1.0] * k + [0.0] * (N - k)


def _full(task: str, scores: list[float]) -> list[dict]:
    return [_rec(task, i, "full", 1.0, s) for i, s in enumerate(scores)]


def _control(task: str, scores: list[float]) -> list[dict]:
    return [_rec(f"{task}:no-context", i, "full", 1.0, s) for i, s in enumerate(scores)]


# -- stage 0 -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage0(an, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stage0")
    shared = (_full("needle", _ones(N)) + _control("needle", _ones(0))
              # FullKV above the control on every sample, but its mean (0.2) is below 0.25 (continuous scores)
              + _full("multivalue", [0.2] * N) + _control("multivalue", [0.0] * N)
              # more wins than losses, not significant
              + _full("vartrack", _ones(10)) + _control("vartrack", _ones(6)[::-1]))
    prompt = (shared + _full("factqa", _ones(20)) + _control("factqa", _ones(0))
              + _full("config", _ones(20)) + _control("config", _ones(0))
              # 6 wins, 0 losses: raw p 0.031, FullKV mean exactly 0.25; Holm over the stage's tests rejects it
              + _full("fewshot", _ones(6)) + _control("fewshot", _ones(0)))
    context = shared + _full("factqa", _ones(20))  # factqa: no control records; config: missing
    out = str(tmp / "stage0")
    counted = an.run_stage0(_write(tmp / "p", prompt), _write(tmp / "c", context), out)
    return an, counted, Path(out + ".md").read_text()


def test_stage0_counts_by_the_sign_test_holm_and_the_mean(stage0) -> None:
    _, counted, text = stage0
    assert counted == {"prompt": ["needle", "factqa", "config"], "context": ["needle"]}
    assert "| context | factqa | 0 |" in text and "no control records" in text
    assert "| context | config |" in text and "family missing from the folder" in text
    row = next(x for x in text.splitlines() if x.startswith("| prompt | multivalue"))
    assert "24–0" in row and f"FullKV mean < {0.25:g}" in row and "Holm" not in row.split("|")[-2]
    row = next(x for x in text.splitlines() if x.startswith("| prompt | fewshot"))
    assert "6–0" in row and "| 0.031 |" in row and "Holm-adjusted p ≥" in row and "FullKV mean" not in row
    assert "- `prompt`: needle, factqa, config" in text and "- `context`: needle" in text


def test_stage0_holm_runs_over_every_family_protocol_test(stage0) -> None:
    an, _, _ = stage0
    # 6 families in the prompt folder + 3 with a test in the context one (factqa has no control there)
    assert "Holm over the 9 family × protocol tests" in stage0[2]


def test_stage0_prints_the_counted_sets(an, tmp_path, capsys) -> None:
    p = _write(tmp_path / "p", _full("needle", _ones(N)) + _control("needle", _ones(0)))
    c = _write(tmp_path / "c", _full("needle", _ones(3)) + _control("needle", _ones(0)))
    assert an.main(["stage0", p, c, "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.splitlines() == ["prompt: needle", "context: "]


def test_stage0_reports_a_folder_not_run_yet(an, tmp_path) -> None:
    p = _write(tmp_path / "p", _full("needle", _ones(N)) + _control("needle", _ones(0)))
    counted = an.run_stage0(p, str(tmp_path / "not-yet"), str(tmp_path / "s"))
    assert counted == {"prompt": ["needle"], "context": []}
    assert "| context | needle | 0 |" in (tmp_path / "s.md").read_text()


# -- stage 1 -----------------------------------------------------------------------------------------------------

# successes out of 24 per budget (FullKV scores 1 on every sample, so a ratio is successes / 24); a policy's
# entry {budget: k} overrides the base; ("p"|"c", family, budget) entries override one cell
BASE = {0.05: 6, 0.1: 12, 0.2: 18, 0.4: 20}
SEARCH = {
    "random": {0.05: 0, 0.1: 0, 0.2: 0, 0.4: 0},
    "snapkv": {},
    "layer-uncertainty": {},
    "lu-k15": {0.1: 14, 0.2: 22},  # best at 0.2 (0.917), cheap
    "global-k15": {0.1: 14, 0.2: 22},  # identical scores, slower: loses the compress_s tie-break
    "heads-k15": {0.1: 13, 0.2: 22},  # tied at 0.2, lower at 0.1
    # 0.0104 below the best at 0.2 (within 0.02), the best at 0.1: the pick
    "critical-plus": {0.1: 16, 0.2: 22, ("p", "multikey", 0.2): 21},
    "expected-attention": {0.1: 20, 0.2: 21},  # 0.042 below the best at 0.2: no tie, whatever its 0.1
    "kvzip-plus": {0.1: 24, 0.2: 24, ("c", "needle", 0.4): 0},  # the best at 0.2, significantly below snapkv once
}
COST = {"global-k15": 0.02, "critical-plus": 0.03, "kvzip-plus": 0.5}


def _count(policy: str, proto: str, family: str, budget: float) -> int:
    spec = SEARCH[policy]
    return spec.get((proto, family, budget), spec.get(budget, BASE[budget]))


def _search_records(proto: str, families: list[str], extra: dict | None = None) -> list[dict]:
    recs = []
    for fam in families:
        recs += _full(fam, _ones(N))
        for policy in SEARCH:
            for b in BUDGETS:
                k = (extra or {}).get((policy, fam, b), _count(policy, proto, fam, b))
                recs += [_rec(fam, i, policy, b, s, COST.get(policy, 0.01)) for i, s in enumerate(_ones(k))]
    return recs


@pytest.fixture(scope="module")
def search(an, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    prompt = _search_records("p", ["needle", "multikey"])
    # streaming: in the prompt folder only (on needle only), as good as snapkv
    prompt += [_rec("needle", i, "streaming", b, s) for b in BUDGETS for i, s in enumerate(_ones(BASE[b]))]
    # context: multikey is in the folder but not counted; heads-k15 fails there on every sample (no effect)
    context = _search_records("c", ["needle", "multikey"], {("heads-k15", "multikey", b): 0 for b in BUDGETS})
    out = str(tmp / "search")
    counted = {"prompt": ["needle", "multikey"], "context": ["needle"]}
    res = an.run_search(_write(tmp / "p", prompt), _write(tmp / "c", context), counted, out)
    return an, res, Path(out + ".md").read_text(), out


def test_eligibility(search) -> None:
    _, res, text, _ = search
    assert set(res.ineligible) == {"random", "kvzip-plus"}
    assert any("context/needle@0.4" in w for w in res.ineligible["kvzip-plus"])
    assert res.ineligible["random"][0].startswith("the floor")
    assert "heads-k15" in res.eligible  # its failures are on a family that does not count in that protocol
    # 8 candidates besides snapkv on 3 counted families x 4 budgets, streaming on the 4 cells where it ran
    assert "One family of 100 tests" in text


def test_the_pick_follows_the_tie_rule(search) -> None:
    _, res, text, _ = search
    assert res.pick == "critical-plus"  # within 0.02 of the best, the best at 0.1
    assert set(res.tied) == {"critical-plus", "lu-k15", "global-k15", "heads-k15"}
    assert "expected-attention" not in res.tied and "kvzip-plus" not in res.figures
    assert res.figures["lu-k15"][0] == pytest.approx(22 / 24)
    assert res.figures["critical-plus"][0] == pytest.approx(((22 + 21) / 48 + 22 / 24) / 2)
    # without the pick: lu-k15 and global-k15 tie at 0.2 and 0.1; the cheaper one (median compress_s) wins
    assert res.runner_up == "lu-k15"
    assert "streaming" in res.incomplete  # no context records
    assert "`context`: streaming has no cell on some counted family" in text
    assert "- Pick: **critical-plus**" in text and "- Runner-up: **lu-k15**" in text


def test_search_tables_costs_and_plots(search) -> None:
    _, _, text, out = search
    assert "### `prompt` (families: needle, multikey)" in text and "### `context` (families: needle)" in text
    # twice snapkv's median compress_s in both protocols, beside R_p(c, 0.2)
    assert "| global-k15 | 2.00 | 0.917 | 2.00 | 0.917 |" in text
    for name in ("prompt-needle", "prompt-multikey", "context-needle"):
        assert Path(f"{out}-{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert not Path(f"{out}-context-multikey.png").exists()


def test_apply_rule_tie_breaks(an) -> None:
    assert an.apply_rule({}) == (None, [])
    pick, tied = an.apply_rule({"a": (0.90, 0.5, 1.0), "b": (0.885, 0.6, 2.0), "c": (0.87, 0.9, 0.1)})
    assert (pick, tied) == ("b", ["b", "a"])  # c is 0.03 below the best: no tie
    pick, _ = an.apply_rule({"a": (0.90, 0.5, 1.0), "b": (0.90, 0.5, 0.5)})
    assert pick == "b"  # equal at 0.2 and 0.1: the smaller median compress_s
    pick, tied = an.apply_rule({"a": (0.90, 0.5, 1.0), "b": (0.88, 0.7, None)})
    assert pick == "b" and tied == ["b", "a"]  # exactly 0.02 below still ties


def test_search_without_snapkv_reports_it_missing(an, tmp_path) -> None:
    recs = _full("needle", _ones(N)) + [_rec("needle", i, "lu-k15", 0.2, 1.0) for i in range(N)]
    p, c = _write(tmp_path / "p", recs), _write(tmp_path / "c", recs)
    res = an.run_search(p, c, {"prompt": ["needle"], "context": ["needle"]}, str(tmp_path / "s"), plots=False)
    assert res.pick is None and res.eligible == []
    assert "snapkv is missing from both folders" in (tmp_path / "s.md").read_text()


# -- stage 2 -----------------------------------------------------------------------------------------------------

HELD_BASE = 12
HELD = {
    "snapkv": {}, "snapkv-k15": {}, "layer-uncertainty-plus": {}, "defensive-uniform": {},
    "layer-uncertainty": {("p", "needle", 0.2): 24},  # 12 wins on one cell: beats uniform
    "pyramidkv": {("p", "needle", 0.2): 24, ("p", "multikey", 0.4): 0},  # above on one cell, below on another
    "adakv": {("c", "needle", 0.1): 18},  # 6 wins, raw p 0.031: not significant after Holm
    "lu-k15": {("p", "multikey", 0.2): 0},  # below on one cell
    # above on a counted cell; below on vartrack, which is in the prompt folder but does not count there
    "layer-defensivekv": {("c", "needle", 0.4): 24, ("p", "vartrack", 0.2): 0},
    # heads-k15: not run
}


def _held_records(proto: str, families: list[str]) -> list[dict]:
    recs = []
    for fam in families:
        recs += _full(fam, _ones(N))
        for policy, spec in HELD.items():
            for b in BUDGETS:
                recs += [_rec(fam, i, policy, b, s) for i, s in enumerate(_ones(spec.get((proto, fam, b),
                                                                                         HELD_BASE)))]
    return recs


@pytest.fixture(scope="module")
def held(an, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("held")
    p = _write(tmp / "p", _held_records("p", ["needle", "multikey", "vartrack"]))
    c = _write(tmp / "c", _held_records("c", ["needle"]))
    counted = {"prompt": ["needle", "multikey"], "context": ["needle"]}
    return an, p, c, counted, tmp


@pytest.fixture()
def quick_ci(an, monkeypatch):
    """The headline intervals are stats.mean_ratio_ci's (tested there): a stub keeps these tests fast."""
    monkeypatch.setattr(an, "mean_ratio_ci", lambda groups: (0.0, 1.0))


def test_question_2_verdicts(held, quick_ci) -> None:
    an, p, c, counted, tmp = held
    res = an.run_heldout(p, c, counted, "layer-uncertainty", str(tmp / "h1"))
    verdicts = {(v.adaptive, v.uniform): v for v in res.pairs}
    assert [k for k in verdicts] == list(an.PAIRS)
    assert verdicts[("layer-uncertainty", "snapkv")].verdict == "beats uniform"
    assert verdicts[("pyramidkv", "snapkv")].verdict == "loses"
    assert verdicts[("adakv", "snapkv")].verdict == "no significant difference"
    assert verdicts[("lu-k15", "snapkv-k15")].verdict == "loses"
    assert verdicts[("layer-uncertainty-plus", "snapkv-k15")].verdict == "no significant difference"
    assert verdicts[("heads-k15", "snapkv-k15")].verdict.startswith("missing: heads-k15")
    assert verdicts[("layer-defensivekv", "defensive-uniform")].verdict == "beats uniform"
    # one Holm family: 6 pairs that ran x 12 counted cells
    assert sum(len(v.tests) for v in res.pairs) == 72
    above = [t.where() for t in verdicts[("layer-uncertainty", "snapkv")].tests if t.above]
    assert len(above) == 1 and above[0].startswith("prompt/needle@0.2 (+0.500, 12–0")
    adakv = next(t for t in verdicts[("adakv", "snapkv")].tests if t.p < 0.05)
    assert adakv.p == pytest.approx(2 / 2**6) and adakv.p_adj >= 0.05
    text = (tmp / "h1.md").read_text()
    assert "One family of 72 tests" not in text and "family of 72 tests (all pairs)" in text


def test_recommended_default(held, quick_ci) -> None:
    an, p, c, counted, tmp = held
    res = an.run_heldout(p, c, counted, "layer-uncertainty", str(tmp / "h2"))
    assert res.becomes_default  # 0.625 against 0.5 and 0.5
    assert res.figures_at["layer-uncertainty"] == pytest.approx(((1 + 0.5) / 2 + 0.5) / 2)
    res = an.run_heldout(p, c, counted, "lu-k15", str(tmp / "h3"))
    assert not res.becomes_default and "lu-k15 0.375 < snapkv 0.500" in res.reason
    text = (tmp / "h3.md").read_text()
    assert "**layer-uncertainty-plus stays the default**" in text
    res = an.run_heldout(p, c, counted, "adakv", str(tmp / "h4"))
    assert res.becomes_default and res.figures_at["adakv"] == res.figures_at["snapkv"]  # "at least": ties count


def test_heldout_tables(held, quick_ci) -> None:
    an, p, c, counted, tmp = held
    an.run_heldout(p, c, counted, "layer-uncertainty", str(tmp / "h5"), runner_up="heads-k15")
    text = (tmp / "h5.md").read_text()
    assert "### `prompt`, counted: needle, multikey" in text
    assert "### `prompt`, every family of the folder: needle, multikey, vartrack" in text
    assert "**Missing from both folders:** heads-k15." in text
    assert "| layer-uncertainty | 0.500 [0.00, 1.00] | 0.500 [0.00, 1.00] | 0.750 [0.00, 1.00] |" in text
    assert "| prompt | needle | yes | 1.000 | 1.000 | 1.000 | +0.100 |" in text
    assert "| prompt | vartrack | no | 1.000 | 0.500 | 0.500 | -0.400 |" in text


def test_headline_interval_is_the_paired_bca(an, held) -> None:
    _, p, _, _, _ = held
    folder, _ = an.load_folder(p, proposed=None)
    cell = an.headline_cell(folder, ["needle"], "snapkv", "0.2")
    lo, hi = (float(x) for x in re.fullmatch(r"0\.500 \[(\S+), (\S+)\]", cell).groups())
    assert lo < 0.5 < hi
    cell = an.headline_cell(folder, ["needle", "multikey"], "lu-k15", "0.2")
    assert cell.startswith("0.250")
    assert an.headline_cell(folder, ["needle"], "heads-k15", "0.2") == "missing"


def test_pairs_are_docs_study_md_table(an) -> None:
    text = (ROOT / "docs" / "study.md").read_text()
    section = text.split("**Question 2, pre-registered pairs**")[1].split("An adaptive allocation")[0]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, flags=re.M)
    assert tuple(rows) == an.PAIRS
