"""The ``latency`` task type on the tiny model: records, ratios to FullKV, resume, bad configs, the cost report.

Timings are never asserted on (only that they were measured); memory figures are measured bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support import TINY

from lukv_bench.cli import main
from lukv_bench.config.suite import load_suite
from lukv_bench.data.corpus import reference_text_ids
from lukv_bench.errors import UserError
from lukv_bench.report.cost import fit_power, summarize_cost
from lukv_bench.run.results import read_records
from lukv_bench.runtime.memory import AllocationPeak

LENGTHS = [64, 128]
TOO_LONG = 4094  # the tiny model has 4096 positions; with new_tokens 4 this cannot fit
SETTINGS = [("full", 1.0), ("snapkv", 0.5), ("streaming", 0.5), ("h2o", 0.5)]
NEW = 4


def _suite(folder: Path, task: str, model: str = TINY) -> Path:
    path = folder / "suite.yaml"
    path.write_text(
        "name: cost\n"
        f"model: {model}\n"
        "policies: [full, snapkv, streaming, h2o]\n"
        "budgets: [0.5]\n"
        "tasks:\n"
        f"  - {task}\n"
        "window: 8\n"
        "device: cpu\n"
    )
    return path


def _run(suite: Path, out: Path):
    return CliRunner().invoke(main, ["run", str(suite), "--out", str(out), "--no-progress"])


@pytest.fixture(scope="module")
def latency_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("latency")
    lengths = [*LENGTHS, TOO_LONG]
    suite = _suite(folder, f"{{name: cost, type: latency, lengths: {lengths}, new_tokens: {NEW}, repeats: 2, "
                           "warmup: 0, memory_limit_gb: 0.001}")
    out = folder / "out"
    with pytest.MonkeyPatch.context() as mp:
        # as for a hub model, whose config cannot be read before it loads: too-long lengths are skipped at run time
        mp.setattr("lukv_bench.runtime.models.config_max_positions", lambda spec: None)
        res = _run(suite, out)
    assert res.exit_code == 0, (res.output, res.exception)
    return out


def _records(out: Path) -> list[dict]:
    return list(read_records(out / "results.jsonl"))


def test_one_record_per_length_policy_budget(latency_run):
    recs = _records(latency_run)
    keys = sorted((r["sample_id"], r["policy"], json.dumps(r["budget"])) for r in recs)
    want = sorted((f"len{n}", p, json.dumps(b)) for n in [*LENGTHS, TOO_LONG] for p, b in SETTINGS)
    assert keys == want
    for r in recs:
        assert r["task"] == "cost" and r["metric"] == "latency" and r["score"] is None
        assert r["setting"] and r["policy_description"]  # the runner's record constructor filled the identity


def test_figures_measured_and_ratios_to_fullkv(latency_run):
    recs = [r for r in _records(latency_run) if r["sample_id"] != f"len{TOO_LONG}"]
    for r in recs:
        meta = r["meta"]
        assert r["context_tokens"] == meta["length"]
        assert r["new_tokens"] == NEW and meta["decode_steps"] == NEW - 1
        for key in ("prefill_s", "decode_s", "kv_bytes", "kv_bytes_full", "peak_mem_bytes", "prefill_peak_mem_bytes"):
            assert r[key] > 0, key
        assert r["compress_s"] >= 0
        assert meta["decode_ms_per_token"] == pytest.approx(1000 * r["decode_s"] / (NEW - 1))
        assert meta["tokens_per_s"] == pytest.approx(1000 / meta["decode_ms_per_token"])
        assert meta["compress_share"] == pytest.approx(r["compress_s"] / r["prefill_s"])
        assert meta["decode_cpu_ms_per_token"] > 0 and meta["prefill_cpu_s"] > 0  # CPU time of the same runs
        assert len(meta["samples"]["decode_s"]) == 2  # repeats
        # decoding memory = the cache's buffers + what one measured decode step allocated
        assert meta["decode_step_peak_bytes"] > 0
        assert r["peak_mem_bytes"] == meta["cache_buffer_bytes"] + meta["decode_step_peak_bytes"]
        assert "torch.profiler" in meta["peak_mem_method"]
        assert meta["device"] == "cpu" and meta["threads"] >= 1 and meta["max_positions"] == 4096
    full = {r["meta"]["length"]: r for r in recs if r["policy"] == "full"}
    for r in recs:
        ref = full[r["meta"]["length"]]
        vs = r["meta"]["vs_full"]
        if r["policy"] == "full":
            assert all(v == 1.0 for v in vs.values()), vs
            continue
        assert vs["kv_bytes"] == pytest.approx(r["kv_bytes"] / ref["kv_bytes"])
        assert vs["peak_mem_bytes"] == pytest.approx(r["peak_mem_bytes"] / ref["peak_mem_bytes"])
        assert vs["decode_ms_per_token"] == pytest.approx(r["meta"]["decode_ms_per_token"]
                                                         / ref["meta"]["decode_ms_per_token"])
        assert r["kv_bytes"] / r["kv_bytes_full"] == pytest.approx(0.5, abs=0.05)  # the budget, measured
        assert vs["peak_mem_bytes"] < 1.0  # half the cache: less memory while decoding
    h2o = [r for r in recs if r["policy"] == "h2o"]
    assert all(r["meta"]["prefill_needs"] == ["accumulated"] for r in h2o)  # its own, heavier capture prefill


def test_too_long_length_skipped_with_the_reason(latency_run):
    skipped = [r for r in _records(latency_run) if r["sample_id"] == f"len{TOO_LONG}"]
    assert len(skipped) == len(SETTINGS)
    for r in skipped:
        assert "exceed the model's 4096 positions" in r["meta"]["skipped"]
        assert r["decode_s"] is None and r["peak_mem_bytes"] is None


def test_resume_measures_only_what_is_missing(latency_run, tmp_path, monkeypatch):
    monkeypatch.setattr("lukv_bench.runtime.models.config_max_positions", lambda spec: None)  # as latency_run
    out = tmp_path / "out"
    out.mkdir()
    for name in ("run.json", "results.jsonl"):
        (out / name).write_bytes((latency_run / name).read_bytes())
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if '"policy": "snapkv"' not in ln or '"sample_id": "len64"' not in ln]
    assert len(kept) == len(lines) - 1
    (out / "results.jsonl").write_text("".join(kept))
    suite = Path(json.loads((out / "run.json").read_text())["suite"]["file"])
    res = _run(suite, out)
    assert res.exit_code == 0, (res.output, res.exception)
    after = (out / "results.jsonl").read_text().splitlines(keepends=True)
    assert after[: len(kept)] == kept  # finished records untouched
    added = [json.loads(ln) for ln in after[len(kept):]]
    assert [(r["sample_id"], r["policy"]) for r in added] == [("len64", "snapkv")]
    res = _run(suite, out)  # everything done: nothing is measured again
    assert res.exit_code == 0, (res.output, res.exception)
    assert (out / "results.jsonl").read_text().splitlines(keepends=True) == after


def test_report_has_the_cost_section(latency_run):
    report = (latency_run / "report.md").read_text()
    assert "## Cost: task `cost`" in report
    assert "### Growth with context length" in report and "### Closing note" in report
    assert "| tokens/s | decode CPU ms/token |" in report
    assert "the task measured 2 lengths, a fit needs 3 or more" in report  # no growth exponent from two points
    assert f"Skipped: {TOO_LONG} prompt tokens" in report
    assert "## Task `cost`" not in report  # no quality section for latency records
    for png in ("decode", "memory"):
        files = list((latency_run / "plots").glob(f"*cost_{png}.png"))
        assert len(files) == 1 and files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [c] = summarize_cost(_records(latency_run), json.loads((latency_run / "run.json").read_text()))
    assert c.memory_limit_gb == 0.001 and c.lengths == LENGTHS
    assert [s.label for s in c.series] == ["FullKV", "streaming @ 0.5", "h2o @ 0.5", "snapkv @ 0.5"]


@pytest.mark.parametrize(
    ("task", "where"),
    [
        ("{name: cost, type: latency, lengths: [64, 8]}", "tasks[0].lengths[1]: must be >= 16, got 8"),
        ("{name: cost, type: latency, lengths: [64], repeats: 0}", "tasks[0].repeats: must be >= 1, got 0"),
        ("{name: cost, type: latency, lengths: [64], new_tokens: 1}", "tasks[0].new_tokens: must be >= 2"),
        ("{name: cost, type: latency, lengths: [64], memory_limit_gb: 0}", "tasks[0].memory_limit_gb: expected"),
        ("{name: cost, type: latency, lengths: [64, 64]}", "tasks[0].lengths: duplicate entries: 64"),
        ("{name: cost, type: latency, lenghts: [64]}", "tasks[0].lenghts: unknown key 'lenghts'; did you mean"),
        ("{name: cost, type: latency}", "tasks[0]: missing required key 'lengths'"),
    ],
)
def test_bad_config_names_file_line_and_key(tmp_path, task, where):
    suite = _suite(tmp_path, task)
    with pytest.raises(UserError) as err:
        load_suite(suite)
    assert f"{suite}:6: {where}" in str(err.value)
    res = _run(suite, tmp_path / "out")
    assert res.exit_code == 2 and not (tmp_path / "out").exists()


def test_length_beyond_a_known_model_refused_when_the_suite_loads(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 256}))
    suite = _suite(tmp_path, "{name: cost, type: latency, lengths: [128, 200], new_tokens: 64}", model="./model")
    with pytest.raises(UserError) as err:
        load_suite(suite)
    msg = str(err.value)
    assert f"{suite}:6: tasks[0].lengths[1]: 200 prompt tokens + new_tokens 64 exceed the model's 256" in msg
    assert "lengths[0]" not in msg


def test_fit_power_recovers_the_exponent_and_the_reach():
    ns = [1000, 2000, 4000]
    fit = fit_power(ns, [3.0 * n**1.5 for n in ns])
    assert fit.k == pytest.approx(1.5) and math.exp(fit.log_a) == pytest.approx(3.0) and fit.r2 == pytest.approx(1.0)
    assert fit_power(ns, [1.0, 4.0, 2.0]).r2 < 0.9
    assert fit.solve(3.0 * 8000**1.5) == pytest.approx(8000)
    assert fit_power([1000], [1.0]) is None


def test_allocation_peak_counts_only_what_the_block_allocates():
    before = torch.ones(1_000_000)  # allocated earlier: not counted
    with AllocationPeak("cpu") as mem:
        a = torch.ones(250_000)  # 1 MB
        b = torch.ones(500_000)  # 2 MB, alive together with a
        del a, b
        c = torch.ones(100_000)
    assert 3_000_000 <= mem.peak < 3_000_000 + 400_000 + 100_000
    assert before.numel() and c.numel()


def test_reference_text_has_the_exact_length(tiny):
    ids = reference_text_ids(tiny.tokenizer, 5000)
    assert len(ids) == 5000 and len(set(ids)) > 50
