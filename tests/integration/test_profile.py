"""The per-layer attention profile (``lukv-bench profile``): each measure against a plain reference on
random inputs and the tiny random model, the allocation comparison, the summaries, and the command
line (files written, exit code 2 naming the option for bad input)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from lukv_bench.kernels.ops import window_stats
from support import TINY

from lukv_bench.cli import main
from lukv_bench.profile.allocations import allocation_policies
from lukv_bench.profile.answers import answer_span
from lukv_bench.profile.measures import (
    TailAttention,
    WindowAttention,
    ablation_drops,
    answer_log_likelihood,
    head_mass_budgets,
    output_budgets,
    selection_ranks,
)
from lukv_bench.profile.options import ProfileSettings, parse_fractions
from lukv_bench.profile.per_sample import profile_sample
from lukv_bench.profile.stats import spearman, summarize
from lukv_bench.runtime.contract import Budget, LayerStats
from lukv_bench.runtime.engine import Engine, EngineSettings
from lukv_bench.runtime.prompts import build_prompt
from lukv_bench.runtime.selection import select
from lukv_bench.sample import Sample

ROW_WITH_ANSWER = {
    "id": "fox",
    "context": "Many animals live in the forest. The red fox keeps its den under the old oak 4417. " * 3,
    "question": "Which number is under the old oak?",
    "answers": ["4417"],
}
ROW_WITHOUT_ANSWER = {
    "id": "none",
    "context": "The river runs past the mill and into the sea. " * 4,
    "question": "What colour is the mill?",
    "answers": ["blue"],
}


def _random_window(seed: int, n_q: int = 4, n_kv: int = 2, w: int = 6, n: int = 40, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_q, w, d, generator=g) * 1.5
    k = torch.randn(n_kv, n, d, generator=g) * 1.5
    v = torch.randn(n_kv, n, d, generator=g)
    return q, k, v


def _reference_window_probs(q: torch.Tensor, k: torch.Tensor, scaling: float) -> list[list[list[float]]]:
    """Causal softmax of every window query over all keys, one plain row at a time: [Hq][w][n]."""
    n_q, w, _ = q.shape
    n_kv, n, _ = k.shape
    group = n_q // n_kv
    out = []
    for h in range(n_q):
        rows = []
        for i in range(w):
            visible = n - w + i + 1
            logits = [float(q[h, i].double() @ k[h // group, j].double()) * scaling for j in range(visible)]
            top = max(logits)
            e = [math.exp(x - top) for x in logits]
            rows.append([x / sum(e) for x in e] + [0.0] * (n - visible))
        out.append(rows)
    return out


# ------------------------------------------------------------------------------------------ LMBA


@pytest.mark.parametrize("tau", [0.5, 0.9, 0.95])
def test_lmba_matches_a_direct_softmax(tau: float) -> None:
    q, k, v = _random_window(1)
    n_q, w, _ = q.shape
    n_kv, n, _ = k.shape
    scaling = 0.35
    win_sum, win_sumsq, win_ent = window_stats(q, k, scaling, prefix_len=n - w)
    layer = LayerStats(layer=0, keys=k, values=v, win_sum=win_sum, win_sumsq=win_sumsq, win_entropy=win_ent, window=w)
    got = head_mass_budgets(layer, tau, n_kv)

    probs = _reference_window_probs(q, k, scaling)
    mba = []
    for h in range(n_q):
        mean = [sum(probs[h][i][j] for i in range(w)) / w for j in range(n)]
        acc, count = 0.0, 0
        for x in sorted(mean, reverse=True):
            acc += x
            count += 1
            if acc >= tau * sum(mean) - 1e-12:
                break
        mba.append(count)
    group = n_q // n_kv
    want = [sum(mba[s * group : (s + 1) * group]) / group for s in range(n_kv)]
    assert got.tolist() == pytest.approx(want)


# ------------------------------------------------------------------------------------------ LMBO


def test_window_attention_output_equals_softmax_over_the_kept_keys() -> None:
    q, k, v = _random_window(2)
    n_q, w, d = q.shape
    n_kv, n, _ = k.shape
    scaling = 0.35
    attn = WindowAttention.build(q, k, v, scaling)
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(n_kv, n, generator=g) < 0.5
    keep[:, n - w :] = True  # the window: every query sees at least itself
    got = attn.output(keep)
    group = n_q // n_kv
    for h in range(n_q):
        s = h // group
        for i in range(w):
            idx = [j for j in range(n - w + i + 1) if keep[s, j]]
            logits = torch.tensor([float(q[h, i].double() @ k[s, j].double()) * scaling for j in idx])
            want = torch.softmax(logits.double(), 0) @ v[s, idx].double()
            torch.testing.assert_close(got[s, h % group, i], want)
    full = attn.output()
    probs = torch.tensor(_reference_window_probs(q, k, scaling), dtype=torch.float64)
    torch.testing.assert_close(full.reshape(n_q, w, d), torch.einsum("hwn,hnd->hwd", probs,
                                                                      v.double().repeat_interleave(group, 0)))


def test_selection_ranks_give_the_kept_sets_of_select() -> None:
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(3, 50, generator=g)
    ranks = selection_ranks(scores, window=5)
    for budget in (1, 5, 6, 17, 50):
        kept = select(scores, [budget] * 3, sinks=0, window=5)
        for h in range(3):
            seg = kept.indices[kept.cu_seqlens[h] : kept.cu_seqlens[h + 1]]
            assert set(seg.tolist()) == set(torch.nonzero(ranks[h] < budget).flatten().tolist())


def _cosine_at(attn: WindowAttention, ranks: torch.Tensor, budget: int, head: int) -> float:
    full = attn.output()
    kept = attn.output(ranks < budget)
    return float(torch.nn.functional.cosine_similarity(kept, full, dim=-1).mean(dim=(1, 2))[head])


@pytest.mark.parametrize("seed", [5, 6])
def test_lmbo_is_monotone_in_the_threshold_and_the_full_context_at_one(seed: int) -> None:
    q, k, v = _random_window(seed)
    w, n = q.shape[1], k.shape[1]
    attn = WindowAttention.build(q, k, v, 0.35)
    g = torch.Generator().manual_seed(seed)
    ranks = selection_ranks(torch.rand(k.shape[0], n, generator=g), w)
    thresholds = [0.3, 0.8, 0.95, 0.99, 0.999, 1.0]
    got = output_budgets(attn, ranks, thresholds, w)
    assert got.shape == (len(thresholds), k.shape[0])
    assert bool((got[1:] >= got[:-1]).all())
    assert got[-1].tolist() == [n] * k.shape[0]
    assert bool((got >= w).all())
    # the binary search's guarantee: the budget found meets c, one token less does not
    for ci, c in enumerate(thresholds[:-1]):
        for h in range(k.shape[0]):
            b = int(got[ci, h])
            if b < n:
                assert _cosine_at(attn, ranks, b, h) >= c
            if b > w:
                assert _cosine_at(attn, ranks, b - 1, h) < c


# -------------------------------------------------------------------------------------- ablation


def _tiny_prefill(tiny, n: int = 90, window: int = 8):
    engine = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=window))
    ids = torch.randint(3, 250, (1, n), generator=torch.Generator().manual_seed(7))
    return engine, ids, engine.prefill(ids)


def test_answer_log_likelihood_equals_a_plain_forward(tiny) -> None:
    engine, ids, pre = _tiny_prefill(tiny)
    n, start, answer = ids.shape[1], 70, [11, 42, 99]
    handler = TailAttention([k[:, :, :start] for k in pre.keys], [v[:, :, :start] for v in pre.values])
    got = answer_log_likelihood(tiny.model, start, ids[0, start:].tolist(), answer, handler)
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.cat([ids, torch.tensor([answer])], dim=1)).logits[0, n - 1 : n + 2]
    want = torch.log_softmax(logits.double(), -1)[torch.arange(3), torch.tensor(answer)].mean()
    assert float(got[0]) == pytest.approx(float(want), abs=1e-4)


def test_recorded_window_queries_reproduce_the_capture(tiny) -> None:
    engine, ids, pre = _tiny_prefill(tiny)
    n, w, start = ids.shape[1], 8, 75
    rec = TailAttention([k[:, :, :start] for k in pre.keys], [v[:, :, :start] for v in pre.values], record=(n - w, n))
    answer_log_likelihood(tiny.model, start, ids[0, start:].tolist(), [5], rec)
    for i, layer in enumerate(pre.stats.layers):
        win_sum, _, _ = window_stats(rec.queries[i], layer.keys, rec.scalings[i], prefix_len=n - w)
        torch.testing.assert_close(win_sum, layer.win_sum, atol=1e-4, rtol=1e-4)


def test_ablation_is_zero_when_nothing_is_hidden_and_batching_does_not_matter(tiny) -> None:
    engine, ids, pre = _tiny_prefill(tiny)
    start, answer = 60, [17, 23]
    pk, pv = [k[:, :, :start] for k in pre.keys], [v[:, :, :start] for v in pre.values]
    tail = ids[0, start:].tolist()
    base = float(answer_log_likelihood(tiny.model, start, tail, answer, TailAttention(pk, pv))[0])
    nothing = ablation_drops(tiny.model, pk, pv, tail, answer, torch.empty(0, dtype=torch.long), 70, base)
    assert nothing.abs().max() < 1e-6
    span = torch.arange(20, 45)
    one_by_one = ablation_drops(tiny.model, pk, pv, tail, answer, span, 70, base, batch=1)
    batched = ablation_drops(tiny.model, pk, pv, tail, answer, span, 70, base, batch=3)
    torch.testing.assert_close(one_by_one, batched, atol=1e-5, rtol=1e-4)
    assert one_by_one.abs().max() > 1e-4  # hiding 25 of 70 context tokens changes the answer's likelihood


def test_answer_span_finds_the_answer_tokens_of_the_context(tiny) -> None:
    sample = Sample(**{k: ROW_WITH_ANSWER[k] for k in ("id", "context", "question", "answers")})
    ids = build_prompt(tiny.tokenizer, sample, chat=False)
    answer, positions = answer_span(tiny.tokenizer, sample, False, ids.context)
    assert answer == "4417"
    assert tiny.tokenizer.decode([ids.context[p] for p in positions]).replace(" ", "") == "4417" * 3
    missing = Sample(id="x", context="The code 44170 is not the answer.", question="?", answers=["4417"])
    assert answer_span(tiny.tokenizer, missing, False, build_prompt(tiny.tokenizer, missing, False).context) is None


# ---------------------------------------------------------------------------------- whole sample


def test_profile_sample_measures_and_allocations(tiny) -> None:
    engine = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=8))
    settings = ProfileSettings(taus=(0.5, 0.9), cos_thresholds=(0.9, 0.99), budget=0.3, window=8)
    policies = allocation_policies()
    labels = [p.label for p in policies]
    assert labels[0] == "uniform" and {"layer-uncertainty", "pyramidkv", "cake", "adakv"} <= set(labels)
    sample = Sample(**{k: ROW_WITH_ANSWER[k] for k in ("id", "context", "question", "answers")})
    sp = profile_sample(engine, "t", sample, False, settings, policies[0].policy.scorer, policies)
    n_layers, n = tiny.model.config.num_hidden_layers, sp.prompt_tokens
    assert sp.lmba.shape == (2, n_layers, 2) and sp.lmbo.shape == (2, n_layers, 2)
    assert bool((sp.lmba[1] >= sp.lmba[0]).all()) and bool((sp.lmbo[1] >= sp.lmbo[0]).all())
    assert bool((sp.lmbo >= 8).all()) and bool((sp.lmbo <= n).all())
    assert sp.ablation is not None and sp.ablation.shape == (n_layers,) and sp.span_tokens > 0
    tokens = Budget.resolve(0.3, n).tokens
    assert sp.allocations["uniform"] == [tokens] * n_layers
    for label, per_layer in sp.allocations.items():
        assert sum(per_layer) == n_layers * tokens, label


# ------------------------------------------------------------------------------------- summaries


def test_summaries() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["std"] == pytest.approx(math.sqrt(5 / 3))
    # t(0.975, 3) = 3.182446...
    assert s["ci_high"] - s["mean"] == pytest.approx(3.182446 * s["std"] / 2, rel=1e-5)
    assert summarize([2.0])["ci_low"] is None and summarize([])["n"] == 0
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [5, 5, 5]) is None


@pytest.mark.parametrize("text", ["", "0.9,x", "0", "1.5", "-0.2"])
def test_parse_fractions_rejects_bad_lists(text: str) -> None:
    from lukv_bench.errors import UserError

    with pytest.raises(UserError, match="--tau"):
        parse_fractions(text, "--tau", "0.8,0.9")


def test_parse_fractions() -> None:
    assert parse_fractions(" 0.9, 0.8,0.9,1", "--tau", "") == (0.8, 0.9, 1.0)


# ---------------------------------------------------------------------------------- command line


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def test_cli_profile_writes_tables_and_plots(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in (ROW_WITH_ANSWER, ROW_WITHOUT_ANSWER)) + "\n")
    out = tmp_path / "out"
    res = _invoke(["profile", "--model", TINY, "--data", str(data), "--tau", "0.5,0.9", "--cos", "0.9",
                   "--window", "8", "--budget", "0.3", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    names = ("measures.csv", "samples.csv", "allocations.csv", "correlations.csv", "profile.json",
             "zigzag.png", "heads.png", "allocations.png", "correlations.png")
    for name in names:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    doc = json.loads((out / "profile.json").read_text())
    assert [s["sample_id"] for s in doc["samples"]] == ["fox", "none"]
    assert doc["ablation_skipped"] == ["rows:none"]
    rows = list(csv.DictReader((out / "measures.csv").open()))
    n_layers = doc["n_layers"]
    lmba = [r for r in rows if r["measure"] == "lmba" and r["head"] == "all"]
    assert len(lmba) == 2 * n_layers and all(r["n"] == "2" for r in lmba)
    ablation = [r for r in rows if r["measure"] == "ablation"]
    assert len(ablation) == n_layers and all(r["n"] == "1" for r in ablation)
    allocations = list(csv.DictReader((out / "allocations.csv").open()))
    assert {"uniform", "layer-uncertainty", "pyramidkv", "cake", "adakv"} <= {r["policy"] for r in allocations}
    labels = doc["correlations"]["measures"]
    assert labels == ["LMBA 0.5", "LMBA 0.9", "LMBO 0.9", "ablation"]
    assert doc["correlations"]["matrix"][0][0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tau", "0.9,abc"], "--tau"),
        (["--cos", "2"], "--cos"),
        (["--budget", "1.5"], "--budget"),
        (["--data", "missing.jsonl"], "--data"),
        (["--suite", "missing.yaml"], "--suite"),
        (["--suite", "a.yaml", "--data", "b.jsonl"], "--suite or --data"),
        (["--model", "./no/such/model"], "--model"),
    ],
)
def test_cli_profile_bad_input_exits_2_naming_the_option(tmp_path: Path, args: list[str], needle: str) -> None:
    base = ["profile", "--out", str(tmp_path / "out"), "--no-progress"]
    if "--model" not in args:
        base += ["--model", TINY]
    res = _invoke([*base, *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output


def test_cli_profile_reads_a_suite_and_skips_lm_eval_tasks(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps(ROW_WITH_ANSWER) + "\n")
    (tmp_path / "suite.yaml").write_text(
        f"name: s\nmodel: {TINY}\npolicies: [full, snapkv]\nbudgets: [0.5]\nwindow: 8\ntasks:\n"
        "  - {name: rows, type: jsonl, path: rows.jsonl}\n"
        "  - {name: ruler, type: lm_eval, tasks: [niah_single_1]}\n"
    )
    out = tmp_path / "out"
    res = _invoke(["profile", "--suite", str(tmp_path / "suite.yaml"), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "lm_eval tasks have no context/answer samples" in res.output
    doc = json.loads((out / "profile.json").read_text())
    assert doc["settings"]["window"] == 8 and doc["model"] == TINY
    assert [s["task"] for s in doc["samples"]] == ["rows"]


def test_prompts_longer_than_the_model_are_cut_and_not_ablated(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny.model.config, "max_position_embeddings", 150)
    engine = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=8))
    settings = ProfileSettings(taus=(0.9,), cos_thresholds=(0.99,), budget=0.3, window=8)
    policies = allocation_policies()[:1]
    sample = Sample(**{k: ROW_WITH_ANSWER[k] for k in ("id", "context", "question", "answers")})
    sp = profile_sample(engine, "t", sample, False, settings, policies[0].policy.scorer, policies)
    assert sp.truncated_from is not None and sp.truncated_from > 150
    assert sp.prompt_tokens + sp.answer_tokens <= 150
    assert sp.ablation is None and sp.span_tokens == 0
