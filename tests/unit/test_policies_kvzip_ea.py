"""Expected Attention and KVzip (issue 19) on hand-computed cases and against plain references (CPU, no model).

The statistics behind them (pre-RoPE queries, KVzip's repeat pass) are checked on the tiny model in
tests/integration/test_kvzip_ea_model.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lukv_bench.policies.expected_attention import mean_rotation
from support import make_stats

from lukv_bench.errors import ConfigError
from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.contract import LayerStats, PrefillStats, captured_needs, repeat_chunk, repeat_need


def _identity_rope(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE that does not rotate (cos 1, sin 0) over 2 dimensions: future queries are the prompt's."""
    return torch.ones(len(positions), 2), torch.zeros(len(positions), 2)


def _kept(spec: str | dict, stats: PrefillStats, budget: int, window: int) -> list[list[list[int]]]:
    """Kept indices per layer and storage head."""
    plan = resolve_policy(spec).plan(stats, budget, window)
    return [[k.indices[k.cu_seqlens[h] : k.cu_seqlens[h + 1]].tolist() for h in range(len(k.counts))]
            for k in plan.keep]


def _one_layer(n: int, hq: int, hkv: int, storage: str = "kv", **fields) -> PrefillStats:
    """One layer, window statistics zero, plus ``fields``; keys and values default to zeros of size 2."""
    s = hkv if storage == "kv" else hq
    base = {"keys": torch.zeros(s, n, 2), "values": torch.zeros(s, n, 2), "win_sum": torch.zeros(hq, n),
            "win_sumsq": torch.zeros(hq, n), "win_entropy": torch.zeros(hq)}
    base.update(fields)
    return PrefillStats(layers=[LayerStats(layer=0, window=1, **base)], n_q_heads=hq, n_kv_heads=hkv,
                        storage=storage)


# ------------------------------------------------------------------------------- Expected Attention


def test_mean_rotation_by_hand() -> None:
    # positions at angles 0 and 90 degrees over one pair of dimensions: R_0 = I, R_1 = [[0, -1], [1, 0]]
    cos = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    sin = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(mean_rotation(cos, sin, 2), torch.tensor([[0.5, -0.5], [0.5, 0.5]]))
    # partial rotary: the first 2 of 3 dimensions rotate, the third is left alone
    assert torch.allclose(mean_rotation(cos, sin, 3)[2], torch.tensor([0.0, 0.0, 1.0]))


def _ea_hand_stats() -> PrefillStats:
    # queries (1, 1), (1, -1), (1, 1), (1, -1), (1, 0): mean (1, 0), variance 0 along x and 0.8 along y.
    # With d = 2 the expected logits are mu.k / sqrt 2 + 0.8 k_y^2 / 4:
    #   k0 = (0, 0): 0;   k1 = (1, 0): 0.707;   k2 = (0, 2): 0.8 (0 without the covariance);   k3 = (-1, 0): -0.707
    queries = torch.tensor([[[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [1.0, 0.0]]])
    keys = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, 0.0]]])
    return _one_layer(5, 1, 1, keys=keys, values=torch.ones(1, 5, 2), queries=queries, rotary=_identity_rope)


def test_expected_attention_keeps_what_the_query_distribution_reaches() -> None:
    stats = _ea_hand_stats()
    ea = {"name": "ea", "scorer": "expected-attention", "allocator": "uniform", "skip": 0}
    # window 1 keeps token 4; one more token: k2 through the covariance, k1 with the mean alone
    assert _kept(ea, stats, 2, 1) == [[[2, 4]]]
    assert _kept({**ea, "covariance": False}, stats, 2, 1) == [[[1, 4]]]
    assert _kept(ea, stats, 3, 1) == [[[1, 2, 4]]]
    assert _kept(ea, stats, 4, 1) == [[[0, 1, 2, 4]]]  # k3 (-0.707) is the least expected
    # the first `skip` tokens tie with the head's best score, so they are kept first (kvpress's sinks); here the
    # statistics of queries 1-4 (mean (1, -.25), variance .69 along y) also put k1 (.71) before k2 (.33)
    assert _kept({**ea, "skip": 1}, stats, 3, 1) == [[[0, 1, 4]]]


def test_expected_attention_scores_by_hand() -> None:
    stats = _ea_hand_stats()
    policy = resolve_policy({"name": "ea", "scorer": "expected-attention", "allocator": "uniform", "skip": 0,
                             "value_norm": False})
    got = policy.scorer.score(stats.layers[0], stats)
    logits = torch.tensor([0.0, 1 / math.sqrt(2), 0.8, -1 / math.sqrt(2), 0.0])
    assert torch.allclose(got, torch.softmax(logits, 0)[None], atol=1e-6)


def _plain_expected_attention(layer: LayerStats, hq: int, storage: str, skip: int, future: int,
                              covariance: bool = True) -> np.ndarray:
    """Expected Attention with explicit per-position rotation matrices, numpy covariance and loops."""
    q = layer.queries.double().numpy()
    keys = layer.keys.double().numpy()
    values = layer.values.double().numpy()
    n, d = q.shape[1], q.shape[2]
    cos, sin = (t.double().numpy() for t in layer.rotary(torch.arange(n, n + future)))
    half = d // 2
    rotations = []
    for t in range(future):
        r = np.zeros((d, d))
        for i in range(half):  # pair (i, i + half) turns by the position's angle
            r[i, i], r[i, i + half] = cos[t, i], -sin[t, i]
            r[i + half, i], r[i + half, i + half] = sin[t, i + half], cos[t, i + half]
        rotations.append(r)
    rot = np.mean(rotations, axis=0)
    s = keys.shape[0]
    per_head = np.zeros((hq, n - skip))
    for h in range(hq):
        mu = rot @ q[h, skip:].mean(axis=0)
        cov = rot @ np.cov(q[h, skip:].T, bias=True) @ rot.T
        k = keys[h * s // hq, skip:]
        z = np.array([mu @ kj / math.sqrt(d) + (kj @ cov @ kj / (2 * d) if covariance else 0.0) for kj in k])
        per_head[h] = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    group = hq // s
    scores = per_head.reshape(s, group, n - skip).mean(axis=1) * np.linalg.norm(values[:, skip:], axis=-1)
    return np.concatenate([np.repeat(scores.max(axis=1, keepdims=True), skip, axis=1), scores], axis=1)


@pytest.mark.parametrize("storage", ["kv", "query"])
@pytest.mark.parametrize("covariance", [True, False])
def test_expected_attention_matches_a_plain_reference(storage: str, covariance: bool) -> None:
    stats = make_stats(n_layers=2, n=24, storage=storage, seed=5)
    policy = resolve_policy({"name": "ea", "scorer": "expected-attention", "allocator": "uniform", "future": 7,
                             "covariance": covariance})
    for layer in stats.layers:
        want = _plain_expected_attention(layer, stats.n_q_heads, storage, skip=4, future=7, covariance=covariance)
        got = policy.scorer.score(layer, stats).double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)
    # the kept set is each head's window plus its best-scored prefix tokens
    plan = policy.plan(stats, 10, window=4)
    for layer, keep in zip(stats.layers, plan.keep):
        ref = _plain_expected_attention(layer, stats.n_q_heads, storage, skip=4, future=7, covariance=covariance)
        for h in range(stats.n_storage_heads):
            best = np.argsort(-ref[h, :20], kind="stable")[:6].tolist()
            assert keep.indices[keep.cu_seqlens[h] : keep.cu_seqlens[h + 1]].tolist() == sorted(best + [20, 21, 22, 23])


def test_expected_attention_recent_queries_only() -> None:
    # with recent = 1 the statistics come from the last query alone: (1, 0), no variance, so k1 beats k2
    stats = _ea_hand_stats()
    ea = {"name": "ea", "scorer": "expected-attention", "allocator": "uniform", "skip": 0, "recent": 1}
    assert _kept(ea, stats, 2, 1) == [[[1, 4]]]


# ------------------------------------------------------------------------------- KVzip


def _kvzip_hand_stats(storage: str) -> PrefillStats:
    # two query heads over one KV head: head 0 repeats through tokens 0 and 2, head 1 through 1 and 2;
    # the group maximum is (.6, .7, .5, 0, 0) on the prefix (the group mean would rank 2 and 1 first)
    repeat = torch.tensor([[0.6, 0.0, 0.5, 0.0, 0.0, 0.9], [0.0, 0.7, 0.5, 0.0, 0.0, 0.9]])
    return _one_layer(6, 2, 1, storage, repeat_max={2048: repeat})


def test_kvzip_keeps_the_group_maximum_of_the_repeat_attention() -> None:
    assert _kept("kvzip", _kvzip_hand_stats("kv"), 3, 1) == [[[0, 1, 5]]]
    assert _kept("kvzip", _kvzip_hand_stats("query"), 3, 1) == [[[0, 2, 5], [1, 2, 5]]]


@pytest.mark.parametrize("storage", ["kv", "query"])
def test_kvzip_matches_a_plain_reference(storage: str) -> None:
    gen = torch.Generator().manual_seed(2)
    hq, hkv, n, window, budget = 4, 2, 30, 3, 11
    repeat = torch.rand(hq, n, generator=gen)
    stats = _one_layer(n, hq, hkv, storage, repeat_max={16: repeat})
    kept = _kept({"name": "kz", "scorer": "kvzip", "allocator": "uniform", "chunk": 16}, stats, budget, window)[0]
    heads = [[h] for h in range(hq)] if storage == "query" else [[0, 1], [2, 3]]
    for s, members in enumerate(heads):
        score = [max(float(repeat[h, j]) for h in members) for j in range(n - window)]
        best = sorted(range(n - window), key=lambda j: -score[j])[: budget - window]
        assert kept[s] == sorted(best + list(range(n - window, n)))


def test_kvzip_names_the_missing_statistic() -> None:
    stats = _kvzip_hand_stats("kv")
    with pytest.raises(ValueError, match="repeat:512"):
        resolve_policy({"name": "kz", "scorer": "kvzip", "allocator": "uniform", "chunk": 512}).plan(stats, 3, 1)


# ------------------------------------------------------------------------------- needs and parameters


def test_repeat_needs_carry_their_chunk() -> None:
    assert resolve_policy("kvzip").needs == {repeat_need(2048)} == {"repeat:2048"}
    assert resolve_policy({"name": "kz", "scorer": "kvzip", "allocator": "uniform", "chunk": 64}).needs == {"repeat:64"}
    assert repeat_chunk("repeat:64") == 64
    assert repeat_chunk("repeat") is None and repeat_chunk("repeat:0") is None and repeat_chunk("queries") is None
    assert captured_needs({"repeat:64", "queries", "window", "nonsense"}) == {"repeat:64", "queries"}
    assert resolve_policy("expected-attention").needs == {"queries"}


@pytest.mark.parametrize(("spec", "needle"), [
    ({"scorer": "kvzip", "chunk": 0}, "chunk"),
    ({"scorer": "expected-attention", "future": 0}, "future"),
    ({"scorer": "expected-attention", "recent": -1}, "recent"),
    ({"scorer": "expected-attention", "epsilon": -0.1}, "epsilon"),
])
def test_bad_parameters_are_config_errors(spec: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        resolve_policy({"name": "bad", "allocator": "uniform", **spec})
