"""benchmarks/peers/: clear failures of compare_kvpress.py before any model or kvpress work starts, and the
agreement computation of agreement_kvpress.py (encoding, parsing, Jaccard, pairing, summary) on hand-made
kept sets. Nothing here needs kvpress: CI does not install it, and running kvpress stays out of CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "benchmarks" / "peers"
SCRIPT = PEERS / "compare_kvpress.py"
sys.path.insert(0, str(PEERS))  # the scripts import each other as top-level modules, as when they run

import agreement  # noqa: E402
import agreement_kvpress  # noqa: E402
import compare_kvpress  # noqa: E402
import kvpress_kept  # noqa: E402

from lukv_bench.runtime.selection import KeepSet  # noqa: E402


def _compare(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


@pytest.mark.slow
def test_policy_without_kvpress_counterpart_is_bad_input(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: x\nmodel: embedded\npolicies: [snapkv, cake]\nbudgets: [0.5]\n"
        "tasks:\n  - {name: passkey, type: needle, lengths: [500], depths: [0.5]}\n"
    )
    proc = _compare("--suite", suite, "--venv", tmp_path / "venv", "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "['cake'] have no kvpress counterpart" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "venv").exists()  # rejected before any environment is made


@pytest.mark.slow
def test_kvpress_environment_that_cannot_be_made_fails_clearly(tmp_path: Path) -> None:
    """With no package index reachable, the script stops with a message naming the step and the fix."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(empty), "PIP_CONFIG_FILE": os.devnull}
    proc = _compare("--venv", tmp_path / "venv", "--out", tmp_path / "out", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot create kvpress's virtual environment" in proc.stderr
    assert "kvpress is not a dependency of lukv-bench" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# -- the agreement computation (pure functions; no kvpress, no model) -------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1046])
def test_kept_bitmap_round_trips(n: int) -> None:
    for kept in ([], [0], [n - 1], list(range(0, n, 3)), list(range(n))):
        assert agreement.decode_kept(agreement.encode_kept(kept, n), n) == sorted(set(kept))


def test_kept_bitmap_rejects_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="outside the context of 5 tokens"):
        agreement.encode_kept([5], 5)
    with pytest.raises(ValueError, match="expected 2"):
        agreement.decode_kept(agreement.encode_kept([1], 8), 9)  # one byte for a 9-token context
    with pytest.raises(ValueError, match="past the context of 3 tokens"):
        agreement.decode_kept(agreement.encode_kept([5], 8), 3)


def test_parse_kept_run_reads_every_layer_and_head() -> None:
    run = {"context_tokens": 10, "kept": [[agreement.encode_kept([0, 9], 10), agreement.encode_kept([], 10)],
                                          [agreement.encode_kept([3, 4, 5], 10), agreement.encode_kept([1], 10)]]}
    assert agreement.parse_kept_run(run) == [[[0, 9], []], [[3, 4, 5], [1]]]


def test_jaccard_of_hand_made_sets() -> None:
    assert agreement.jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 4)
    assert agreement.jaccard([1, 2], [3]) == 0.0
    assert agreement.jaccard([5, 1], [1, 5]) == 1.0
    assert agreement.jaccard([], []) == 1.0
    assert agreement.jaccard([1], []) == 0.0


def test_compare_kept_means_over_layers_and_heads() -> None:
    theirs = [[[0, 1, 2, 3], [0, 1]], [[4, 5], [6, 7]]]
    ours = [[[0, 1, 2, 3], [1, 2]], [[4, 5, 6], [8, 9]]]
    got = agreement.compare_kept(theirs, ours)
    # per (layer, head): 1, 1/3, 2/3, 0
    assert got["jaccard_mean"] == pytest.approx((1 + 1 / 3 + 2 / 3 + 0) / 4)
    assert got["identical_share"] == 0.25
    assert got["same_count_share"] == 0.75
    assert got["same_layer_budget_share"] == 0.5  # layer 0 keeps 6 on both sides, layer 1 keeps 4 vs 5
    assert got["layers"][0] == {"kept_kvpress": 3, "kept_lukv": 3, "jaccard": pytest.approx(2 / 3)}
    assert got["layers"][1] == {"kept_kvpress": 2, "kept_lukv": 2.5, "jaccard": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="different shapes"):
        agreement.compare_kept(theirs, ours[:1])


def _pair(preset: str, sid: str, theirs, ours, answers) -> dict:
    return {"preset": preset, "variant": "as run", "press": "P", "ratio": 0.5, "budget": 0.5, "how": "freed",
            "sample_id": sid, "agreement": agreement.compare_kept(theirs, ours), "answers": answers}


def test_summarize_agreement_averages_samples_and_counts_same_answers() -> None:
    pairs = [
        _pair("snapkv", "a", [[[0, 1]]], [[[0, 1]]], ["key 12 ", "key 12"]),
        _pair("snapkv", "b", [[[0, 1]]], [[[1, 2]]], ["key 12", "key 13"]),
        _pair("tova", "a", [[[0]]], [[[1]]], None),
    ]
    rows = agreement.summarize_agreement(pairs)
    assert [(r["preset"], r["samples"]) for r in rows] == [("snapkv", 2), ("tova", 1)]
    assert rows[0]["jaccard_mean"] == pytest.approx((1 + 1 / 3) / 2)
    assert rows[0]["identical_share"] == 0.5
    assert (rows[0]["same_answers"], rows[0]["answered"]) == (1, 2)
    assert (rows[1]["same_answers"], rows[1]["answered"]) == (None, 0)


def test_summary_names_the_closest_comparison_per_preset() -> None:
    def row(preset: str, variant: str, jaccard: float, identical: float) -> dict:
        return {"preset": preset, "variant": variant, "jaccard_mean": jaccard, "identical_share": identical}

    rows = [row("tova", "as run", 0.7, 0.0), row("tova", "matched", 0.71, 0.0), row("tova", "pooled", 1.0, 1.0),
            row("tova", "pooled", 1.0, 1.0), row("adakv", "as run", 0.95, 0.0), row("adakv", "matched", 0.96, 0.01),
            row("adakv", "matched", 0.94, 0.0)]
    assert agreement_kvpress._summary(rows) == [
        "- **tova**: identical kept sets in every (layer, head) in the *pooled* comparison.",
        "- **adakv**: not identical; best mean Jaccard 0.950 (lowest over the budgets) in the *as run* comparison.",
    ]


def test_kvpress_rounds_the_budget_down() -> None:
    assert agreement_kvpress.kvpress_kept_tokens(1046, round(1 - 0.2, 6)) == 209  # lukv-bench: ceil -> 210
    assert agreement_kvpress.kvpress_kept_tokens(419, 0.5) == 209
    assert agreement_kvpress.kvpress_kept_tokens(3, 0.9) == 1


def test_lukv_kept_sets_split_the_ragged_keep_set_per_head() -> None:
    keep = KeepSet(indices=torch.tensor([0, 3, 1, 2, 3]), cu_seqlens=torch.tensor([0, 2, 5]))
    assert agreement_kvpress.kept_sets([keep, keep]) == [[[0, 3], [1, 2, 3]]] * 2


def test_flat_layer_keep_takes_one_top_k_over_the_heads_sinks_first() -> None:
    scores = torch.tensor([[5.0, 1.0, 0.0, 0.0], [0.0, 3.0, 0.0, 2.0]])
    assert agreement_kvpress.flat_layer_keep(scores, sinks=0, total=3) == [[0], [1, 3]]
    assert agreement_kvpress.flat_layer_keep(scores, sinks=1, total=3) == [[0], [0, 1]]


def test_pair_up_matches_ratio_to_budget_and_names_a_missing_run() -> None:
    run = {"preset": "snapkv", "ratio": 0.8, "sample_id": "s", "context_tokens": 4, "how": ["freed"],
           "answer": "x", "kept": [[agreement.encode_kept([0, 3], 4)]]}
    full = {**run, "ratio": 0.0, "preset": "full", "kept": []}
    sides = {("snapkv", "as run", 0.2, "s"): {"kept": [[[0, 3]]], "answer": "x"},
             ("snapkv", "matched", 0.2, "s"): {"kept": [[[1, 3]]], "answer": None}}
    pairs = agreement_kvpress.pair_up(None, sides, [full, run])
    assert [(p["variant"], p["agreement"]["jaccard_mean"], p["answers"]) for p in pairs] == [
        ("as run", 1.0, ["x", "x"]), ("matched", pytest.approx(1 / 3), None)]
    with pytest.raises(compare_kvpress.CompareError, match="no run of snapkv at ratio 0.5 on sample s"):
        agreement_kvpress.pair_up(None, {("snapkv", "as run", 0.5, "s"): sides[("snapkv", "as run", 0.2, "s")]},
                                  [run])


def test_kept_positions_of_a_freeing_press_are_the_gathered_rows() -> None:
    keys = torch.randn(1, 2, 6, 4)
    idx = torch.tensor([[5, 0, 2], [1, 3, 4]])  # a press's top-k order is not sorted
    after = keys.gather(2, idx.view(1, 2, 3, 1).expand(1, 2, 3, 4))
    assert kvpress_kept.kept_positions(keys, after, None) == ([[0, 2, 5], [1, 3, 4]], "freed")
    with pytest.raises(RuntimeError, match="no input row"):
        kvpress_kept.kept_positions(keys, after + 1, None)


def test_kept_positions_of_a_masking_press_are_the_unmasked_ones() -> None:
    keys = torch.randn(1, 2, 4, 3)
    masked = (torch.tensor([0, 0, 0]), torch.tensor([0, 1, 1]), torch.tensor([2, 0, 3]))
    assert kvpress_kept.kept_positions(keys, keys, masked) == ([[0, 1, 3], [1, 2]], "masked")


def test_compare_kvpress_leaves_out_no_context_controls() -> None:
    recs = [{"task": "passkey", "policy": "full"}, {"task": "passkey:no-context", "policy": "full"},
            {"task": "passkey", "policy": "snapkv"}]
    assert compare_kvpress.compared_records(recs) == [recs[0], recs[2]]
