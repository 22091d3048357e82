"""A real ``lukv-bench profile`` of the tiny model becomes a policy through the ``profiled`` allocator."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner
from support import TINY

from lukv_bench.cli import main
from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.contract import Budget
from lukv_bench.runtime.engine import Engine, EngineSettings

ROW = {
    "id": "fox",
    "context": "Many animals live in the forest. The red fox keeps its den under the old oak 4417. " * 3,
    "question": "Which number is under the old oak?",
    "answers": ["4417"],
}


def test_profile_output_drives_layer_and_head_budgets(tmp_path: Path, tiny) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    out = tmp_path / "profile"
    res = CliRunner().invoke(main, ["profile", "--model", TINY, "--data", str(data), "--tau", "0.5,0.9",
                                    "--window", "4", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "profile.json").read_text())
    means = [r["mean"] for r in doc["measures"] if r["measure"] == "lmba" and r["param"] == "0.9"
             and r["head"] == "all"]

    policy = resolve_policy({"name": "p", "scorer": "snapkv", "allocator": "profiled", "profile": str(out),
                             "measure": "lmba", "param": "0.9", "heads": True, "floor_ratio": 0.0})
    eng = Engine(tiny.model, tiny.tokenizer, EngineSettings(window=4))
    pre = eng.prefill(torch.randint(0, 250, (1, 60), generator=torch.Generator().manual_seed(2)), policy.needs)
    plan = policy.plan(pre.stats, Budget.resolve(0.3, pre.n), 4)
    per_layer = plan.allocation.per_layer
    total = len(per_layer) * 18
    assert sum(per_layer) == total
    # floor 0: each layer gets its share of the profile's means, rounded (no layer reaches the cap n = 60)
    assert len(set(means)) > 1
    want = [total * m / sum(means) for m in means]
    assert max(want) < 60 and all(abs(c - x) < 1 for c, x in zip(per_layer, want, strict=True)), (want, per_layer)
    assert plan.allocation.per_head is not None
    assert [sum(h) for h in plan.allocation.per_head] == [eng.n_kv_heads * c for c in per_layer]
