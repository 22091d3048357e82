"""Built-in scorers and allocators on small hand-computed cases (CPU, no model)."""

from __future__ import annotations

import math

import pytest
import torch
from lukv_bench.policies._allocation import largest_remainder, proportional_split, water_fill
from lukv_bench.policies.adakv import AdaKVAllocator, head_counts
from lukv_bench.policies.cake import CakeAllocator, CakeScorer, preferences
from lukv_bench.policies.h2o import H2OScorer
from lukv_bench.policies.layer_uncertainty import LayerUncertaintyAllocator, minimum_budget
from lukv_bench.policies.pyramidkv import PyramidAllocator, pyramid_schedule
from lukv_bench.policies.random_scores import RandomScorer
from lukv_bench.policies.snapkv import SnapKVScorer, pool_prefix
from lukv_bench.policies.streaming import RecencyScorer, streaming_decode_keep
from support import make_stats, uncertainty_stats

from lukv_bench.registry import list_policies, resolve_policy
from lukv_bench.runtime.contract import LayerStats, PrefillStats

# ------------------------------------------------------------------------------- shared helpers


def test_proportional_split_hand() -> None:
    # floors 2 each, 14 left split 1:3:3 -> 2+2, 2+6, 2+6
    assert proportional_split(20, [1, 3, 3], lo=2, hi=100) == [4, 8, 8]
    # cap 6: the two big ones overflow; 14-4-4=6 spills... all capped except the first
    assert proportional_split(18, [1, 3, 3], lo=2, hi=6) == [6, 6, 6]
    # 10 over weights 1,1,1 -> 3.33 each; the remainder goes to the lowest index on ties
    assert proportional_split(10, [1, 1, 1]) == [4, 3, 3]
    # zero weights share evenly
    assert proportional_split(9, [0, 0, 0], lo=1) == [3, 3, 3]


def test_water_fill_redistributes_in_proportion() -> None:
    # 30 over weights 18:1:2 with floor 3 -> 21, 4, 5; cap 20 moves 1 over 1:2
    x = water_fill(30, [18, 1, 2], lo=3, hi=20)
    assert x == pytest.approx([20, 4 + 1 / 3, 5 + 2 / 3])
    with pytest.raises(ValueError):
        water_fill(100, [1, 1], hi=10)


def test_largest_remainder() -> None:
    assert largest_remainder([1.5, 1.5, 1.0], 4) == [2, 1, 1]
    assert largest_remainder([2.2, 2.7, 1.1], 6) == [2, 3, 1]
    assert largest_remainder([5.0, 5.0], 8, lo=3) == [4, 4]  # values above the total: take back
    assert sum(largest_remainder([0.3] * 7, 2, hi=1)) == 2


# ------------------------------------------------------------------------------- scorers


def test_recency_scores_positions() -> None:
    stats = make_stats(n=10)
    s = RecencyScorer().score(stats.layers[0], stats)
    assert s.shape == (2, 10)
    assert torch.equal(s[1], torch.arange(10, dtype=torch.float32))


def test_random_is_seeded_and_deterministic() -> None:
    stats = make_stats(n=30)
    a = RandomScorer(seed=3).score(stats.layers[1], stats)
    b = RandomScorer(seed=3).score(stats.layers[1], stats)
    c = RandomScorer(seed=4).score(stats.layers[1], stats)
    d = RandomScorer(seed=3).score(stats.layers[2], stats)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, d)
    p1 = resolve_policy({"name": "random", "seed": 7}).plan(stats, 10, window=2)
    p2 = resolve_policy({"name": "random", "seed": 7}).plan(stats, 10, window=2)
    assert all(torch.equal(x.indices, y.indices) for x, y in zip(p1.keep, p2.keep, strict=True))


def _one_layer(win_sum: torch.Tensor, window: int, acc: torch.Tensor | None = None) -> PrefillStats:
    hq, n = win_sum.shape
    layer = LayerStats(
        layer=0,
        keys=torch.zeros(hq, n, 2),
        values=torch.zeros(hq, n, 2),
        win_sum=win_sum.float(),
        win_sumsq=win_sum.float() ** 2,
        win_entropy=torch.zeros(hq),
        window=window,
        acc_attn=acc,
    )
    return PrefillStats(layers=[layer], n_q_heads=hq, n_kv_heads=hq)


def test_h2o_uses_accumulated_attention() -> None:
    acc = torch.tensor([[5.0, 1.0, 3.0, 2.0, 1.0, 1.0]])
    win = torch.tensor([[0.0, 9.0, 0.0, 0.0, 0.5, 0.5]])  # would rank token 1 first
    stats = _one_layer(win, window=2, acc=acc)
    s = H2OScorer().score(stats.layers[0], stats)
    assert torch.equal(s, acc)
    # normalised: divide by the number of queries that see token j, n - j = 6..1
    sn = H2OScorer(normalize=True).score(stats.layers[0], stats)
    assert torch.allclose(sn, acc / torch.tensor([6.0, 5, 4, 3, 2, 1]))
    keep = resolve_policy("h2o").plan(stats, 4, window=2).keep[0]
    assert keep.indices.tolist() == [0, 2, 4, 5]
    with pytest.raises(ValueError, match="accumulated"):
        H2OScorer().score(_one_layer(win, 2).layers[0], _one_layer(win, 2))


def test_h2o_gqa_reduces_query_heads_by_mean() -> None:
    stats = make_stats(n_q_heads=4, n_kv_heads=2, n=12)
    layer = stats.layers[0]
    s = H2OScorer().score(layer, stats)
    assert layer.acc_attn is not None
    assert torch.allclose(s[1], layer.acc_attn[2:4].mean(0))


def test_snapkv_pooling() -> None:
    votes = torch.zeros(1, 12)
    votes[0, 5] = 3.0
    votes[0, 0] = 3.0
    votes[0, 10:] = 100.0  # window votes must not leak into the prefix through pooling
    mx = pool_prefix(votes, prefix=10, kernel=3, pooling="max")
    assert mx[0, :10].tolist() == [3, 3, 0, 0, 3, 3, 3, 0, 0, 0]
    assert mx[0, 10:].tolist() == [100, 100]
    avg = pool_prefix(votes, prefix=10, kernel=3, pooling="avg")
    # zero padding is counted, so the boundary token gets (0 + 3 + 0) / 3
    assert avg[0, :10].tolist() == pytest.approx([1, 1, 0, 0, 1, 1, 1, 0, 0, 0])
    assert torch.equal(pool_prefix(votes, 10, 3, "none"), votes)
    assert torch.equal(pool_prefix(votes, 10, 1, "max"), votes)
    stats = _one_layer(votes, window=2)
    assert torch.equal(SnapKVScorer(kernel=3, pooling="max").score(stats.layers[0], stats), mx)


def test_cake_indicator_is_mean_plus_gamma_var_pooled() -> None:
    stats = make_stats(n=16, n_q_heads=2, n_kv_heads=1, window=4)
    layer = stats.layers[0]
    expected = (layer.win_mean + 200.0 * layer.win_var).mean(0, keepdim=True)
    got = CakeScorer(kernel=1).score(layer, stats)
    assert torch.allclose(got[:, :12], expected[:, :12], atol=1e-6)
    pooled = CakeScorer().score(layer, stats)  # avg pool k=5 is linear: pool then mean == mean then pool
    assert torch.allclose(pooled, pool_prefix(expected, 12, 5, "avg"), atol=1e-6)


# ------------------------------------------------------------------------------- allocators


def test_pyramid_schedule_l4_by_hand() -> None:
    # n=100, B=20, w=4: C=16, min=16//20=0, max=32, step=32//3=10 -> C_l=32,22,12,2 -> +w
    assert pyramid_schedule(4, 20, 4, 100, beta=20) == [36, 26, 16, 6]  # sums to 84 > 80: the floor
    # beta=4: min=4, max=28, step=8 -> 28,20,12,4 -> exact
    assert pyramid_schedule(4, 20, 4, 100, beta=4) == [32, 24, 16, 8]
    # cap: n=34 -> max=32 >= n-w=30 -> max=30, min=2, step=9 -> 30,21,12,3
    assert pyramid_schedule(4, 20, 4, 34, beta=20) == [34, 25, 16, 7]
    # short input n < 2C -> uniform; L=1 -> uniform; budget <= window -> uniform; budget >= n -> n
    assert pyramid_schedule(4, 20, 4, 30, beta=20) == [20] * 4
    assert pyramid_schedule(1, 20, 4, 100, beta=20) == [20]
    assert pyramid_schedule(4, 3, 4, 100, beta=20) == [3] * 4
    assert pyramid_schedule(4, 50, 4, 40, beta=20) == [40] * 4
    # exact: 36, 25.33, 14.67, 4 -> largest remainder to 80
    assert pyramid_schedule(4, 20, 4, 100, beta=20, exact=True) == [36, 25, 15, 4]
    stats = make_stats(n_layers=4, n=100)
    assert PyramidAllocator(exact=False).allocate(stats, 20, 4, []).per_layer == [36, 26, 16, 6]
    assert PyramidAllocator().allocate(stats, 20, 4, []).per_layer == [36, 25, 15, 4]  # default: exact


def test_minimum_budget_hand() -> None:
    row = torch.tensor([[0.1, 0.5, 0.1, 0.3]])
    assert minimum_budget(row, 0.85).tolist() == [3]
    assert minimum_budget(row, 0.45).tolist() == [1]  # 0.5 alone holds 0.45 of the mass
    assert minimum_budget(row, 1.0).tolist() == [4]
    noisy = torch.softmax(torch.randn(3, 50), -1)
    assert (minimum_budget(noisy, 1.0) <= 50).all()


def test_layer_uncertainty_proportional_split_by_hand() -> None:
    # LMBA = 18, 1, 2 (sum 21); B=10, floor max(0.2*10, w+1=3) = 3; pool 30-9=21 -> 3 + 21*u = 21, 4, 5
    alloc = LayerUncertaintyAllocator().allocate(uncertainty_stats(40), 10, 2, [])
    assert alloc.per_layer == [21, 4, 5]
    assert alloc.info["lmba"] == [18, 1, 2]
    assert alloc.info["u"] == pytest.approx([18 / 21, 1 / 21, 2 / 21])
    assert alloc.info["floor"] == 3
    # n=20 caps layer 0 at 20; its extra token goes to layers 1, 2 in ratio 1:2 -> 4.33, 5.67 -> 4, 6
    assert LayerUncertaintyAllocator().allocate(uncertainty_stats(20), 10, 2, []).per_layer == [20, 4, 6]


def test_layer_uncertainty_uniform_at_floor_ratio_one() -> None:
    assert LayerUncertaintyAllocator(floor_ratio=1.0).allocate(uncertainty_stats(40), 10, 2, []).per_layer == [10] * 3
    # a budget at or below the window is uniform too (the floor never exceeds the mean)
    assert LayerUncertaintyAllocator().allocate(uncertainty_stats(40), 2, 2, []).per_layer == [2] * 3


@pytest.mark.parametrize("floor_ratio", [0.0, 0.2, 0.5])
def test_layer_uncertainty_sums_exactly_and_respects_floor_and_caps(floor_ratio: float) -> None:
    stats = make_stats(n_layers=6, n=40, window=4, sharpness=[0.2, 4.0, 1.0, 6.0, 0.5, 2.0])
    alloc = LayerUncertaintyAllocator(floor_ratio=floor_ratio)
    for budget in range(1, 41):
        per_layer = alloc.allocate(stats, budget, 4, []).per_layer
        assert sum(per_layer) == 6 * budget
        floor = min(budget, max(math.ceil(floor_ratio * budget), 5))
        assert all(floor <= c <= 40 for c in per_layer), (budget, per_layer)
    assert alloc.allocate(stats, 100, 4, []).per_layer == [40] * 6


def test_adakv_head_counts_by_hand() -> None:
    # S=2, prefix 6, C=3 (S*C = 6). Head 0 is flat, head 1 peaked.
    scores = torch.tensor([[1.0, 1, 1, 1, 1, 1], [0.9, 0.8, 0.7, 0.1, 0, 0]])
    # without normalisation the global top 6 are all head 0's ones
    assert head_counts(scores, 3, alpha=0.0, normalize=False) == [6, 0]
    # alpha .2 safeguard: 0.8*6 + 0.6 = 5.4, 0.8*0 + 0.6 = 0.6 -> 5, 1
    assert head_counts(scores, 3, alpha=0.2, normalize=False) == [5, 1]
    # normalise: rho = 3/6 and 2.4/2.5 -> head 0 all 0.5, head 1 .864 .768 .672 -> top 6 = 3 + 3
    assert head_counts(scores, 3, alpha=0.0, normalize=True) == [3, 3]


def test_adakv_allocation_is_per_head_with_window() -> None:
    win = torch.zeros(2, 8)
    win[0, :6] = 1.0
    win[1, :3] = torch.tensor([0.9, 0.8, 0.7])
    stats = _one_layer(win, window=2)
    alloc = AdaKVAllocator(alpha=0.0, normalize=False).allocate(stats, 5, 2, [win])
    assert alloc.per_layer == [5]
    assert alloc.per_head == [[8, 2]]
    keep = resolve_policy({"name": "adakv", "alpha": 0.0, "normalize": False, "kernel": 1}).plan(stats, 5, 2).keep
    assert keep[0].counts == [8, 2]
    assert keep[0].indices.tolist() == list(range(8)) + [6, 7]


def test_adakv_totals_exact_on_random_stats() -> None:
    stats = make_stats(n_layers=3, n=30, window=4)
    policy = resolve_policy("adakv")
    for budget in (1, 4, 5, 9, 17, 29):
        alloc = policy.plan(stats, budget, 4).allocation
        if budget <= 4:  # nothing selectable beyond the window: uniform
            assert alloc.per_head is None and alloc.per_layer == [budget] * 3
            continue
        assert alloc.per_head is not None
        for heads in alloc.per_head:
            assert sum(heads) == 2 * budget and min(heads) >= 4


def test_cake_preferences_and_allocation_by_hand() -> None:
    assert preferences([1, 2, 3], [4, 1, 1], 1.0, 1.0) == pytest.approx([4 / 9, 2 / 9, 3 / 9])
    assert preferences([1, 2], [1, 1], 0.5, 1.0) == pytest.approx([1 / 5, 4 / 5])  # D squared
    n, w = 100, 2
    layers = []
    for layer, (d, v) in enumerate([(1.0, 4.0), (2.0, 1.0), (3.0, 1.0)]):
        sumsq = torch.zeros(1, n)
        sumsq[0, 0] = v * w  # win_sum 0: var = sumsq / w
        layers.append(
            LayerStats(
                layer,
                torch.zeros(1, n, 2),
                torch.zeros(1, n, 2),
                torch.zeros(1, n),
                sumsq,
                torch.tensor([d]),
                w,
            )
        )
    stats = PrefillStats(layers=layers, n_q_heads=1, n_kv_heads=1)
    alloc = CakeAllocator().allocate(stats, 20, w, [])
    # total 60, window 2 each, 54 split 4:2:3 -> 24, 12, 18 -> +2
    assert alloc.per_layer == [26, 14, 20]
    assert alloc.info["dispersion"] == [1.0, 2.0, 3.0]
    assert alloc.info["shift"] == pytest.approx([4.0, 1.0, 1.0])


def test_cake_caps_and_exact_total() -> None:
    stats = make_stats(n_layers=5, n=32, window=4, sharpness=[0.1, 8.0, 1.0, 0.3, 3.0])
    for budget in range(1, 33):
        per_layer = CakeAllocator().allocate(stats, budget, 4, []).per_layer
        assert sum(per_layer) == 5 * budget
        assert all(min(budget, 4) <= c <= 32 for c in per_layer)


# ------------------------------------------------------------------------------- streaming


def test_streaming_keeps_sinks_and_recent() -> None:
    stats = make_stats(n=20)
    plan = resolve_policy("streaming").plan(stats, 10, window=4)
    for keep in plan.keep:
        assert keep.counts == [10, 10]
        assert keep.indices[:10].tolist() == [0, 1, 2, 3, 14, 15, 16, 17, 18, 19]


def test_streaming_decode_keep() -> None:
    policy = resolve_policy("streaming")
    assert policy.decode_rule == "streaming"
    assert policy.decode_keep([8, 10], logical_len=30, budget_per_head=[10, 10]) is None
    keep = policy.decode_keep([12, 8], logical_len=40, budget_per_head=[10, 10])
    assert keep is not None
    assert keep[0].tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 10, 11]
    assert keep[1].tolist() == list(range(8))
    assert streaming_decode_keep([6], [2], sinks=4)[0].tolist() == [0, 5]  # type: ignore[index]
    assert resolve_policy("snapkv").decode_keep([100], 100, [10]) is None


# ------------------------------------------------------------------------------- every policy


ALL = [p["name"] for p in list_policies()]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("storage", ["kv", "query"])
def test_budget_at_least_n_keeps_everything(name: str, storage: str) -> None:
    stats = make_stats(n=16, storage=storage)
    for budget in (16, 17, 1000):
        plan = resolve_policy(name).plan(stats, budget, window=4)
        assert plan.allocation.per_layer == [16] * 4
        heads = stats.n_storage_heads
        for keep in plan.keep:
            assert keep.counts == [16] * heads
            assert torch.equal(keep.indices, torch.arange(16).repeat(heads))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("storage", ["kv", "query"])
def test_every_budget_gives_valid_keep_sets(name: str, storage: str) -> None:
    n, window = 20, 4
    stats = make_stats(n_layers=4, n=n, window=window, storage=storage)
    heads = stats.n_storage_heads
    policy = resolve_policy(name)
    for budget in range(1, n + 1):
        plan = policy.plan(stats, budget, window=window)
        per_layer = plan.allocation.per_layer
        if name == "full":
            assert per_layer == [n] * 4
        else:
            assert sum(per_layer) == 4 * budget
        for layer, keep in enumerate(plan.keep):
            counts = keep.counts
            assert all(1 <= c <= n for c in counts)
            assert sum(counts) == heads * per_layer[layer]
            for h in range(heads):
                seg = keep.indices[keep.cu_seqlens[h] : keep.cu_seqlens[h + 1]]
                assert seg.unique().numel() == seg.numel() and bool((seg[1:] > seg[:-1]).all())
                assert 0 <= int(seg.min()) and int(seg.max()) < n
                newest = list(range(n - min(window, counts[h]), n))
                assert set(newest) <= set(seg.tolist())  # the window (or its newest part) is kept


def test_sinks_are_kept_after_the_window() -> None:
    stats = make_stats(n=20)
    keep = resolve_policy({"name": "snapkv", "sinks": 2}).plan(stats, 8, window=4).keep
    for k in keep:
        for h in range(2):
            seg = k.indices[k.cu_seqlens[h] : k.cu_seqlens[h + 1]].tolist()
            assert seg[:2] == [0, 1] and seg[-4:] == [16, 17, 18, 19] and len(seg) == 8
