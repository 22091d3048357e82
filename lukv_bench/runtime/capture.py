"""The ``lukv`` attention function: ordinary causal attention that also captures what policies need.

It is registered in transformers' attention-function registry, so any decoder that dispatches
through ``ALL_ATTENTION_FUNCTIONS`` (Llama, Mistral, Qwen2/3, ...) runs unmodified. The object
that handles a forward is passed as the ``lukv=`` keyword of ``model(...)``, which transformers
forwards to every attention call:

* a :class:`Capture` during the one prefill: causal attention plus window statistics (and, only when a
  policy asks for them: H2O's accumulated column sums, the last query's attention, the window maximum,
  the values' output norms, the queries before RoPE), computed per layer in O(n) memory per head;
* a :class:`RepeatCapture` in KVzip's repeat pass after the prefill (only when a policy asks for it,
  :func:`repeat_attention`): the largest attention each prompt token receives while the model repeats it;
* a :class:`~lukv_bench.runtime.cache.RaggedCache` while decoding: attention over the compact ragged cache.

Without a ``lukv=`` keyword the function falls back to plain SDPA, so the model stays usable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lukv_bench.errors import UserError
from lukv_bench.kernels.ops import accumulated_attention, cap_scores, window_max, window_stats
from lukv_bench.runtime.contract import ACCUMULATED, LAST_QUERY, QUERIES, VALUE_NORMS, WINDOW_MAX

ATTN_IMPLEMENTATION = "lukv"


@dataclass
class Capture:
    """Collects per-layer prefill statistics; one instance per prefill."""

    window: int = 32
    #: optional statistics to compute besides the window sums (names in ``runtime.contract.OPTIONAL_NEEDS``)
    needs: Collection[str] = frozenset()
    block: int = 256  #: query block size for the accumulated sums
    #: (positions, layer) -> (cos, sin) of the model's RoPE (:func:`rotary_map`); needed for the QUERIES statistic
    rotary: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    layers: dict[int, dict[str, torch.Tensor | int]] = field(default_factory=dict)

    def optional_stats(self, layer: int) -> dict[str, torch.Tensor | None]:
        """The optional statistics of ``layer`` as ``LayerStats`` keyword arguments (None where not captured)."""
        rec = self.layers[layer]
        return {name: rec.get(name) for name in _FIELDS.values()}  # type: ignore[misc]

    def attention(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """Causal attention over the whole prompt; records statistics for ``module.layer_idx``.

        ``sliding_window`` (what the model passes for a sliding-window layer) limits each query to
        the last ``sliding_window`` positions, itself included; it is recorded with the layer's
        statistics so the engine knows which layers can never attend further back. ``softcap``
        (Gemma 2) soft-caps the logits before the softmax, in the attention and in every statistic.
        """
        if query.shape[0] != 1:
            raise ValueError("lukv-bench prefill capture supports batch size 1 only")
        n = query.shape[2]
        if key.shape[2] != n:
            raise ValueError("capture expects one prefill of the whole prompt (no earlier cache)")
        window = sliding_window if sliding_window is not None and sliding_window < n else None
        if window is None and softcap is None:
            out = F.scaled_dot_product_attention(
                query, key, value, is_causal=True, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
            )
        else:
            out = blocked_attention(query, key, value, scaling, window, softcap)
        w = min(self.window, n)
        q, k = query[0], key[0]
        win_sum, win_sumsq, win_entropy = window_stats(q[:, n - w :], k, scaling, prefix_len=n - w, softcap=softcap)
        rec: dict[str, torch.Tensor | int] = {
            "win_sum": win_sum,
            "win_sumsq": win_sumsq,
            "win_entropy": win_entropy,
            "window": w,
            "sliding_window": sliding_window,
        }
        if ACCUMULATED in self.needs:
            rec[_FIELDS[ACCUMULATED]] = accumulated_attention(q, k, scaling, block=self.block, softcap=softcap)
        if LAST_QUERY in self.needs:
            # a window of one query: its "sum" is the newest query's attention row
            rec[_FIELDS[LAST_QUERY]] = window_stats(q[:, n - 1 :], k, scaling, prefix_len=n - 1, softcap=softcap)[0]
        if WINDOW_MAX in self.needs:
            rec[_FIELDS[WINDOW_MAX]] = window_max(q[:, n - w :], k, scaling, softcap)
        if VALUE_NORMS in self.needs:
            rec[_FIELDS[VALUE_NORMS]] = output_value_norms(module, value[0], query.shape[1])
        if QUERIES in self.needs:
            if self.rotary is None:
                raise ValueError("the queries statistic needs the model's rotary map (Capture.rotary)")
            rec[_FIELDS[QUERIES]] = unrotate(q, *self.rotary(torch.arange(n, device=q.device), module.layer_idx))
        self.layers[module.layer_idx] = rec
        return out.transpose(1, 2)


def masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention [1, Hq, q, D] of ``query`` over ``key``/``value`` where the boolean ``allowed`` [q, k] is true.

    Without ``softcap`` this is SDPA; with it (Gemma 2) the logits are soft-capped to
    ``softcap * tanh(logits / softcap)`` before the softmax, which runs in fp32 as in the model's own
    eager attention. Every query must be allowed at least one key.
    """
    gqa = query.shape[1] != key.shape[1]
    if softcap is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling, enable_gqa=gqa)
    group = query.shape[1] // key.shape[1]
    k = key.float().repeat_interleave(group, dim=1)
    v = value.float().repeat_interleave(group, dim=1)
    scores = cap_scores(torch.matmul(query.float(), k.transpose(-1, -2)).mul_(scaling), softcap)
    probs = scores.masked_fill_(~allowed, float("-inf")).softmax(dim=-1)
    return torch.matmul(probs, v).to(query.dtype)


def blocked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    window: int | None = None,
    softcap: float | None = None,
    block: int = 256,
) -> torch.Tensor:
    """Causal attention over a whole prompt -> [1, Hq, n, D], ``block`` query rows at a time.

    With ``window``, query ``i`` sees keys ``i - window + 1 .. i`` only; ``softcap`` as in
    :func:`masked_attention`. Each query block reads only the keys it can see, so memory stays
    O(block x (window + block)) per head with a window and O(block x n) without.
    """
    n = query.shape[2]
    out = torch.empty_like(query)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        first = 0 if window is None else max(0, lo - window + 1)
        qpos = torch.arange(lo, hi, device=query.device)[:, None]
        kpos = torch.arange(first, hi, device=query.device)[None, :]
        allowed = kpos <= qpos
        if window is not None:
            allowed &= kpos > qpos - window
        out[:, :, lo:hi] = masked_attention(
            query[:, :, lo:hi], key[:, :, first:hi], value[:, :, first:hi], allowed, scaling, softcap
        )
    return out


#: the LayerStats field that holds each optional statistic
_FIELDS = {ACCUMULATED: "acc_attn", LAST_QUERY: "last_attn", WINDOW_MAX: "win_max", VALUE_NORMS: "value_norms",
           QUERIES: "queries"}


def rotary_map(model: torch.nn.Module) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
    """(positions [m], layer) -> fp32 (cos, sin) [m, R] of the model's rotary embedding (its ``rotary_emb`` module).

    R is the number of rotated dimensions (the head size, or less with partial rotary). A rotary module that
    serves several layer types (Gemma 3's local and global RoPE) is given the layer's type from the config's
    ``layer_types``. A model without a ``rotary_emb`` module is refused with a UserError: the Expected
    Attention statistics need RoPE.
    """
    rope = next((m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "rotary_emb"), None)
    if rope is None:
        raise UserError(
            f"{type(model).__name__} has no rotary embedding module ('rotary_emb'): the expected-attention "
            "scorer models future queries through RoPE; use another scorer for this model"
        )

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = getattr(config, "layer_types", None)
    typed = types is not None and "layer_type" in inspect.signature(rope.forward).parameters

    def cos_sin(positions: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        probe = torch.zeros(1, dtype=torch.float32, device=positions.device)  # only its dtype and device count
        kwargs = {"layer_type": types[layer]} if typed else {}
        cos, sin = rope(probe, positions.view(1, -1), **kwargs)
        return cos[0].float(), sin[0].float()

    return cos_sin


def unrotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Undo RoPE on ``x`` [..., m, D] rotated with (cos, sin) [m, R] (transformers' rotate-half layout).

    RoPE maps each pair (i, i + R/2) of the first R dimensions by a rotation times the rope's attention
    scaling s (cos^2 + sin^2 = s^2); the inverse rotates back and divides by s^2. Returns float32.
    """
    r = cos.shape[-1]
    y = x.float()
    rot, rest = y[..., :r], y[..., r:]
    half = r // 2
    swapped = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    back = (rot * cos - swapped * sin) / (cos * cos + sin * sin)
    return torch.cat((back, rest), dim=-1)


#: KVzip's instructions: the first chunk's, and a later chunk's (followed by the previous chunk's last tokens)
REPEAT_FIRST = "\n\nRepeat the previous context exactly."
REPEAT_LATER = "\n\nRepeat the part of the previous context exactly, starting with"
REPEAT_OVERLAP = 8  #: tokens of the previous chunk quoted after ``REPEAT_LATER``


def repeat_inputs(tokenizer, ids: list[int], chunk: int) -> list[list[int]]:
    """The token ids of each chunk's repeat request: instruction, end of the user turn, then the chunk itself.

    KVzip's form: ``REPEAT_FIRST`` (later chunks: ``REPEAT_LATER`` and the previous chunk's last
    ``REPEAT_OVERLAP`` tokens), the chat template's end of a user turn and start of the answer (a newline
    without a template), then the chunk's tokens, which the model reads as its own answer.
    """
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    if getattr(tokenizer, "chat_template", None):
        dummy = "dummy context"
        cut = "\n" + "#" * len(dummy)
        turn = tokenizer.apply_chat_template([{"role": "user", "content": dummy + cut}], add_generation_prompt=True,
                                             tokenize=False)
        suffix = encode(turn.split(cut, 1)[1])
    else:
        suffix = encode("\n")
    out = []
    for lo in range(0, len(ids), chunk):
        head = encode(REPEAT_FIRST) if lo == 0 else encode(REPEAT_LATER) + ids[max(0, lo - REPEAT_OVERLAP) : lo]
        out.append(head + suffix + ids[lo : lo + chunk])
    return out


@dataclass
class RepeatCapture:
    """The ``lukv=`` handler of KVzip's repeat pass: records, per layer, the largest attention each prompt
    token receives from the repeat request's queries (over every chunk run through it)."""

    n: int  #: prompt tokens in the cache the repeat requests read
    layers: dict[int, torch.Tensor] = field(default_factory=dict)  #: layer -> fp32 [Hq, n]

    def attention(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """Causal attention of the repeat tokens over the prompt and themselves -> [1, m, Hq, D] (``softcap``
        as in :func:`masked_attention`)."""
        m, total = query.shape[2], key.shape[2]
        if query.shape[0] != 1 or total != self.n + m:
            raise ValueError("the repeat pass reads one prompt's cache plus its own tokens (batch size 1)")
        if sliding_window is not None and sliding_window < total:
            raise UserError(
                f"layer {module.layer_idx} attends through a sliding window ({sliding_window} tokens), shorter than "
                "the prompt and its repeat: the kvzip scorer does not support it; use another scorer for this model"
            )
        out, seen = attention_and_column_max(query, key, value, self.n, scaling, softcap)
        before = self.layers.get(module.layer_idx)
        self.layers[module.layer_idx] = seen if before is None else torch.maximum(before, seen)
        return out.transpose(1, 2)


#: fp32 bytes of one block of attention weights in :func:`attention_and_column_max`, by device type. On CPU a block
#: that stays in L2 is ~3x faster than one streamed through memory (the logits are read five times); on a GPU
#: larger blocks mean fewer launches
_BLOCK_BYTES = {"cpu": 1 << 20}
_BLOCK_BYTES_OTHER = 256 << 20


def attention_and_column_max(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefix: int, scaling: float,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of the last ``m`` positions over all ``T = prefix + m`` and the largest weight each of the
    first ``prefix`` keys receives: ``([1, Hq, m, D] in the query's dtype, fp32 [Hq, prefix])``.

    ``query`` [1, Hq, m, D] sits at positions ``prefix .. T - 1``; ``key``/``value`` [1, Hkv, T, D]; query head h
    reads KV head ``h // (Hq / Hkv)``. One fp32 softmax per block of queries gives both results, where
    :func:`masked_attention` followed by :func:`window_max` would compute the logits and their exponentials twice
    (KVzip's repeat pass spends most of its time here). Every query sees every prefix key, so only the last ``m``
    columns are masked.
    """
    _, hq, m, d = query.shape
    n_kv, total = key.shape[1], key.shape[2]
    if total != prefix + m:
        raise ValueError(f"{m} queries after a prefix of {prefix} need {prefix + m} keys (got {total})")
    group = hq // n_kv
    out = torch.empty(1, hq, m, value.shape[-1], dtype=torch.float32, device=query.device)
    seen = torch.full((hq, prefix), float("-inf"), dtype=torch.float32, device=query.device)
    step = max(1, _BLOCK_BYTES.get(query.device.type, _BLOCK_BYTES_OTHER) // (4 * group * total))
    cols = torch.arange(m, device=query.device)
    for s in range(n_kv):
        heads = slice(s * group, (s + 1) * group)
        k, v = key[0, s].float(), value[0, s].float()
        for lo in range(0, m, step):
            hi = min(m, lo + step)
            end = prefix + hi  # keys after the block's last query are masked for all of it: left out
            logits = cap_scores(torch.matmul(query[0, heads, lo:hi].float(), k[:end].T).mul_(scaling), softcap)
            future = cols[None, :hi] > cols[lo:hi, None]  # repeat query i sees repeat keys 0 .. i
            logits[..., prefix:].masked_fill_(future, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            torch.maximum(seen[heads], probs[..., :prefix].amax(dim=1), out=seen[heads])
            out[0, heads, lo:hi] = torch.matmul(probs, v[:end])
    return out.to(query.dtype), seen


def repeat_attention(
    model: torch.nn.Module, tokenizer, cache, input_ids: torch.Tensor, chunk: int
) -> list[torch.Tensor]:
    """KVzip's repeat pass over a prefilled ``cache`` of ``input_ids`` [1, n]: per layer, fp32 [Hq, n].

    Each chunk of ``chunk`` prompt tokens is one teacher-forced repeat request (:func:`repeat_inputs`) that
    reads the prompt's cache and its own tokens; the cache is cut back to the prompt after each one.
    Entry j of a layer is the largest attention prompt token j receives from any repeat query.
    """
    if tokenizer is None:
        raise UserError(
            "the kvzip scorer's repeat pass writes its request ('Repeat the previous context exactly.') with the "
            "model's tokenizer, and this engine has none (lukv_bench.compress() takes no tokenizer); run kvzip "
            "from a suite (lukv-bench run) instead"
        )
    n = input_ids.shape[1]
    cap = RepeatCapture(n)
    for ids in repeat_inputs(tokenizer, input_ids[0].tolist(), chunk):
        model(input_ids=torch.tensor([ids], device=input_ids.device), cache=cache, use_cache=True, lukv=cap,
              logits_to_keep=1)
        cache.crop(-len(ids))  # a negative count removes the newest tokens
    return [cap.layers[i] for i in sorted(cap.layers)]


def output_value_norms(module: torch.nn.Module, values: torch.Tensor, n_q_heads: int) -> torch.Tensor:
    """``||W_o^h v_{g(h), j}||_1`` for every query head h and token j: fp32 [Hq, n] (CriticalKV).

    ``values`` [Hkv, n, D] are the layer's values; ``W_o^h`` is the slice of the output projection
    (``module.o_proj``, or ``module.dense`` in GPT-NeoX, [hidden, Hq * D]) that reads head h's attention
    output, and query head h reads KV head ``g(h) = h // (Hq / Hkv)``. The L1 norm is the one CriticalKV's
    perturbation bound uses.
    """
    proj = getattr(module, "o_proj", None) or getattr(module, "dense", None)
    if not isinstance(proj, torch.nn.Linear):
        raise ValueError(
            f"the value-norm statistic needs the attention module's output projection 'o_proj' or 'dense' "
            f"({type(module).__name__} has none); use a policy without the critical scorer for this model"
        )
    n_kv, n, d = values.shape
    group = n_q_heads // n_kv
    weight = proj.weight.float()
    out = torch.empty(n_q_heads, n, dtype=torch.float32, device=values.device)
    for h in range(n_q_heads):
        # [n, D] @ [D, hidden]: one head at a time keeps the intermediate at n x hidden
        contribution = values[h // group].float() @ weight[:, h * d : (h + 1) * d].T
        out[h] = contribution.abs().sum(dim=-1)
    return out


#: keyword arguments some models pass to their attention function that change its math beyond causal
#: (optionally sliding-window) softmax attention; ``softcap`` is computed by the handlers whose ``attention``
#: takes it (:func:`_takes_softcap`) and refused elsewhere
_UNSUPPORTED = {
    "softcap": "soft-caps its attention logits",
    "s_aux": "adds learned attention sinks to the softmax",
    "sinks": "adds learned attention sinks to the softmax",
    "position_bias": "adds a position bias to the attention logits",
    "indices": "attends to a sparse selection of tokens",
    "block_indices": "attends to a sparse selection of blocks",
}


def _takes_softcap(handler: object) -> bool:
    """Whether the ``lukv=`` handler's ``attention`` soft-caps logits (has a ``softcap`` parameter)."""
    attention = getattr(handler, "attention", None)
    return attention is not None and "softcap" in inspect.signature(attention).parameters


def _refuse_unsupported(module: torch.nn.Module, kwargs: dict) -> None:
    """A UserError naming the model type when its attention call asks for what lukv-bench cannot compute."""
    found = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
    if "softcap" in found and _takes_softcap(kwargs.get("lukv")):
        found.remove("softcap")
    if kwargs.get("is_causal") is False:
        found.append("is_causal")
    if not found:
        return
    kind = getattr(getattr(module, "config", None), "model_type", None) or type(module).__name__
    if found == ["softcap"]:
        handler = kwargs.get("lukv")
        where = "plain SDPA (no lukv= handler)" if handler is None else type(handler).__name__
        raise UserError(
            f"model type {kind!r}: its attention soft-caps its attention logits, which {where} does not compute "
            "(the prefill capture and the decode cache do); it would silently differ, so this step is not "
            "supported for this model (docs/models.md)"
        )
    why = "; ".join(_UNSUPPORTED.get(name, "attends bidirectionally (is_causal=False)") for name in found)
    raise UserError(
        f"model type {kind!r}: its attention {why}; lukv-bench's capture and ragged attention compute plain "
        "causal softmax attention, which would silently differ, so this model is not supported (docs/models.md)"
    )


def lukv_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention entry point registered as ``lukv``; returns ([B, Q, Hq, D], None)."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    _refuse_unsupported(module, kwargs)
    handler = kwargs.get("lukv")
    if handler is not None:
        # the window goes only to handlers of sliding-window layers, so a handler without the keyword
        # keeps working on every other model
        # and the cap only to handlers that take it (others were refused above)
        window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
        extra = {} if window is None else {"sliding_window": window}
        if softcap is not None:
            extra["softcap"] = softcap
        return handler.attention(module, query, key, value, scaling, **extra), None
    mask = attention_mask
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        is_causal=mask is None and query.shape[2] > 1,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2), None


def register() -> None:
    """Register the ``lukv`` attention function (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, lukv_attention)
    # masks as for SDPA (the fallback path uses them; capture and ragged attention are causal by design)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
