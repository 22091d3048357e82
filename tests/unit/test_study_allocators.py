"""The study's allocators: redirected uncertainty, output-cosine (online LMBO) and the head-wise split."""

from __future__ import annotations

import pytest
import torch
from lukv_bench.policies.layer_uncertainty import LayerUncertaintyAllocator
from lukv_bench.policies.output_cosine import OutputCosineAllocator, cosine_curve
from lukv_bench.policies.redirected_uncertainty import RedirectedUncertaintyAllocator
from lukv_bench.policies.snapkv import SnapKVScorer
from support import hand_stats, make_stats, uncertainty_stats

from lukv_bench.errors import ConfigError
from lukv_bench.registry import resolve_policy


def _scores(stats):
    scorer = SnapKVScorer()
    return [scorer.score(layer, stats) for layer in stats.layers]


def test_power_one_is_layer_uncertainty() -> None:
    stats = make_stats(n_layers=5, n=40, window=4, sharpness=[0.5, 4.0, 1.0, 8.0, 2.0])
    for budget in (6, 10, 20):
        faithful = LayerUncertaintyAllocator().allocate(stats, budget, 4, [])
        same = RedirectedUncertaintyAllocator(power=1.0).allocate(stats, budget, 4, _scores(stats))
        assert same.per_layer == faithful.per_layer and same.per_head is None


def test_inverse_power_gives_sharp_layers_more_by_hand() -> None:
    # LMBA 18, 1, 2 -> shares 1/18, 1, 1/2 (sum 1.5556); floor 3; pool 21 -> 3 + 21 * share
    alloc = RedirectedUncertaintyAllocator(power=-1.0).allocate(uncertainty_stats(40), 10, 2, [])
    shares = [1 / 18 / (1 / 18 + 1 + 0.5), 1 / (1 / 18 + 1 + 0.5), 0.5 / (1 / 18 + 1 + 0.5)]
    assert alloc.info["u"] == pytest.approx(shares)
    assert sum(alloc.per_layer) == 30
    assert alloc.per_layer[1] > alloc.per_layer[2] > alloc.per_layer[0]
    assert alloc.per_layer == [4, 16, 10]  # 3.75, 16.5, 9.75 -> largest remainders
    # power 0: uniform above the floor
    assert RedirectedUncertaintyAllocator(power=0.0).allocate(uncertainty_stats(40), 10, 2, []).per_layer == [10] * 3


def test_headwise_split_keeps_each_layer_total() -> None:
    stats = make_stats(n_layers=3, n_q_heads=4, n_kv_heads=2, n=40, window=4)
    scores = _scores(stats)
    alloc = RedirectedUncertaintyAllocator(power=-1.0, head_alpha=0.2).allocate(stats, 12, 4, scores)
    assert alloc.per_head is not None
    for b, heads in zip(alloc.per_layer, alloc.per_head, strict=True):
        assert sum(heads) == 2 * b and min(heads) >= 4  # every head keeps the window
    assert any(len(set(h)) > 1 for h in alloc.per_head)


def test_cosine_curve_reaches_one_with_everything_kept() -> None:
    stats = make_stats(n_layers=2, n=30, window=4, head_dim=8)
    for layer, s in zip(stats.layers, _scores(stats), strict=True):
        layer.values = torch.randn_like(layer.values)
        curve = cosine_curve(layer, s, 4)
        assert curve.shape == (27,)
        assert curve[-1].item() == pytest.approx(1.0, abs=1e-5)


def test_output_cosine_gives_more_to_the_layer_whose_output_needs_it() -> None:
    # layer 0: output depends on 20 tokens with orthogonal values; layer 1: one token holds everything
    n, w = 40, 2
    spread = torch.zeros(1, n)
    spread[0, :20] = 1 / 20
    spike = torch.zeros(1, n)
    spike[0, 5] = 1.0
    stats = hand_stats([spread, spike], window=w)
    eye = torch.eye(n)[:, :n].unsqueeze(0)  # value j = e_j: every kept token changes the output
    for layer in stats.layers:
        layer.values = eye.clone()
    alloc = OutputCosineAllocator().allocate(stats, 10, w, _scores(stats))
    assert sum(alloc.per_layer) == 20
    assert alloc.per_layer[0] > alloc.per_layer[1]
    assert alloc.info["need"][1] <= alloc.info["need"][0]


def test_registered_and_checked() -> None:
    p = resolve_policy({"name": "inv", "scorer": "snapkv", "allocator": "redirected-uncertainty", "power": -1,
                        "kernel": 15})
    assert p.params["power"] == -1 and p.params["kernel"] == 15
    with pytest.raises(ConfigError, match="head_alpha"):
        resolve_policy({"name": "x", "scorer": "snapkv", "allocator": "output-cosine", "head_alpha": 2.0})
