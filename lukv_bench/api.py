"""Use a policy outside suites: compress the KV cache of a plain transformers model inside ``generate()``.

::

    import lukv_bench

    with lukv_bench.compress(model, policy="snapkv", budget=0.2) as session:
        out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
    print(session.last.kv_bytes / session.last.kv_bytes_full)  # ~0.2: what the cache really held

Inside the ``with`` block every prefill (a forward over a prompt with an empty cache, e.g. the first
step of ``generate``) runs with the same capture as the suites (:meth:`Engine.prefill
<lukv_bench.runtime.engine.Engine.prefill>`); the policy plans what to keep (:meth:`Policy.plan
<lukv_bench.registry.policy.Policy.plan>`) and the kept tokens are gathered into a
:class:`~lukv_bench.runtime.cache.RaggedCache`, which the model then decodes from. The full prompt K/V are
dropped right after compression, so the memory is really freed. Policies with a decode-time rule
(``streaming``) also evict while generating. On exit the model is as before (attention implementation
and ``forward``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from lukv_bench.errors import UserError
from lukv_bench.registry.catalog import resolve_policy
from lukv_bench.registry.policy import Policy
from lukv_bench.runtime.cache import RaggedCache
from lukv_bench.runtime.contract import Budget, budget_problem, budget_warning
from lukv_bench.runtime.engine import Compressed, DecodeHook, Engine, EngineSettings, evicts_while_decoding
from lukv_bench.runtime.models import load_model

__all__ = ["CompressionSession", "compress", "load_model"]


@dataclass
class CompressionSession:
    """What :func:`compress` is doing: the resolved policy, and what the last prefill kept."""

    policy: Policy
    budget: float | dict[str, int]  #: as given: a ratio of the prompt or ``{"tokens": N}``
    settings: EngineSettings
    last: Compressed | None = None  #: the last compressed prompt (kv_bytes, kv_bytes_full, layer_budgets, ...)
    prefills: int = 0  #: prompts compressed so far
    _cache: RaggedCache | None = None
    _hook: DecodeHook | None = None
    _step: int = 0


def _check_budget(budget: Any, window: int) -> None:
    if (problem := budget_problem(budget, window)) is not None:
        raise UserError(f"compress(): budget: {problem}")


@contextmanager
def compress(
    model: torch.nn.Module,
    policy: str | dict[str, Any] | Policy = "snapkv",
    budget: float | dict[str, int] = 0.2,
    *,
    window: int = 32,
    storage: str = "kv",
    gqa_reduce: str = "mean",
    decode_every: int = 1,
    headroom: int = 64,
    kv_dtype: str | None = None,
) -> Iterator[CompressionSession]:
    """Compress every prompt ``model`` prefills inside the block with ``policy`` at ``budget``.

    ``policy`` is a registered name, a mapping (``{"name": "snapkv", "kernel": 5}``, or a custom
    scorer + allocator) or a resolved policy; ``budget`` a ratio of the prompt (mean tokens per layer,
    window included) or ``{"tokens": N}``. ``window``, ``storage``, ``gqa_reduce`` and ``decode_every``
    mean what they mean in a suite. ``headroom`` is the room each cache segment reserves for generated
    tokens before it regrows. ``kv_dtype`` (``float16``/``bfloat16``) stores the compressed cache at half the
    bytes (scores and softmax stay float32). Batch size 1; the prompt must come as ``input_ids``.
    """
    resolved = policy if isinstance(policy, Policy) else resolve_policy(policy)
    _check_budget(budget, window)
    previous_impl = model.config._attn_implementation
    own_forward = model.__dict__.get("forward")
    settings = EngineSettings(window=window, storage=storage, gqa_reduce=gqa_reduce, decode_every=decode_every,
                              kv_dtype=kv_dtype)
    engine = Engine(model, tokenizer=None, settings=settings)  # switches the model to the lukv attention
    session = CompressionSession(resolved, budget, settings)
    original = model.forward
    busy = False

    def prefill(input_ids: torch.Tensor) -> CausalLMOutputWithPast:
        nonlocal busy
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise UserError(f"compress(): batch size 1 only (got input_ids of shape {tuple(input_ids.shape)})")
        busy = True
        try:
            pre = engine.prefill(input_ids, resolved.needs)
        finally:
            busy = False
        spec = Budget.resolve(budget, pre.n)
        if (warning := budget_warning(spec.tokens, pre.n, window)) is not None:
            warnings.warn(f"compress(): {warning}", UserWarning, stacklevel=4)
        cache, [kept] = engine.compress(pre, [(resolved, spec)], headroom=headroom)
        evicting = evicts_while_decoding(resolved, spec, pre.n)
        session.last, session.prefills = kept, session.prefills + 1
        session._cache, session._step = cache, 0
        session._hook = engine.decode_hook(resolved, cache, 0) if evicting else None
        logits = pre.last_logits.view(1, 1, -1)
        del pre  # the full prompt K/V go with it: only the compressed cache stays
        return CausalLMOutputWithPast(logits=logits, cache=cache)

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if busy:  # the engine's own capture prefill
            return original(*args, **kwargs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and cache is session._cache:
            kwargs["lukv"] = cache
            out = original(*args, **kwargs)
            if session._hook is not None:
                session._step += 1
                session._hook(cache, 0, session._step)
            return out
        if cache is not None and cache.get_seq_length() > 0:
            raise UserError("compress(): the model was given a cache that compress() did not build; let "
                            "generate() create it, or pass the cache of the previous step")
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise UserError("compress(): pass the prompt as input_ids (inputs_embeds are not supported)")
        return prefill(input_ids)

    model.forward = forward
    try:
        yield session
    finally:
        if own_forward is not None:
            model.forward = own_forward
        else:
            del model.forward
        model.set_attn_implementation(previous_impl)
        session._cache = session._hook = None
