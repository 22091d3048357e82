"""TOVA's decode rule and the newest-query attention the cache records for it, on hand-computed tensors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from lukv_bench.kernels.ops import RaggedStore, compact
from lukv_bench.policies.tova import TOVARule, tova_decode_keep

from lukv_bench.registry import resolve_policy
from lukv_bench.runtime.cache import RaggedCache, RaggedLayer
from lukv_bench.runtime.contract import NEWEST_ATTENTION, decode_needs

LN4 = math.log(4.0)


def _one_head_cache(keys: torch.Tensor, n_q_heads: int = 2, headroom: int = 4) -> RaggedCache:
    """One layer, one cell, one storage head holding ``keys`` (values = keys) and read by ``n_q_heads`` queries."""
    c, d = keys.shape
    store = RaggedStore.empty([c], d, torch.float32, "cpu", headroom=headroom)
    compact(keys[None], keys[None].clone(), torch.arange(c), torch.tensor([0, c]), store.starts, store.k, store.v)
    return RaggedCache([RaggedLayer(store, heads=1)], n_cells=1, n_q_heads=n_q_heads, logical_len=c)


def _step(cache: RaggedCache, new_key: torch.Tensor, queries: torch.Tensor) -> None:
    """Append one token ([D]) and run the attention of its query heads ([Hq, D]) with scaling 1."""
    k = new_key.view(1, 1, 1, -1)
    cache.update(k, k.clone(), 0)
    cache.attention(SimpleNamespace(layer_idx=0), queries.view(1, -1, 1, queries.shape[-1]), k, k, 1.0)


def test_newest_attention_and_the_entry_tova_evicts_by_hand() -> None:
    """Keys e1, e2, -e1 and a new key 0, read by two query heads (GQA group of 2), scaling 1:

    q1 = ln4*e1 gives logits (ln4, 0, -ln4, 0): weights (4, 1, 1/4, 1) / 6.25 = (.64, .16, .04, .16);
    q2 = ln4*e2 gives logits (0, ln4, 0, 0): weights (1, 4, 1, 1) / 7. The group mean is lowest for
    entry 2 (-e1), so a head held at 3 entries drops it, neither the oldest nor the newest.
    """
    cache = _one_head_cache(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    cache.watch(0, "mean")
    _step(cache, torch.zeros(2), torch.tensor([[LN4, 0.0], [0.0, LN4]]))
    (att,) = cache.newest_attention(0, 0)
    q1 = torch.tensor([0.64, 0.16, 0.04, 0.16])
    q2 = torch.tensor([1.0, 4.0, 1.0, 1.0]) / 7
    torch.testing.assert_close(att, (q1 + q2) / 2)
    keep = TOVARule()([4], 4, [3], {}, attention=[att])
    assert keep is not None and keep[0].tolist() == [0, 1, 3]
    cache.evict(0, 0, keep)
    k, _ = cache.layers[0].store.segment(0)
    assert torch.equal(k, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    assert cache.get_seq_length() == 4  # positions keep counting


def test_max_reduction_and_query_head_storage() -> None:
    """``max`` folds the group by its largest weight; a head read by one query head takes that head's row."""
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queries = torch.tensor([[LN4, 0.0], [0.0, LN4]])
    cache = _one_head_cache(keys)
    cache.watch(0, "max")
    _step(cache, torch.zeros(2), queries)
    want = torch.maximum(torch.tensor([0.64, 0.16, 0.04, 0.16]), torch.tensor([1.0, 4.0, 1.0, 1.0]) / 7)
    torch.testing.assert_close(cache.newest_attention(0, 0)[0], want)
    single = _one_head_cache(keys, n_q_heads=1)
    single.watch(0)
    _step(single, torch.zeros(2), queries[:1])
    torch.testing.assert_close(single.newest_attention(0, 0)[0], torch.tensor([0.64, 0.16, 0.04, 0.16]))


def test_newest_token_itself_can_be_evicted() -> None:
    """TOVA ranks the new token with the others: one the newest query ignores is the one dropped."""
    cache = _one_head_cache(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), n_q_heads=1)
    cache.watch(0)
    _step(cache, torch.tensor([-1.0, 0.0]), torch.tensor([[LN4, LN4]]))  # logits (ln4, ln4, -ln4)
    (att,) = cache.newest_attention(0, 0)
    keep = tova_decode_keep([att], [2])
    assert keep is not None and keep[0].tolist() == [0, 1]


def test_tova_keep_rule() -> None:
    """Heads within budget keep all; over budget the lowest go, older first among ties; None when nobody is over."""
    att = [torch.tensor([0.1, 0.5, 0.1, 0.3]), torch.tensor([0.2, 0.8])]
    assert tova_decode_keep(att, [4, 2]) is None
    keep = tova_decode_keep(att, [2, 2])
    assert keep is not None and [k.tolist() for k in keep] == [[1, 3], [0, 1]]
    keep = tova_decode_keep(att, [3, 1])
    assert keep is not None and [k.tolist() for k in keep] == [[1, 2, 3], [1]]
    keep = tova_decode_keep(att, [2, 1], sinks=1)  # the sink stays, whatever its weight
    assert keep is not None and [k.tolist() for k in keep] == [[0, 1], [0]]
    with pytest.raises(ValueError, match="newest query"):
        TOVARule()([4], 4, [3], {})
    with pytest.raises(ValueError, match="entries per head"):
        TOVARule()([5], 5, [3], {}, attention=[att[0]])


def test_only_watched_cells_pay_for_the_attention() -> None:
    """An unwatched cell records nothing; asking for it is an error rather than a stale answer."""
    cache = _one_head_cache(torch.tensor([[1.0, 0.0]]), n_q_heads=1)
    _step(cache, torch.zeros(2), torch.tensor([[1.0, 0.0]]))
    assert cache.layers[0].newest == {}
    with pytest.raises(RuntimeError, match="not watched"):
        cache.newest_attention(0, 0)


def test_tova_preset_uses_the_tova_decode_rule() -> None:
    policy = resolve_policy("tova")
    assert policy.decode_rule == "tova"
    assert policy.decode_needs == frozenset({NEWEST_ATTENTION})
    assert decode_needs(resolve_policy("streaming").decode_fn) == frozenset()
    assert resolve_policy("streaming").decode_needs == frozenset()
