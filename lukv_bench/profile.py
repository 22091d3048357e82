"""Memory and latency profile of policies on one prompt of real text (``lukv-bench profile``)."""

from __future__ import annotations

import torch

from lukv_bench.engine import Engine
from lukv_bench.memory import PeakMemory
from lukv_bench.policy import Budget


def reference_text_ids(tokenizer, n_tokens: int) -> list[int]:
    """``n_tokens`` token ids of Python's language reference (ships with Python: no downloads)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < n_tokens:
        ids = ids + ids
    return list(ids[:n_tokens])


def profile_policies(
    model: str, context: int, policies: list[str], budgets: list[float], new_tokens: int = 32,
    threads: int | None = None, device: str = "auto",
) -> list[dict]:
    """One prefill of ``context`` tokens, then per (policy, budget): compress, decode, measure."""
    from lukv_bench.models import load_model
    from lukv_bench.registry import resolve_policy
    from lukv_bench.runner import resolve_device

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    lm = load_model(model, device=str(dev))
    resolved = [resolve_policy(p) for p in policies]
    engine = Engine(lm.model, lm.tokenizer)
    ids = torch.tensor([reference_text_ids(lm.tokenizer, context)])
    pre = engine.prefill(ids, set().union(*(p.needs for p in resolved)))
    rows = []
    for policy in resolved:
        for b in budgets:
            with PeakMemory(engine.device) as mem:
                comp = engine.compress(pre, policy, Budget.resolve(b, pre.n))
                gen = engine.generate(comp.cache, pre.last_logits, new_tokens)
            rows.append(
                {
                    "policy": policy.name,
                    "budget": b,
                    "context_tokens": pre.n,
                    "kv_bytes": comp.kv_bytes,
                    "kv_bytes_full": comp.kv_bytes_full,
                    "kv_ratio": comp.kv_bytes / comp.kv_bytes_full,
                    "prefill_s": pre.prefill_s,
                    "compress_s": comp.compress_s,
                    "decode_s_per_token": gen.decode_s / max(1, len(gen.tokens)),
                    "peak_mem_mb": mem.peak / 2**20,
                }
            )
    return rows
