"""The policies of issue 19 (KeyDiff, TOVA, DefensiveKV's aggregation, the global allocator, ChunkKV,
CriticalKV, profiled budgets) on hand-computed cases and against plain references (CPU, no model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lukv_bench.policies.chunk import chunk_scores
from lukv_bench.policies.defensive import mean_clamp
from lukv_bench.policies.global_topk import probabilities
from lukv_bench.policies.keydiff import key_diversity
from support import hand_stats, make_stats

from lukv_bench.errors import ConfigError
from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.contract import LayerStats, PrefillStats

NEW_PRESETS = ["tova", "keydiff", "criticalkv", "defensivekv", "layer-defensivekv", "chunkkv"]


def _layer(n: int, hq: int = 1, hkv: int = 1, window: int = 1, **fields: torch.Tensor) -> PrefillStats:
    """One layer whose statistics are zero except the given fields (float32)."""
    base = {"keys": torch.zeros(hkv, n, 2), "values": torch.zeros(hkv, n, 2), "win_sum": torch.zeros(hq, n),
            "win_sumsq": torch.zeros(hq, n), "win_entropy": torch.zeros(hq)}
    base.update({k: v.float() for k, v in fields.items()})
    return PrefillStats(layers=[LayerStats(layer=0, window=window, **base)], n_q_heads=hq, n_kv_heads=hkv)


def _kept(spec: str | dict, stats: PrefillStats, budget: int, window: int) -> list[list[list[int]]]:
    """Kept indices per layer and storage head."""
    plan = resolve_policy(spec).plan(stats, budget, window)
    return [[k.indices[k.cu_seqlens[h] : k.cu_seqlens[h + 1]].tolist() for h in range(len(k.counts))]
            for k in plan.keep]


# ------------------------------------------------------------------------------- KeyDiff


def test_keydiff_keeps_the_key_farthest_from_the_mean_direction() -> None:
    # unit keys (1,0) (1,0) (0,1) (-1,0) and (1,1)/sqrt2: their mean points along (1, 1), so the cosines are
    # .707, .707, .707, -.707, 1 and the scores their negatives; token 3 is the only positive one
    keys = torch.tensor([[[2.0, 0], [1, 0], [0, 3], [-1, 0], [1, 1]]])
    stats = _layer(5, keys=keys)
    s = math.sqrt(0.5)
    assert key_diversity(keys)[0].tolist() == pytest.approx([-s, -s, -s, s, -1.0], abs=1e-6)
    assert _kept("keydiff", stats, 2, window=1) == [[[3, 4]]]


def test_keydiff_matches_a_plain_reference() -> None:
    keys = torch.randn(3, 17, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = torch.empty(3, 17, dtype=torch.float64)
    for h in range(3):
        anchor = sum(k / k.norm() for k in keys[h]) / 17
        for j in range(17):
            want[h, j] = -(keys[h, j] @ anchor) / (keys[h, j].norm() * anchor.norm())
    assert torch.allclose(key_diversity(keys).double(), want, atol=1e-5)


# ------------------------------------------------------------------------------- TOVA


def test_tova_keeps_what_the_last_query_attends_to() -> None:
    # two query heads share one KV head: their mean row is .1 .4 .05 .3 .15 -> tokens 1 and 3, plus the window
    rows = torch.tensor([[0.2, 0.3, 0.1, 0.2, 0.2], [0.0, 0.5, 0.0, 0.4, 0.1]])
    stats = _layer(5, hq=2, hkv=1, last_attn=rows)
    assert _kept("tova", stats, 3, window=1) == [[[1, 3, 4]]]
    with pytest.raises(ValueError, match="last_query"):
        resolve_policy("tova").plan(_layer(5), 3, 1)


def test_tova_is_the_group_mean_of_the_last_attention_row() -> None:
    stats = make_stats(n_q_heads=4, n_kv_heads=2, n=12)
    layer = stats.layers[1]
    assert layer.last_attn is not None
    got = resolve_policy("tova").scorer.score(layer, stats)
    assert torch.allclose(got, layer.last_attn.view(2, 2, 12).mean(1))


# ------------------------------------------------------------------------------- DefensiveKV's aggregation


def test_max_aggregation_with_the_mean_clamp_by_hand() -> None:
    # prefix maxima .5 .1 .05 .3 (mean .2375): the clamp lifts tokens 1 and 2 to .2375
    win_max = torch.tensor([[0.5, 0.1, 0.05, 0.3, 0.9, 1.0]])
    stats = _layer(6, window=2, win_max=win_max)
    plain = {"name": "d", "scorer": "defensive", "allocator": "uniform", "kernel": 1, "pooling": "none"}
    score = resolve_policy(plain).scorer.score(stats.layers[0], stats)
    assert score[0].tolist() == pytest.approx([0.5, 0.2375, 0.2375, 0.3, 0.9, 1.0])
    assert _kept(plain, stats, 4, window=2) == [[[0, 3, 4, 5]]]
    # weighted by value norms 1 1 5 1, the clamped token 2 (.2375 * 5) beats token 3; without the clamp it
    # would not (.05 * 5 < .3)
    norms = torch.tensor([[1.0, 1, 5, 1, 1, 1]])
    stats = _layer(6, window=2, win_max=win_max, value_norms=norms)
    critical = {"name": "c", "scorer": "critical", "allocator": "uniform", "inner": "defensive",
                "inner_params": {"kernel": 1, "pooling": "none"}, "epsilon": 0.0}
    assert _kept(critical, stats, 4, window=2) == [[[0, 2, 4, 5]]]
    unclamped = {**critical, "inner_params": {"kernel": 1, "pooling": "none", "clamp": False}}
    assert _kept(unclamped, stats, 4, window=2) == [[[0, 3, 4, 5]]]


def test_defensive_scores_match_a_plain_reference() -> None:
    stats = make_stats(n_q_heads=4, n_kv_heads=2, n=20, window=5)
    layer = stats.layers[2]
    got = resolve_policy({"name": "d", "scorer": "defensive", "allocator": "uniform"}).scorer.score(layer, stats)
    assert layer.win_max is not None
    pooled = torch.nn.functional.max_pool1d(layer.win_max[None, :, :15], 7, 1, 3)[0]
    # max pooling commutes with the max over window queries: pooling each row first gives the same maxima
    group = pooled.view(2, 2, 15).mean(1)
    want = torch.maximum(group, group.mean(-1, keepdim=True))
    assert torch.allclose(got[:, :15], want, atol=1e-6)
    assert torch.equal(mean_clamp(got, 0), got)


# ------------------------------------------------------------------------------- ChunkKV


def test_chunks_are_kept_whole_by_hand() -> None:
    # size 3 over the prefix of 8: chunk sums 1 (tokens 0-2), 6 (3-5), 2 (6-7); 4 selectable tokens take
    # the chunk 3-5 whole and the first token of the chunk 6-7
    votes = torch.tensor([[1.0, 0, 0, 5, 0, 1, 2, 0, 0, 0]])
    stats = _layer(10, window=2, win_sum=votes)
    spec = {"name": "chunkkv", "size": 3, "inner_params": {"kernel": 1, "pooling": "none"}}
    assert _kept(spec, stats, 6, window=2) == [[[3, 4, 5, 6, 8, 9]]]
    scores = chunk_scores(votes, 8, 3)[0]
    assert scores[:8].tolist() == pytest.approx([1, 1, 1, 6, 6, 6, 2, 2], abs=1e-4)
    assert torch.equal(chunk_scores(votes, 8, 1), votes)


@pytest.mark.parametrize("size", [2, 5, 7])
def test_chunk_selection_matches_a_plain_reference(size: int) -> None:
    n, window, budget = 30, 4, 15
    votes = torch.rand(1, n, generator=torch.Generator().manual_seed(size))
    stats = _layer(n, window=window, win_sum=votes)
    spec = {"name": "chunkkv", "size": size, "inner_params": {"kernel": 1, "pooling": "none"}}
    prefix = n - window
    chunks = [list(range(s, min(s + size, prefix))) for s in range(0, prefix, size)]
    chunks.sort(key=lambda c: -float(votes[0, c].sum()))
    want: list[int] = []
    for c in chunks:
        want += c[: budget - window - len(want)]
    assert _kept(spec, stats, budget, window) == [[sorted(want) + list(range(prefix, n))]]


# ------------------------------------------------------------------------------- CriticalKV


def test_critical_weights_the_inner_scores_by_value_norms() -> None:
    # snapkv votes .5 .3 .2 .1 times norms 1 1 4 1 -> .5 .3 .8 .1: token 2 overtakes token 1
    votes = torch.tensor([[0.5, 0.3, 0.2, 0.1, 1.0]])
    norms = torch.tensor([[1.0, 1, 4, 1, 1]])
    stats = _layer(5, window=1, win_sum=votes, value_norms=norms)
    spec = {"name": "c", "scorer": "critical", "allocator": "uniform", "inner_params": {"kernel": 1}}
    assert _kept(spec, stats, 3, window=1) == [[[0, 2, 4]]]
    assert _kept({"name": "snapkv", "kernel": 1}, stats, 3, window=1) == [[[0, 1, 4]]]


@pytest.mark.parametrize("storage", ["kv", "query"])
def test_critical_matches_a_plain_reference(storage: str) -> None:
    stats = make_stats(n=16, storage=storage)
    policy = resolve_policy("criticalkv")
    snap = resolve_policy("snapkv")
    for layer in stats.layers:
        assert layer.value_norms is not None
        norms = layer.value_norms if storage == "query" else layer.value_norms.view(2, 2, 16).mean(1)
        want = (snap.scorer.score(layer, stats) + 1e-4) * norms
        assert torch.allclose(policy.scorer.score(layer, stats), want)


def test_modifiers_name_their_bad_inner_scorer() -> None:
    with pytest.raises(ConfigError, match="inner"):
        resolve_policy({"name": "chunkkv", "inner": "snapk"})
    with pytest.raises(ConfigError, match="kernal"):
        resolve_policy({"name": "criticalkv", "inner_params": {"kernal": 3}})
    # modifiers nest: chunks of critical defensive scores need both statistics
    nested = {"name": "chunkkv", "inner": "critical", "inner_params": {"inner": "defensive"}}
    assert resolve_policy(nested).needs == {"value_norms", "window_max"}


# ------------------------------------------------------------------------------- global allocator


def test_global_topk_across_layers_by_hand() -> None:
    # one head per layer, prefix 5: probabilities .4 .3 .2 .1 0 and .9 .1 0 0 0. Budget 3 with a window of 1
    # leaves 2 selectable per layer, 4 in all: .9 (layer 1), .4 .3 .2 (layer 0) -> layers keep 4 and 2
    stats = hand_stats([torch.tensor([[4.0, 3, 2, 1, 0, 9]]), torch.tensor([[9.0, 1, 0, 0, 0, 9]])], window=1)
    spec = {"name": "g", "scorer": "snapkv", "allocator": "global", "kernel": 1, "pooling": "none"}
    plan = resolve_policy(spec).plan(stats, 3, 1)
    assert plan.allocation.per_layer == [4, 2]
    assert _kept(spec, stats, 3, 1) == [[[0, 1, 2, 5]], [[0, 5]]]
    # a minimum share of 1 is the uniform split
    assert resolve_policy({**spec, "min_share": 1.0}).plan(stats, 3, 1).allocation.per_layer == [3, 3]


def test_global_matches_a_plain_reference_with_one_head() -> None:
    n, window, n_layers = 24, 4, 4
    stats = make_stats(n_layers=n_layers, n_q_heads=1, n_kv_heads=1, n=n, window=window)
    spec = {"name": "g", "scorer": "snapkv", "allocator": "global", "kernel": 1}  # no pooling: no ties
    policy = resolve_policy(spec)
    scores = [policy.scorer.score(layer, stats) for layer in stats.layers]
    probs = torch.cat([probabilities(s, n - window) for s in scores])  # [L, prefix]
    for budget in (5, 8, 13, 20):
        picked = torch.topk(probs.reshape(-1), n_layers * (budget - window)).indices
        want = [sorted((picked[picked // (n - window) == layer] % (n - window)).tolist()) for layer in range(n_layers)]
        kept = _kept(spec, stats, budget, window)
        assert [k[0][: len(k[0]) - window] for k in kept] == want


@pytest.mark.parametrize("storage", ["kv", "query"])
@pytest.mark.parametrize("min_share", [0.0, 0.3])
def test_global_counts_are_exact_with_floors(storage: str, min_share: float) -> None:
    n, window = 20, 4
    stats = make_stats(n_layers=4, n=n, window=window, storage=storage, sharpness=[0.1, 5.0, 1.0, 3.0])
    heads = stats.n_storage_heads
    policy = resolve_policy({"name": "layer-defensivekv", "min_share": min_share})
    for budget in range(window + 1, n):
        alloc = policy.plan(stats, budget, window).allocation
        assert sum(alloc.per_layer) == 4 * budget
        floor = window + math.ceil(min_share * (budget - window) - 1e-9)
        assert alloc.per_head is not None
        for layer, counts in enumerate(alloc.per_head):
            assert sum(counts) == heads * alloc.per_layer[layer]
            assert all(floor <= c <= n for c in counts)


def test_probabilities_shift_negative_scores() -> None:
    p = probabilities(torch.tensor([[-1.0, 0.0, 1.0, float("-inf"), 5.0]]), 4)
    assert p[0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 0])
    assert probabilities(torch.zeros(1, 4), 4)[0].tolist() == [0.25] * 4


# ------------------------------------------------------------------------------- profiled allocator


def _profile(tmp_path: Path, n_layers: int = 4, heads: list[list[float]] | None = None) -> Path:
    layer_means = [0.1, 0.3, 0.2, 0.4][:n_layers]
    rows = [{"measure": "lmbo", "param": "0.99", "layer": layer, "head": "all", "mean": m}
            for layer, m in enumerate(layer_means)]
    for layer, row in enumerate(heads or []):
        rows += [{"measure": "lmbo", "param": "0.99", "layer": layer, "head": str(h), "mean": m}
                 for h, m in enumerate(row)]
    (tmp_path / "profile.json").write_text(json.dumps({"n_layers": n_layers, "n_kv_heads": 2, "measures": rows}))
    return tmp_path


def test_profiled_budgets_by_hand(tmp_path: Path) -> None:
    # n 24, window 4, budget 10: floor max(2, 5) = 5; 20 tokens left split .1:.3:.2:.4 -> 7, 11, 9, 13
    folder = _profile(tmp_path, heads=[[1.0, 2.0], [1.0, 1.0], [3.0, 1.0], [1.0, 0.0]])
    stats = make_stats(n=24)
    spec = {"name": "p", "scorer": "snapkv", "allocator": "profiled", "profile": str(folder)}
    assert resolve_policy(spec).plan(stats, 10, 4).allocation.per_layer == [7, 11, 9, 13]
    # per head: layer 0 has 2 x 3 selectable split 1:2 -> 2, 4 (+ the window)
    alloc = resolve_policy({**spec, "heads": True}).plan(stats, 10, 4).allocation
    assert alloc.per_head == [[6, 8], [11, 11], [12, 6], [22, 4]]
    query = resolve_policy({**spec, "heads": True}).plan(make_stats(n=24, storage="query"), 10, 4).allocation
    assert query.per_head is not None and query.per_head[0] == [6, 6, 8, 8]  # a KV head's share per query head


def test_profiled_bad_files_name_the_path_and_the_fix(tmp_path: Path) -> None:
    spec = {"name": "p", "scorer": "snapkv", "allocator": "profiled"}
    with pytest.raises(ConfigError, match="does not exist.*lukv-bench profile"):
        resolve_policy({**spec, "profile": str(tmp_path / "nope.json")})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        resolve_policy({**spec, "profile": str(tmp_path / "bad.json")})
    with pytest.raises(ConfigError, match="set `profile`"):
        resolve_policy(spec)
    folder = _profile(tmp_path, n_layers=3)
    policy = resolve_policy({**spec, "profile": str(folder)})
    with pytest.raises(ConfigError, match="3 layers.*has 4"):
        policy.plan(make_stats(n=24), 10, 4)
    with pytest.raises(ConfigError, match="0.95"):
        resolve_policy({**spec, "profile": str(folder), "param": "0.95"})
    with pytest.raises(ConfigError, match="per-head"):
        resolve_policy({**spec, "profile": str(folder), "heads": True})


@pytest.mark.parametrize("storage", ["kv", "query"])
def test_profiled_gives_valid_exact_allocations(tmp_path: Path, storage: str) -> None:
    folder = _profile(tmp_path, heads=[[1.0, 2.0], [1.0, 1.0], [3.0, 1.0], [1.0, 0.0]])
    stats = make_stats(n=20, storage=storage)
    policy = resolve_policy({"name": "p", "scorer": "snapkv", "allocator": "profiled", "profile": str(folder),
                             "heads": True})
    for budget in range(1, 25):
        plan = policy.plan(stats, budget, 4)
        assert sum(plan.allocation.per_layer) == 4 * min(budget, 20)
        for keep in plan.keep:
            assert sum(keep.counts) == len(keep.indices)


# ------------------------------------------------------------------------------- the presets


@pytest.mark.parametrize("name", NEW_PRESETS)
def test_presets_name_their_paper(name: str) -> None:
    from lukv_bench.registry import list_policies

    described = {p["name"]: p for p in list_policies()}[name]
    assert "2024" in str(described) or "2025" in str(described)


# ------------------------------------------------------------------------------- capture


def test_capture_computes_the_new_statistics_only_when_asked() -> None:
    from lukv_bench.runtime.capture import Capture

    gen = torch.Generator().manual_seed(3)
    hq, hkv, n, d, hidden = 4, 2, 10, 4, 6
    q, k, v = (torch.randn(1, h, n, d, generator=gen) for h in (hq, hkv, hkv))
    module = torch.nn.Module()
    module.layer_idx = 0  # type: ignore[assignment]
    module.o_proj = torch.nn.Linear(hq * d, hidden, bias=False)
    kk = k[0].repeat_interleave(2, 0)
    logits = (q[0] @ kk.transpose(1, 2)) * d**-0.5
    dense = torch.softmax(logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")), -1)
    cap = Capture(window=3, needs=frozenset({"last_query", "window_max", "value_norms"}))
    cap.attention(module, q, k, v, d**-0.5)
    got = cap.optional_stats(0)
    assert got["acc_attn"] is None
    assert torch.allclose(got["last_attn"], dense[:, -1], atol=1e-6)
    assert torch.allclose(got["win_max"], dense[:, -3:].amax(1), atol=1e-6)
    weight = module.o_proj.weight.detach()
    norms = torch.stack([(v[0, h // 2] @ weight[:, h * d : (h + 1) * d].T).abs().sum(-1) for h in range(hq)])
    assert torch.allclose(got["value_norms"], norms, atol=1e-5)
    plain = Capture(window=3)
    plain.attention(module, q, k, v, d**-0.5)
    assert all(x is None for x in plain.optional_stats(0).values())
    with pytest.raises(ValueError, match="o_proj"):
        Capture(window=3, needs=frozenset({"value_norms"})).attention(_bare(), q, k, v, d**-0.5)


def _bare() -> torch.nn.Module:
    module = torch.nn.Module()
    module.layer_idx = 0  # type: ignore[assignment]
    return module


def test_a_suite_with_a_missing_profile_is_bad_input(tmp_path: Path) -> None:
    from lukv_bench.config.suite import SuiteError, load_suite

    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: x\nmodel: embedded\nbudgets: [0.5]\n"
        "policies: [{name: p, scorer: snapkv, allocator: profiled, profile: missing/profile.json}]\n"
        "tasks:\n  - {name: passkey, type: needle, lengths: [500], depths: [0.5]}\n"
    )
    with pytest.raises(SuiteError, match=r"policies\[0\].*missing/profile.json.*lukv-bench profile") as err:
        load_suite(suite)
    assert err.value.exit_code == 2
