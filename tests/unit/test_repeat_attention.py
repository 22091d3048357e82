"""KVzip's fused repeat attention (``runtime.capture.attention_and_column_max``) against a plain reference."""

from __future__ import annotations

import pytest
import torch

import lukv_bench.runtime.capture as capture
from lukv_bench.runtime.capture import attention_and_column_max


def _plain(query, key, value, prefix, scaling, softcap):
    """float64, one query head at a time, the whole [m, T] attention matrix materialised."""
    _, hq, m, _ = query.shape
    group = hq // key.shape[1]
    total = prefix + m
    outs, seen = [], []
    for h in range(hq):
        k, v = key[0, h // group].double(), value[0, h // group].double()
        logits = query[0, h].double() @ k.T * scaling
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        visible = torch.arange(total)[None, :] <= (prefix + torch.arange(m))[:, None]
        probs = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
        outs.append(probs @ v)
        seen.append(probs[:, :prefix].max(dim=0).values)
    return torch.stack(outs)[None], torch.stack(seen)


@pytest.mark.parametrize("hq,hkv,prefix,m,softcap,block_bytes", [
    (4, 2, 37, 11, None, 1 << 20),      # one block
    (4, 2, 37, 11, None, 4 * 2 * 48),  # one query per block
    (6, 2, 50, 23, None, 4 * 3 * 73 * 5),  # blocks of 5 queries, the last one short
    (3, 3, 20, 9, 5.0, 4 * 29 * 4),     # no GQA, soft-capped logits
    (8, 1, 64, 1, None, 1 << 20),       # one repeat query (multi-query attention)
])
def test_matches_a_plain_reference(monkeypatch, hq, hkv, prefix, m, softcap, block_bytes) -> None:
    monkeypatch.setitem(capture._BLOCK_BYTES, "cpu", block_bytes)
    gen = torch.Generator().manual_seed(hq * 100 + m)
    d = 16
    query = torch.randn(1, hq, m, d, generator=gen)
    key = torch.randn(1, hkv, prefix + m, d, generator=gen) * 2
    value = torch.randn(1, hkv, prefix + m, d, generator=gen)
    out, seen = attention_and_column_max(query, key, value, prefix, 0.3, softcap)
    want_out, want_seen = _plain(query, key, value, prefix, 0.3, softcap)
    assert out.shape == (1, hq, m, d) and out.dtype == query.dtype
    assert seen.shape == (hq, prefix) and seen.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen.double(), want_seen, atol=1e-6, rtol=1e-5)


def test_keeps_the_query_dtype() -> None:
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(1, 2, 5, 8, generator=gen).to(torch.bfloat16)
    key, value = (torch.randn(1, 1, 12, 8, generator=gen).to(torch.bfloat16) for _ in range(2))
    out, seen = attention_and_column_max(query, key, value, 7, 0.35)
    want_out, want_seen = _plain(query, key, value, 7, 0.35, None)
    assert out.dtype == torch.bfloat16 and seen.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, atol=2e-2, rtol=2e-2)  # bf16 output rounding
    torch.testing.assert_close(seen.double(), want_seen, atol=1e-5, rtol=1e-4)  # fp32 throughout


def test_refuses_keys_that_do_not_add_up() -> None:
    q, k = torch.zeros(1, 2, 4, 8), torch.zeros(1, 1, 9, 8)
    with pytest.raises(ValueError, match="need 10 keys"):
        attention_and_column_max(q, k, k, 6, 1.0)
