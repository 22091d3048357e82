"""The Ray executor on a real local Ray cluster (2 CPUs, loopback) and the tiny random model.

Checked: records identical to the local executor's; a worker killed mid-unit has its unit retried
(and a unit whose retries run out stops the run with the other units' records kept); the driver
killed with SIGKILL resumes on rerun; a bad sample is reported with the unit, not retried. The
tests needing Ray are skipped when it is not installed (``pip install "lukv-bench[ray]"``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support import MC_YAML, ROOT, TINY, kill_after_records, lukv_bench_command

from lukv_bench.cli import main
from lukv_bench.run.executors import RAY_INSTALL
from lukv_bench.run.results import read_records, record_key

pytestmark = pytest.mark.slow  # runs the CLI, subprocesses or a real model: not part of tests/unit

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason=f"Ray is not installed ({RAY_INSTALL})")

#: what a record's result is made of (timings and versions aside): must match between executors
RESULT_FIELDS = ("score", "prediction", "kv_bytes", "kv_bytes_full", "layer_budgets", "head_budgets",
                 "new_tokens", "greedy_agreement", "context_tokens", "budget_tokens_mean", "meta")

QUICK_STYLE = """\
name: quick-tiny
model: TINY
policies: [full, snapkv, layer-uncertainty]
budgets: [0.2, 0.5]
tasks:
  - name: passkey
    type: needle
    lengths: [400]
    depths: [0.2, 0.5, 0.8]
generation: {max_new_tokens: 8}
window: 16
device: cpu
threads: 1
resources: {workers: 2, cpus_per_worker: 1}
""".replace("model: TINY", f"model: {TINY}")


def _jsonl_suite(folder: Path, n: int, long_sample: int | None = None, extra: str = "", workers: int = 2) -> Path:
    """A jsonl task of ``n`` short samples (sample ``long_sample`` longer than the tiny model's 4096 positions)."""
    rows = []
    for i in range(n):
        context = f"Record {i:02d}: the quick brown fox jumps over the lazy dog near the river bank. " * 3
        if i == long_sample:
            context *= 20
        rows.append({"id": f"s{i}", "context": context, "question": "Which animal jumps?", "answers": ["fox"]})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = folder / "suite.yaml"
    suite.write_text(
        f"name: ray-e2e\nmodel: {TINY}\npolicies: [full, snapkv, h2o]\nbudgets: [0.3, 0.6]\n"
        "tasks:\n  - {name: facts, type: jsonl, path: data.jsonl}\n"
        "generation: {max_new_tokens: 4}\nwindow: 8\ndevice: cpu\nthreads: 1\n"
        f"resources: {{workers: {workers}}}\n{extra}"
    )
    return suite


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["run", *args, "--no-progress"])
    return res.exit_code, res.output


def _records(out: Path) -> list[dict]:
    return list(read_records(out / "results.jsonl"))


def _by_key(recs: list[dict]) -> dict[tuple, dict]:
    keys = [record_key(r) for r in recs]
    assert len(keys) == len(set(keys)), "a key appears twice"
    return dict(zip(keys, recs))


@pytest.fixture(scope="module")
def cluster():
    """A fresh 2-CPU Ray cluster on loopback for this module; its address for subprocess drivers.

    Started from the repository root: Ray workers start in the driver's directory, where the top-level
    ``kernels/`` folder must not shadow Hugging Face's ``kernels`` package that transformers imports.
    """
    ray = pytest.importorskip("ray")
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level="WARNING")
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        os.chdir(here)


# --------------------------------------------------------------------------------------- no Ray needed


def test_ray_missing_exits_2_with_the_install_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    code, output = _run(str(_jsonl_suite(tmp_path, 1)), "--out", str(tmp_path / "out"), "--executor", "ray")
    assert code == 2, output
    assert RAY_INSTALL in output and "Traceback" not in output
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_address_without_ray_executor_and_bad_resources_exit_2(tmp_path: Path) -> None:
    suite = _jsonl_suite(tmp_path, 1)
    code, output = _run(str(suite), "--out", str(tmp_path / "out"), "--address", "auto")
    assert code == 2 and "--executor ray" in output, output
    bad = _jsonl_suite(tmp_path, 1).read_text().replace("resources: {workers: 2}",
                                                        "resources: {workers: 0, gpus_per_worker: one}")
    suite.write_text(bad)
    code, output = _run(str(suite), "--out", str(tmp_path / "out"))
    assert code == 2, output
    assert f"{suite}:11: resources.workers: must be >= 1" in output
    assert f"{suite}:11: resources.gpus_per_worker: expected a number >= 0" in output


def test_resources_are_in_run_json_but_not_in_record_settings(tmp_path: Path) -> None:
    from lukv_bench.config.suite import load_suite
    from lukv_bench.records import RECORD_SETTINGS, run_settings

    suite = load_suite(_jsonl_suite(tmp_path, 1))
    assert suite.to_dict()["resources"] == {"workers": 2, "cpus_per_worker": None, "gpus_per_worker": 0}
    assert "resources" not in RECORD_SETTINGS and "resources" not in run_settings(suite.to_dict())


# ------------------------------------------------------------------------------------ on a Ray cluster


@needs_ray
def test_resources_the_cluster_cannot_give_exit_2(cluster, tmp_path: Path) -> None:
    suite = _jsonl_suite(tmp_path, 1)
    text = suite.read_text()
    suite.write_text(text.replace("resources: {workers: 2}", "resources: {cpus_per_worker: 4}"))
    code, output = _run(str(suite), "--out", str(tmp_path / "out"), "--executor", "ray")
    assert code == 2, output
    assert f"{suite}:11: resources: the Ray cluster (2 CPUs, 0 GPUs) cannot hold one worker of 4 CPUs" in output
    suite.write_text(text.replace("device: cpu", "device: cuda"))
    code, output = _run(str(suite), "--out", str(tmp_path / "out"), "--executor", "ray")
    assert code == 2, output
    assert f"{suite}:9: device: device cuda needs GPUs on the workers" in output


@needs_ray
def test_quick_style_suite_gives_the_local_records(cluster, tmp_path: Path) -> None:
    suite = tmp_path / "quick.yaml"
    suite.write_text(QUICK_STYLE)
    code, output = _run(str(suite), "--out", str(tmp_path / "local"))
    assert code == 0, output
    code, output = _run(str(suite), "--out", str(tmp_path / "ray"), "--executor", "ray")
    assert code == 0, output
    local, remote = _by_key(_records(tmp_path / "local")), _by_key(_records(tmp_path / "ray"))
    assert {k.policy for k in local} == {"full", "snapkv", "layer-uncertainty"}
    assert len(local) >= 3 * (1 + 2 * 2)  # and FullKV on the needle's no-context controls
    assert set(remote) == set(local)
    for key, rec in local.items():
        for f in RESULT_FIELDS:
            assert remote[key][f] == rec[f], (key, f)
        if rec["kl_mean"] is None:
            assert remote[key]["kl_mean"] is None
        else:
            assert remote[key]["kl_mean"] == pytest.approx(rec["kl_mean"], abs=1e-7), key
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["executor"]["kind"] == "ray" and run["executor"]["workers"] == 2
    assert run["executor"]["max_retries"] == 3
    assert json.loads((tmp_path / "local" / "run.json").read_text())["executor"] == {"kind": "local"}
    assert (tmp_path / "ray" / "report.md").is_file()


def _ray_run(suite: Path, out: Path, **executor: Any) -> None:
    """Run ``suite`` into ``out`` on the test cluster through the runner's API, with these executor arguments."""
    from lukv_bench.config.suite import load_suite
    from lukv_bench.run.executors import RayExecutor
    from lukv_bench.run.runner import Runner

    Runner(load_suite(suite), out, progress=False).run(RayExecutor(**executor))


@needs_ray
def test_worker_killed_mid_unit_is_retried(cluster, tmp_path: Path) -> None:
    from lukv_bench.testing import DyingUnitWorker

    suite, out = _jsonl_suite(tmp_path, 4), tmp_path / "out"
    total = 4 * (1 + 2 * 2)
    # the worker running s1 dies after its first record, on every attempt: one retry, then the run stops
    with pytest.raises(RuntimeError, match=r"task 'facts', sample 's1'.*2 attempts \(--max-retries 1\)"):
        _ray_run(suite, out, max_retries=1, worker=DyingUnitWorker, worker_args=("facts", "s1", 9))
    first = _by_key(_records(out))
    assert first and len(first) < total and all(k.sample_id != "s1" for k in first)

    # rerun: the worker dies once on s1, the unit runs again elsewhere; nothing is lost or doubled
    _ray_run(suite, out, worker=DyingUnitWorker, worker_args=("facts", "s1", 1))
    recs = _by_key(_records(out))
    assert len(recs) == total and {k.sample_id for k in recs} == {"s0", "s1", "s2", "s3"}
    for key, rec in first.items():
        assert recs[key] == rec  # records of the first run are untouched
    for key, rec in recs.items():
        assert rec["meta"].get("attempt") == (2 if key.sample_id == "s1" else None), key


@needs_ray
def test_bad_sample_is_reported_with_its_unit_and_not_retried(cluster, tmp_path: Path) -> None:
    suite, out = _jsonl_suite(tmp_path, 3, long_sample=1, extra="truncate: error\n", workers=1), tmp_path / "out"
    code, output = _run(str(suite), "--out", str(out), "--executor", "ray")
    assert code == 2, output
    assert "unit task 'facts', sample 's1'" in output and "Traceback" not in output
    assert "retrying" not in output
    assert {k.sample_id for k in _by_key(_records(out))} <= {"s0", "s2"}


@needs_ray
def test_driver_killed_then_rerun_resumes(cluster, tmp_path: Path) -> None:
    suite, out = _jsonl_suite(tmp_path, 6), tmp_path / "out"
    total = 6 * (1 + 2 * 2)
    cmd = [*lukv_bench_command(), "run", str(suite), "--out", str(out), "--no-progress", "--executor", "ray",
           "--address", cluster]
    results = out / "results.jsonl"
    kill_after_records(cmd, results, cwd=tmp_path, timeout=240)
    before = results.read_bytes()
    assert 3 <= before.count(b"\n") < total

    code, output = _run(str(suite), "--out", str(out), "--executor", "ray", "--address", cluster)  # the rerun
    assert code == 0, output
    data = results.read_bytes()
    assert data.startswith(before[: before.rfind(b"\n") + 1])  # finished records are untouched
    recs = _by_key(_records(out))
    assert len(recs) == total and {k.sample_id for k in recs} == {f"s{i}" for i in range(6)}


@needs_ray
def test_lm_eval_and_latency_units_run_on_ray_with_the_local_records(cluster, tmp_path: Path) -> None:
    """lm-eval and latency tasks are units like any other: under Ray they give the local executor's records
    (latency: the same kept bytes and budgets; its timings are measurements)."""
    tasks = tmp_path / "lm_tasks"
    tasks.mkdir()
    docs = [{"question": f"Question {i}: which one is a colour?\nAnswer:", "choices": ["blue", "seven", "table"],
             "label": 0} for i in range(3)]
    (tasks / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "mc.yaml").write_text(MC_YAML.format(path=json.dumps(str((tasks / "mc.jsonl").resolve()))))
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"name: units\nmodel: {TINY}\npolicies: [full, snapkv]\nbudgets: [0.5]\ntasks:\n"
        f"  - {{name: local, type: lm_eval, tasks: [lukv_mc], tail: 4, include_path: {json.dumps(str(tasks))}}}\n"
        "  - {name: cost, type: latency, lengths: [64, 96], new_tokens: 3, repeats: 1, warmup: 0}\n"
        "chat_template: false\nwindow: 8\ndevice: cpu\nthreads: 1\nresources: {workers: 2, cpus_per_worker: 1}\n"
    )
    code, output = _run(str(suite), "--out", str(tmp_path / "local"))
    assert code == 0, output
    code, output = _run(str(suite), "--out", str(tmp_path / "ray"), "--executor", "ray")
    assert code == 0, output
    local, remote = _by_key(_records(tmp_path / "local")), _by_key(_records(tmp_path / "ray"))
    assert set(remote) == set(local)
    assert {k.task for k in local} == {"local/lukv_mc", "cost"}
    assert len(local) == 3 * 2 + 2 * 2  # docs x cells + lengths x cells
    for key, rec in local.items():
        fields = RESULT_FIELDS if key.task != "cost" else ("kv_bytes", "kv_bytes_full", "layer_budgets",
                                                            "context_tokens", "budget_tokens_mean")
        for f in fields:
            assert remote[key][f] == rec[f], (key, f)
