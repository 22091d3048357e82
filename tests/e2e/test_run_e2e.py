"""End-to-end runs of suites on the tiny random model: the records, the report, resuming after
``kill -9`` (also with a torn last line), prefill-once/compress-many equivalence, and the two
compression protocols (``compress: prompt`` vs ``compress: context``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support import TINY, kill_after_records, lukv_bench_command

from lukv_bench.cli import main
from lukv_bench.registry import resolve_policy
from lukv_bench.run.results import read_records, record_key
from lukv_bench.runtime.contract import Budget
from lukv_bench.runtime.engine import Engine, EngineSettings, sweep

pytestmark = pytest.mark.slow  # runs the CLI, subprocesses or a real model: not part of tests/unit

POLICIES = ["full", "snapkv", "layer-uncertainty", "streaming", "h2o", "adakv", "pyramidkv", "cake", "random"]
BUDGETS = [0.3, 1.0]

#: README "Results format"
FIELDS = (
    "model task sample_id policy policy_params budget budget_ratio budget_tokens_mean context_tokens "
    "layer_budgets head_budgets allocation_info score metric prediction answers kv_bytes kv_bytes_full "
    "prefill_s compress_s decode_s new_tokens peak_mem_bytes prefill_peak_mem_bytes kl_mean "
    "greedy_agreement data_source seed compress_mode window storage gqa_reduce meta versions setting "
    "policy_description context_tokens_original fidelity batch_size"
).split()


def _write_data(folder: Path, n: int) -> Path:
    """``n`` samples whose prompts are all 260 byte tokens long (a multiple of 10: 30% is a whole number)."""
    rows = [
        {
            "id": f"s{i}",
            "context": f"Record {i:02d}: the quick brown fox jumps over the lazy dog near the river bank. " * 3 + "end",
            "question": "Which animal jumps?",
            "answers": ["fox"],
        }
        for i in range(n)
    ]
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_suite(folder: Path, policies=POLICIES, budgets=BUDGETS, compress: str = "prompt", new: int = 6) -> Path:
    path = folder / "suite.yaml"
    path.write_text(
        "name: e2e\n"
        f"model: {TINY}\n"
        f"policies: {json.dumps(policies)}\n"
        f"budgets: {json.dumps(budgets)}\n"
        "tasks:\n  - {name: facts, type: jsonl, path: data.jsonl, metric: substring}\n"
        f"generation: {{max_new_tokens: {new}}}\n"
        f"compress: {compress}\n"
        "window: 8\n"
        "device: cpu\n"
    )
    return path


def _cli_run(suite: Path, out: Path) -> None:
    res = CliRunner().invoke(main, ["run", str(suite), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, (res.output, res.exception)


def _records(out: Path) -> list[dict]:
    return list(read_records(out / "results.jsonl"))


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The nine built-ins at budgets [0.3, 1.0] on two samples, through ``lukv-bench run``."""
    folder = tmp_path_factory.mktemp("e2e")
    _write_data(folder, 2)
    out = folder / "out"
    _cli_run(_write_suite(folder), out)
    return out, _records(out)


# ------------------------------------------------------------------------------------------ records


def test_one_record_per_key_with_documented_fields(prompt_run) -> None:
    out, recs = prompt_run
    keys = [record_key(r) for r in recs]
    assert len(keys) == len(set(keys))
    # FullKV runs once per sample (it does not depend on the budget); every other policy per budget
    want = {("facts", s, "full", json.dumps(1.0)) for s in ("s0", "s1")}
    want |= {("facts", s, p, json.dumps(b)) for s in ("s0", "s1") for p in POLICIES[1:] for b in BUDGETS}
    assert {(k.task, k.sample_id, k.policy, k.budget) for k in keys} == want
    # the settings digest: one per policy (same run settings and task), distinct across policies
    per_policy = {}
    for r in recs:
        per_policy.setdefault(r["policy"], set()).add(r["setting"])
    assert all(len(v) == 1 for v in per_policy.values())
    assert len({next(iter(v)) for v in per_policy.values()}) == len(per_policy)
    for r in recs:
        missing = [f for f in FIELDS if f not in r]
        assert not missing, (r["policy"], missing)
        assert r["model"] == TINY and r["metric"] == "substring" and r["answers"] == ["fox"]
        assert r["compress_mode"] == "prompt" and r["window"] == 8 and r["storage"] == "kv"
        assert len(r["layer_budgets"]) == 4 and 0 <= r["score"] <= 1
        assert 1 <= r["new_tokens"] <= 6 and r["kv_bytes"] > 0 and r["prefill_s"] > 0
        assert r["versions"]["lukv_bench"] and r["versions"]["torch"]
        assert r["data_source"].startswith("jsonl")
    run = json.loads((out / "run.json").read_text())
    assert run["suite"]["policies"] == POLICIES and run["versions"]["transformers"]


def test_budget_covering_context_reproduces_fullkv(prompt_run) -> None:
    _, recs = prompt_run
    full = {r["sample_id"]: r for r in recs if r["policy"] == "full"}
    assert len(full) == 2
    for r in recs:
        if r["policy"] == "full":
            assert r["kl_mean"] is None and r["kv_bytes"] == r["kv_bytes_full"]
            continue
        if r["budget"] == 1.0:
            assert r["kl_mean"] <= 1e-6, r["policy"]
            assert r["greedy_agreement"] == 1.0, r["policy"]
            assert r["prediction"] == full[r["sample_id"]]["prediction"], r["policy"]
            assert r["kv_bytes"] == r["kv_bytes_full"], r["policy"]
            assert r["layer_budgets"] == [r["context_tokens"]] * 4


def test_kv_bytes_follow_the_budget(prompt_run) -> None:
    _, recs = prompt_run
    compressed = [r for r in recs if r["budget"] == 0.3]
    assert {r["policy"] for r in compressed} == set(POLICIES[1:])
    for r in compressed:
        assert r["context_tokens"] == 260
        ratio = r["kv_bytes"] / r["kv_bytes_full"]
        assert ratio == pytest.approx(sum(r["layer_budgets"]) / (4 * 260), rel=1e-9)  # measured = kept
        if r["policy"] == "pyramidkv":
            # README: PyramidKV keeps its reference rounding, over by less than (L - 1) / 2 per layer
            assert 0 <= sum(r["layer_budgets"]) / 4 - 78 < 1.5, r["layer_budgets"]
        else:
            assert abs(ratio - 0.3) <= 0.01 * 0.3, (r["policy"], ratio)
        assert r["budget_tokens_mean"] == 78 and r["budget_ratio"] == 0.3
        assert 0 <= r["greedy_agreement"] <= 1 and r["kl_mean"] >= 0
    # eviction at 30% measurably changes the random model's next-token distributions
    assert max(r["kl_mean"] for r in compressed) > 1e-4
    # layer-adaptive allocators really differ per layer; uniform ones do not
    by = {(r["policy"], r["sample_id"]): r["layer_budgets"] for r in compressed}
    assert len(set(by["pyramidkv", "s0"])) > 1 and len(set(by["snapkv", "s0"])) == 1


def test_report_and_plots_exist(prompt_run) -> None:
    out, _ = prompt_run
    report = (out / "report.md").read_text()
    assert "# lukv-bench report: e2e" in report
    for p in POLICIES[1:]:
        assert p in report
    pngs = sorted((out / "plots").glob("*.png"))
    assert pngs
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


# --------------------------------------------------------------------------------------- durability


def test_resume_after_kill_and_torn_line(tmp_path: Path) -> None:
    _write_data(tmp_path, 3)
    policies, budgets = ["full", "snapkv", "h2o", "streaming"], [0.3, 0.6]
    suite = _write_suite(tmp_path, policies=policies, budgets=budgets, new=4)
    total = 3 * (1 + 3 * len(budgets))
    cmd = [*lukv_bench_command(), "run", str(suite), "--out", "out", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = tmp_path / "out" / "results.jsonl"

    kill_after_records(cmd, results, cwd=tmp_path, env=env)

    lines = results.read_bytes().splitlines(keepends=True)
    assert 3 <= len(lines) < total
    # simulate a write torn by the kill: cut the last line in half
    torn_key = record_key(json.loads(lines[-1]))
    kept = b"".join(lines[:-1])
    results.write_bytes(kept + lines[-1][: len(lines[-1]) // 2])

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    data = results.read_bytes()
    assert data.startswith(kept)  # finished records are untouched
    recs = [json.loads(line) for line in data.splitlines()]  # every line parses: the torn one is gone
    keys = [record_key(r) for r in recs]
    assert len(recs) == total and len(set(keys)) == total
    assert keys.count(torn_key) == 1
    assert {k.sample_id for k in keys} == {"s0", "s1", "s2"}
    assert (tmp_path / "out" / "report.md").is_file()

    # a third run of the same command has nothing left to do
    again = CliRunner().invoke(main, ["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert results.read_bytes() == data


# ------------------------------------------------------------------------- prefill once, compress many


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 250, (1, n), generator=torch.Generator().manual_seed(seed))


def test_compress_many_from_one_prefill_equals_fresh_prefill(tiny) -> None:
    settings = EngineSettings(window=8)
    ids = _ids(120, 11)
    p1, p2 = resolve_policy("h2o"), resolve_policy("layer-uncertainty")
    eng = Engine(tiny.model, tiny.tokenizer, settings)
    shared = eng.prefill(ids, p1.needs | p2.needs)
    budget = Budget.resolve(0.3, shared.n)
    cache, (c1, c2) = eng.compress(shared, [(p1, budget), (p2, budget)])
    g1, g2 = eng.generate(cache, shared.last_logits, 10)

    fresh_eng = Engine(tiny.model, tiny.tokenizer, settings)
    fresh = fresh_eng.prefill(ids, p2.needs)
    cache_f, (c2f,) = fresh_eng.compress(fresh, [(p2, budget)])
    (g2f,) = fresh_eng.generate(cache_f, fresh.last_logits, 10)

    # P1 was really different (otherwise this proves nothing) and left the shared prefill intact
    assert c1.layer_budgets != c2.layer_budgets or g1.tokens != g2.tokens
    for a, b in zip(shared.keys + shared.values, fresh.keys + fresh.values):
        assert torch.equal(a, b)
    assert c2.layer_budgets == c2f.layer_budgets and c2.head_budgets == c2f.head_budgets
    assert c2.kv_bytes == c2f.kv_bytes
    assert g2.tokens == g2f.tokens
    torch.testing.assert_close(g2.logits, g2f.logits, rtol=0, atol=1e-5)  # batch 2 vs batch 1 matmuls


def test_sweep_outcome_does_not_depend_on_other_runs(tiny) -> None:
    eng = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=8))
    ctx, question = _ids(100, 12)[0].tolist(), _ids(10, 13)[0].tolist()
    full, p1, p2 = resolve_policy("full"), resolve_policy("streaming"), resolve_policy("cake")
    for mode in ("prompt", "context"):
        many = list(sweep(eng, ctx, question, [(p1, 0.3), (p2, 0.3), (p1, 0.5)], full, compress=mode,
                          max_new_tokens=8))
        alone = list(sweep(eng, ctx, question, [(p2, 0.3)], full, compress=mode, max_new_tokens=8))
        a = next(o for _, o in many if o.policy.name == "cake")
        b = alone[0][1]
        assert a.policy.name == b.policy.name == "cake"
        assert a.generation.tokens == b.generation.tokens, mode
        torch.testing.assert_close(a.generation.logits, b.generation.logits, rtol=0, atol=1e-5)
        assert a.kl_mean == pytest.approx(b.kl_mean, abs=1e-6) and a.greedy_agreement == b.greedy_agreement, mode
        assert a.compressed.kv_bytes == b.compressed.kv_bytes
        assert many[0][0] is many[2][0]  # one prefill served every run of the sweep


# ------------------------------------------------------------------------------- compress: context


def test_context_mode_compresses_only_the_context(prompt_run, tmp_path: Path) -> None:
    from lukv_bench.runtime.prompts import build_prompt
    from lukv_bench.tasks.jsonl import load_jsonl
    from lukv_bench.testing import byte_tokenizer

    _, prompt_recs = prompt_run
    data = _write_data(tmp_path, 1)
    out = tmp_path / "out"
    _cli_run(_write_suite(tmp_path, policies=["full", "snapkv"], budgets=BUDGETS, compress="context"), out)
    recs = _records(out)
    assert len(recs) == 3 and {r["compress_mode"] for r in recs} == {"context"}

    ids = build_prompt(byte_tokenizer(), load_jsonl(data)[0], chat=False)
    in_prompt = {(r["policy"], r["budget"]): r for r in prompt_recs if r["sample_id"] == "s0"}
    for r in recs:
        other = in_prompt[r["policy"], r["budget"]]
        assert r["context_tokens"] == len(ids.context)
        assert other["context_tokens"] == len(ids.context) + len(ids.question)
        assert r["kv_bytes_full"] < other["kv_bytes_full"]
        if r["policy"] == "full":
            continue
        if r["budget"] == 1.0:
            assert r["kl_mean"] <= 1e-6 and r["greedy_agreement"] == 1.0
            assert r["prediction"] == next(x for x in recs if x["policy"] == "full")["prediction"]
        else:
            assert r["budget_tokens_mean"] == -(-3 * len(ids.context) // 10)
            assert abs(r["kv_bytes"] / r["kv_bytes_full"] - 0.3) <= 0.01 * 0.3
    # the same prompt ids, fed whole: FullKV answers identically in both protocols
    assert next(x for x in recs if x["policy"] == "full")["prediction"] == in_prompt["full", 1.0]["prediction"]


# ------------------------------------------------------------------------------ resume and settings


def test_rerun_with_changed_settings_is_refused_or_kept_apart(tmp_path: Path) -> None:
    """A rerun into a folder made under other settings stops (exit 2, naming them) before any model
    loads, unless --add-settings (beside, as distinct keys) or --new-run (a fresh sibling folder)."""
    _write_data(tmp_path, 1)
    out = tmp_path / "out"
    _cli_run(_write_suite(tmp_path, policies=["full", "snapkv"], budgets=[0.3], new=3), out)
    before = (out / "results.jsonl").read_bytes()

    # adding a budget changes no existing record: it simply runs what is missing
    _cli_run(_write_suite(tmp_path, policies=["full", "snapkv"], budgets=[0.3, 0.5], new=3), out)
    assert len(_records(out)) == 3

    changed = _write_suite(tmp_path, policies=["full", {"name": "snapkv", "kernel": 5}], budgets=[0.3], new=3)
    res = CliRunner().invoke(main, ["run", str(changed), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "run.json" in res.output and "policy snapkv" in res.output and "--add-settings" in res.output
    assert "Traceback" not in res.output
    assert (out / "results.jsonl").read_bytes().startswith(before)
    assert len(_records(out)) == 3  # nothing ran

    text = changed.read_text().replace("window: 8", "window: 4")
    changed.write_text(text)
    res = CliRunner().invoke(main, ["run", str(changed), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "window: 8 -> 4" in res.output

    res = CliRunner().invoke(main, ["run", str(changed), "--out", str(out), "--no-progress", "--add-settings"])
    assert res.exit_code == 0, res.output
    recs = _records(out)
    snap = [r for r in recs if r["policy"] == "snapkv" and r["budget"] == 0.3]
    assert len(snap) == 2 and len({r["setting"] for r in snap}) == 2  # old and new, side by side
    assert json.loads((out / "run.json").read_text())["history"]  # the earlier settings are recorded

    res = CliRunner().invoke(main, ["run", str(_write_suite(tmp_path, policies=["full"], budgets=[0.3], new=2)),
                                    "--out", str(out), "--no-progress", "--new-run"])
    assert res.exit_code == 0, res.output
    fresh = tmp_path / "out-2"
    assert len(_records(fresh)) == 1 and len(_records(out)) == len(recs)


def test_changed_data_is_named_and_refused(tmp_path: Path) -> None:
    """The bytes of a data file are part of the records' settings: editing the answers and rerunning is refused
    (exit 2, naming the task and key) instead of keeping the old records as done; --add-settings reruns them."""
    data = _write_data(tmp_path, 1)
    out = tmp_path / "out"
    suite = _write_suite(tmp_path, policies=["full"], budgets=[0.3], new=2)
    _cli_run(suite, out)
    fingerprint = json.loads((out / "run.json").read_text())["fingerprint"]
    assert fingerprint["data"]["facts"]["path"].startswith("sha256 ")
    assert fingerprint["model"].startswith("folder tiny: ") and fingerprint["device"] == "cpu"

    data.write_text(data.read_text().replace('"fox"', '"dog"'))
    res = CliRunner().invoke(main, ["run", str(suite), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "tasks[facts].path: its data changed" in res.output and "Traceback" not in res.output
    assert len(_records(out)) == 1

    res = CliRunner().invoke(main, ["run", str(suite), "--out", str(out), "--no-progress", "--add-settings"])
    assert res.exit_code == 0, res.output
    recs = _records(out)
    assert len(recs) == 2 and {tuple(r["answers"]) for r in recs} == {("fox",), ("dog",)}
    assert len({r["setting"] for r in recs}) == 2


def test_folder_without_fingerprints_is_refused(tmp_path: Path) -> None:
    """A results folder from a lukv-bench that did not fingerprint data and model cannot be resumed blindly."""
    _write_data(tmp_path, 1)
    out = tmp_path / "out"
    suite = _write_suite(tmp_path, policies=["full"], budgets=[0.3], new=2)
    _cli_run(suite, out)
    run = json.loads((out / "run.json").read_text())
    del run["fingerprint"]
    (out / "run.json").write_text(json.dumps(run))
    res = CliRunner().invoke(main, ["run", str(suite), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "did not fingerprint its data and model" in res.output, res.output
