"""Prefill once, compress many: the engine that evaluates policies and budgets on one sample.

One prefill runs with the :class:`~lukv_bench.capture.Capture` attention and keeps the full K/V
plus the statistics every policy needs. Each (policy, budget) then builds its compressed
:class:`~lukv_bench.cache.RaggedCache` from that capture — no second prefill — and decodes or
scores continuations on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from lukv_bench import capture as capture_mod
from lukv_bench.cache import RaggedCache
from lukv_bench.memory import PeakMemory
from lukv_bench.policy import ACCUMULATED, Budget, LayerStats, PrefillStats


@dataclass
class EngineSettings:
    """Run-level settings shared by every policy in a run (recorded with results)."""

    window: int = 32  #: observation window: its queries vote, its tokens are always kept
    storage: str = "kv"  #: "kv" (per KV head) or "query" (per query head, G x memory)
    gqa_reduce: str = "mean"  #: mean | max | sum over a GQA group's query heads
    h2o_block: int = 256  #: query block for H2O's chunked column sums
    decode_every: int = 1  #: run a policy's decode-time eviction rule every k generated tokens


@dataclass
class Prefill:
    """The captured prefill of one prompt."""

    input_ids: torch.Tensor  #: [1, n]
    keys: list[torch.Tensor]  #: per layer [1, Hkv, n, D]
    values: list[torch.Tensor]
    stats: PrefillStats
    last_logits: torch.Tensor  #: [V] logits after the last prompt token
    prefill_s: float
    peak_mem_bytes: int

    @property
    def n(self) -> int:
        """Prompt tokens."""
        return self.input_ids.shape[1]

    def kv_bytes_full(self) -> int:
        """Bytes the uncompressed (FullKV) cache of this prompt holds."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in zip(self.keys, self.values))


@dataclass
class Compressed:
    """A compressed cache and what it cost."""

    cache: RaggedCache
    policy: str
    budget: Budget
    layer_budgets: list[int]  #: tokens kept per layer (mean over storage heads, rounded)
    head_budgets: list[list[int]] | None  #: per layer and head when heads differ
    kv_bytes: int
    kv_bytes_full: int
    compress_s: float
    allocation_info: dict | None = None


@dataclass
class Generation:
    """Greedy decoding output."""

    tokens: list[int]
    logits: torch.Tensor  #: [m, V] the logits each token was chosen from
    decode_s: float
    text: str = ""
    stopped: str = field(default="length")  #: "eos", "stop" or "length"


class Engine:
    """Runs capture prefills, compression and decoding for one loaded model."""

    def __init__(self, model: torch.nn.Module, tokenizer, settings: EngineSettings | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or EngineSettings()
        if self.settings.storage not in ("kv", "query"):
            raise ValueError(f"storage must be 'kv' or 'query' (got {self.settings.storage!r})")
        capture_mod.register()
        model.set_attn_implementation(capture_mod.ATTN_IMPLEMENTATION)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.n_q_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.device = next(model.parameters()).device

    # -- prefill ---------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, needs: Sequence[str] = ()) -> Prefill:
        """One forward pass over the prompt with capture; ``needs`` may include ``"accumulated"``."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError("lukv-bench evaluates batch size 1: pass input_ids of shape [1, n]")
        input_ids = input_ids.to(self.device)
        cap = capture_mod.Capture(
            window=self.settings.window, accumulated=ACCUMULATED in needs, block=self.settings.h2o_block
        )
        cache = DynamicCache(config=self.model.config)
        with PeakMemory(self.device) as mem:
            t0 = time.perf_counter()
            out = self.model(input_ids=input_ids, cache=cache, use_cache=True, lukv=cap, logits_to_keep=1)
            _sync(self.device)
            prefill_s = time.perf_counter() - t0
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        layers = []
        for i, (k, v) in enumerate(zip(keys, values)):
            rec = cap.layers[i]
            layers.append(
                LayerStats(
                    layer=i,
                    keys=self._storage_view(k[0]),
                    values=self._storage_view(v[0]),
                    win_sum=rec["win_sum"],
                    win_sumsq=rec["win_sumsq"],
                    win_entropy=rec["win_entropy"],
                    window=int(rec["window"]),
                    acc_attn=rec.get("acc_attn"),
                )
            )
        stats = PrefillStats(
            layers=layers,
            n_q_heads=self.n_q_heads,
            n_kv_heads=self.n_kv_heads,
            storage=self.settings.storage,
            gqa_reduce=self.settings.gqa_reduce,
        )
        return Prefill(
            input_ids=input_ids,
            keys=keys,
            values=values,
            stats=stats,
            last_logits=out.logits[0, -1].float(),
            prefill_s=prefill_s,
            peak_mem_bytes=mem.peak,
        )

    def eos_ids(self) -> list[int]:
        """Token ids that end generation: the generation config's, else the tokenizer's EOS."""
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return []
        return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]

    def _storage_view(self, x: torch.Tensor) -> torch.Tensor:
        """[Hkv, n, D] -> storage heads (a repeated copy in query-head mode)."""
        if self.settings.storage == "query":
            return x.repeat_interleave(self.n_q_heads // self.n_kv_heads, dim=0)
        return x

    # -- compression -----------------------------------------------------------------------------
    @torch.no_grad()
    def compress(self, pre: Prefill, policy, budget: Budget) -> Compressed:
        """Build ``policy``'s compressed cache at ``budget`` from the captured prefill."""
        t0 = time.perf_counter()
        plan = policy.plan(pre.stats, budget, pre.stats.layers[0].window if pre.stats.layers else 0)
        cache = RaggedCache.from_keep(
            pre.keys, pre.values, plan.keep, n_q_heads=self.n_q_heads, storage=self.settings.storage
        )
        _sync(self.device)
        compress_s = time.perf_counter() - t0
        counts = [ks.counts for ks in plan.keep]
        ragged = any(len(set(c)) > 1 for c in counts)
        return Compressed(
            cache=cache,
            policy=policy.name,
            budget=budget,
            layer_budgets=[round(sum(c) / len(c)) for c in counts],
            head_budgets=counts if ragged else None,
            kv_bytes=cache.kv_bytes(),
            kv_bytes_full=pre.kv_bytes_full(),
            compress_s=compress_s,
            allocation_info=getattr(plan.allocation, "info", None),
        )

    def decode_hook(self, policy, comp: Compressed):
        """The decode-time eviction callback of ``policy`` (None if it has no decode rule).

        Each layer and head is held at the size it had right after compression.
        """
        if getattr(policy, "decode_rule", None) is None:
            return None
        budgets = [list(layer.stored_tokens()) for layer in comp.cache.layers]
        every = self.settings.decode_every

        def hook(cache: RaggedCache, step: int) -> None:
            if step % every:
                return
            for i, layer in enumerate(cache.layers):
                keep = policy.decode_keep(layer.stored_tokens(), layer.logical_len, budgets[i])
                if keep is not None:
                    cache.evict(i, keep)

        return hook

    # -- decoding --------------------------------------------------------------------------------
    @torch.no_grad()
    def feed(self, cache: RaggedCache, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Run tokens through the compressed cache (appending them); returns their logits [m, V] fp32."""
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(1, -1)
        if ids_t.shape[1] == 0:
            return torch.empty(0, self.model.config.vocab_size)
        out = self.model(input_ids=ids_t, cache=cache, use_cache=True, lukv=cache)
        return out.logits[0].float()

    @torch.no_grad()
    def generate(
        self,
        cache: RaggedCache,
        first_logits: torch.Tensor,
        max_new_tokens: int,
        eos_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
        decode_hook=None,
    ) -> Generation:
        """Greedy decoding from ``first_logits`` (the logits after the last prompt token).

        ``decode_hook(cache, step)``, if given, runs after every appended token (decode-time eviction).
        """
        t0 = time.perf_counter()
        tokens: list[int] = []
        logits = [first_logits.float()]
        stopped = "length"
        eos = set(int(e) for e in eos_ids)
        while True:
            tok = int(torch.argmax(logits[-1]))
            tokens.append(tok)
            if tok in eos:
                stopped = "eos"
                break
            if stop and any(s in self.tokenizer.decode(tokens, skip_special_tokens=True) for s in stop):
                stopped = "stop"
                break
            if len(tokens) >= max_new_tokens:
                break
            logits.append(self.feed(cache, [tok])[-1])
            if decode_hook is not None:
                decode_hook(cache, len(tokens))
        _sync(self.device)
        decode_s = time.perf_counter() - t0
        text = self.tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
        for s in stop:
            if s in text:
                text = text[: text.index(s)]
        return Generation(tokens=tokens, logits=torch.stack(logits), decode_s=decode_s, text=text, stopped=stopped)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Outcome:
    """The result of one (policy, budget) on one prompt."""

    policy: object
    budget_spec: object
    budget: Budget
    compressed: Compressed
    generation: Generation
    peak_mem_bytes: int
    kl_mean: float | None  #: mean KL(FullKV || policy) over the answer positions (teacher-forced)
    greedy_agreement: float | None  #: share of answer positions where the argmax equals FullKV's


def sweep(
    engine: Engine,
    context_ids: Sequence[int],
    question_ids: Sequence[int],
    runs: Sequence[tuple[object, object]],
    full_policy,
    compress: str = "prompt",
    max_new_tokens: int = 32,
    eos_ids: Sequence[int] = (),
    stop: Sequence[str] = (),
):
    """Prefill once, then yield an :class:`Outcome` for each (policy, budget spec) in ``runs``.

    ``compress="prompt"`` prefills and compresses context + question (the window sees the question);
    ``compress="context"`` compresses only the context and feeds the question afterwards.
    FullKV (``full_policy``) runs first as the reference for the fidelity metrics.
    Yields ``(prefill, outcome)`` pairs, lazily, so callers can persist each as it finishes.
    """
    from lukv_bench.metrics import greedy_agreement, kl_divergence

    needs = set().union(*(p.needs for p, _ in runs), full_policy.needs)
    if compress == "prompt":
        pre = engine.prefill(torch.tensor([list(context_ids) + list(question_ids)]), needs)
        tail: list[int] = []
    elif compress == "context":
        pre = engine.prefill(torch.tensor([list(context_ids)]), needs)
        tail = list(question_ids)
    else:
        raise ValueError(f"compress must be 'prompt' or 'context' (got {compress!r})")

    def run_one(policy, budget_spec) -> tuple[Outcome, RaggedCache]:
        budget = Budget.resolve(budget_spec, pre.n)
        with PeakMemory(engine.device) as mem:
            comp = engine.compress(pre, policy, budget)
            mark = comp.cache.mark()
            first = engine.feed(comp.cache, tail)[-1] if tail else pre.last_logits
            hook = engine.decode_hook(policy, comp) if budget.tokens < pre.n else None
            gen = engine.generate(comp.cache, first, max_new_tokens, eos_ids, stop, decode_hook=hook)
        if hook is None:
            comp.cache.rollback(mark)
            cache = comp.cache
        else:  # decode-time eviction dropped tokens a rollback cannot bring back: rebuild for fidelity
            cache = engine.compress(pre, policy, budget).cache
        return Outcome(policy, budget_spec, budget, comp, gen, mem.peak, None, None), cache

    ref, _ = run_one(full_policy, 1.0)
    ref_tokens, ref_logits = ref.generation.tokens, ref.generation.logits
    m = len(ref_tokens)
    for policy, budget_spec in runs:
        if policy.name == full_policy.name:
            yield pre, ref
            continue
        out, cache = run_one(policy, budget_spec)
        # teacher-force FullKV's answer and compare next-token distributions position by position
        fed = engine.feed(cache, tail + ref_tokens[: m - 1])
        test = fed[-m:] if tail else fed
        want = ref_logits if tail else ref_logits[1:]
        if len(test):
            out.kl_mean = float(kl_divergence(want, test).mean())
            out.greedy_agreement = float(greedy_agreement(want, test))
        yield pre, out
