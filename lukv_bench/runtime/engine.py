"""Prefill once, compress many, decode together: the engine that evaluates cells on one sample.

One prefill runs with the :class:`~lukv_bench.runtime.capture.Capture` attention and keeps the full K/V
plus the statistics every policy needs. Every (policy, budget) *cell* then builds its compressed
cache from that capture — no second prefill — into one batched
:class:`~lukv_bench.runtime.cache.RaggedCache`, and all cells decode together: one model forward per
step for the whole sweep of a sample (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from transformers import DynamicCache

from lukv_bench.errors import UserError
from lukv_bench.kernels.ragged_attention import prepare_cpu_kernel
from lukv_bench.runtime import capture as capture_mod
from lukv_bench.runtime.arena import BufferArena
from lukv_bench.runtime.cache import RaggedCache
from lukv_bench.runtime.contract import (
    NEWEST_ATTENTION,
    OPTIONAL_NEEDS,
    QUERIES,
    Budget,
    LayerStats,
    PrefillStats,
    captured_needs,
    repeat_chunk,
)
from lukv_bench.runtime.fidelity import greedy_agreement, kl_divergence
from lukv_bench.runtime.memory import PeakMemory
from lukv_bench.runtime.models import architecture, check_architecture
from lukv_bench.runtime.selection import KeepSet


@dataclass
class EngineSettings:
    """Run-level settings shared by every policy in a run (recorded with results)."""

    window: int = 32  #: observation window: its queries vote, its tokens are always kept
    storage: str = "kv"  #: "kv" (per KV head) or "query" (per query head, G x memory)
    gqa_reduce: str = "mean"  #: mean | max | sum over a GQA group's query heads
    h2o_block: int = 256  #: query block for H2O's chunked column sums
    decode_every: int = 1  #: run a policy's decode-time eviction rule every k generated tokens
    #: dtype the compressed caches are stored in ("float16" | "bfloat16"; None: the model's); attention and
    #: scoring stay fp32
    kv_dtype: str | None = None


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
    #: seconds of the passes after the prefill that computed a statistic (KVzip's repeat), by ``needs`` name
    stat_s: dict[str, float] = field(default_factory=dict)
    #: per layer, the sliding window the model attends with there (None: the layer attends to everything)
    windows: list[int | None] = field(default_factory=list)
    #: the statistics of the layers a policy plans, per set of layers held at their window (see
    #: :meth:`Engine.compress`); built once, so a policy's per-prefill score cache serves every cell
    planned: dict[tuple[int, ...], PrefillStats] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        """Prompt tokens."""
        return self.input_ids.shape[1]

    def stat_seconds(self, needs: Collection[str]) -> float:
        """Seconds of the extra passes behind ``needs``: part of the cost of every cell that uses them."""
        return sum(self.stat_s.get(name, 0.0) for name in needs)

    def kv_bytes_full(self, held: Collection[int] = ()) -> int:
        """Bytes the uncompressed (FullKV) cache of this prompt holds.

        Layers in ``held`` are sliding-window layers held at their window: FullKV holds only the
        newest ``window - 1`` tokens there too (see :func:`held_at_window`).
        """
        total = 0
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            tokens = min(self.n, int(self.windows[i]) - 1) if i in held else self.n  # type: ignore[arg-type]
            total += (k.numel() * k.element_size() + v.numel() * v.element_size()) // self.n * tokens
        return total


@dataclass
class Compressed:
    """What compressing the prefill for one cell kept and cost (the cache itself is shared)."""

    policy: str
    budget: Budget
    keep: list[KeepSet]  #: kept prompt positions per layer (to rebuild the cache)
    layer_budgets: list[int]  #: tokens kept per layer (mean over storage heads, rounded)
    head_budgets: list[list[int]] | None  #: per layer and head when heads differ
    kv_bytes: int  #: bytes of this cell's compressed K/V, measured from the cache's buffers
    kv_bytes_full: int  #: bytes of the uncompressed (FullKV) cache of the same prompt
    #: planning (scoring, allocation, selection) + this cell's share of the gather + the extra passes its
    #: statistics took (KVzip's repeat; ``Prefill.stat_s``) when it evicts
    compress_s: float
    kept_tokens_mean: float  #: mean tokens kept per layer and storage head (what the budget became)
    allocation_info: dict | None = None


@dataclass
class Generation:
    """Greedy decoding output of one cell."""

    tokens: list[int]
    logits: torch.Tensor  #: [m, V] the logits each token was chosen from
    decode_s: float  #: this cell's share of the batched decode steps it took part in
    text: str = ""
    stopped: str = field(default="length")  #: "eos", "stop" or "length"


#: the storage dtypes of ``EngineSettings.kv_dtype``
KV_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}

#: a decode-time eviction callback: ``hook(cache, cell, step)`` after each appended token
DecodeHook = Callable[[RaggedCache, int, int], None]


class Engine:
    """Runs capture prefills, batched compression and batched decoding for one loaded model.

    ``arena=True`` builds every compressed cache in buffers reused from the previous one
    (:class:`~lukv_bench.runtime.arena.BufferArena`: no page faults after the largest sample; same
    results); the peaks this engine measures (:meth:`peak_memory`) leave out what the arena holds idle.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, settings: EngineSettings | None = None,
                 arena: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or EngineSettings()
        self.arena: BufferArena | None = BufferArena() if arena else None
        if self.settings.storage not in ("kv", "query"):
            raise UserError(f"storage must be 'kv' or 'query' (got {self.settings.storage!r})")
        if self.settings.kv_dtype is not None and self.settings.kv_dtype not in KV_DTYPES:
            raise UserError(f"kv_dtype must be one of {sorted(KV_DTYPES)} or None (got {self.settings.kv_dtype!r})")
        check_architecture(model)
        capture_mod.register()
        model.set_attn_implementation(capture_mod.ATTN_IMPLEMENTATION)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.n_q_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.max_positions = getattr(cfg, "max_position_embeddings", None)
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":
            prepare_cpu_kernel()  # build or load the C++ attention kernel now, not inside a timed decode

    def peak_memory(self) -> PeakMemory:
        """A :class:`PeakMemory` on this engine's device that leaves out the arena's idle buffers."""
        return PeakMemory(self.device, idle=self.arena.idle_bytes if self.arena is not None else None)

    @contextlib.contextmanager
    def without_arena(self) -> Iterator[None]:
        """Free the arena's buffers and build fresh ones inside the block (measurements of one cell alone)."""
        arena, self.arena = self.arena, None
        if arena is not None:
            arena.release()
        try:
            yield
        finally:
            self.arena = arena

    # -- prefill ---------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, needs: Sequence[str] = ()) -> Prefill:
        """One forward pass over the prompt with capture; ``needs`` names the optional statistics to capture."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError("a prefill takes one prompt: pass input_ids of shape [1, n]")
        input_ids = input_ids.to(self.device)
        cap = capture_mod.Capture(
            window=self.settings.window, needs=OPTIONAL_NEEDS & frozenset(needs), block=self.settings.h2o_block,
            rotary=capture_mod.rotary_map(self.model) if QUERIES in needs else None,
        )
        # full layers everywhere (no config): the capture keeps every prompt token of a sliding-window
        # layer too; compress() decides which of them the cell holds
        cache = DynamicCache()
        with self.peak_memory() as mem:
            t0 = time.perf_counter()
            out = self.model(input_ids=input_ids, cache=cache, use_cache=True, lukv=cap, logits_to_keep=1)
            _sync(self.device)
            prefill_s = time.perf_counter() - t0
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        missed = [i for i in range(len(keys)) if i not in cap.layers]
        if missed:
            raise UserError(
                f"model type {architecture(self.model)!r}: layers {missed} did not run their attention through "
                "transformers' attention interface, so lukv-bench cannot capture or compress them"
            )
        repeats, stat_s = {}, {}
        for need in sorted(captured_needs(needs)):
            chunk = repeat_chunk(need)
            if chunk is not None:  # a second pass over the prefilled cache, timed apart from the prefill
                t0 = time.perf_counter()
                repeats[chunk] = capture_mod.repeat_attention(self.model, self.tokenizer, cache, input_ids, chunk)
                _sync(self.device)
                stat_s[need] = time.perf_counter() - t0
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
                    **cap.optional_stats(i),
                    repeat_max={chunk: r[i] for chunk, r in repeats.items()} or None,
                    rotary=partial(cap.rotary, layer=i) if cap.rotary is not None else None,
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
            stat_s=stat_s,
            windows=[cap.layers[i]["sliding_window"] for i in range(len(keys))],  # type: ignore[misc]
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
    def compress(
        self, pre: Prefill, cells: Sequence[tuple[object, Budget]], headroom: int = 0
    ) -> tuple[RaggedCache, list[Compressed]]:
        """Build the compressed caches of ``cells`` ((policy, budget) pairs) as one batched cache.

        ``headroom`` free rows per segment hold tokens appended later (question, answer). Each
        cell's figures are its own: ``kv_bytes`` counts only its kept tokens, exactly what a
        cache holding that cell alone would allocate.
        """
        window = pre.stats.layers[0].window if pre.stats.layers else 0
        held = held_at_window(pre, headroom)
        planned = self._planned_stats(pre, held)
        plans, plan_s, keeps = [], [], []
        for policy, budget in cells:
            t0 = time.perf_counter()
            plan = policy.plan(planned, budget, window) if planned.layers else None
            keeps.append(self._merge_keep(pre, held, plan))
            plans.append(plan)
            plan_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cache = RaggedCache.build(
            pre.keys, pre.values, keeps, n_q_heads=self.n_q_heads,
            storage=self.settings.storage, headroom=headroom,
            windows=[pre.windows[i] if i in held else None for i in range(len(pre.keys))],
            dtype=KV_DTYPES.get(self.settings.kv_dtype or ""), arena=self.arena,
        )
        _sync(self.device)
        build_s = time.perf_counter() - t0
        all_counts = [[ks.counts for ks in keep] for keep in keeps]  # per cell, layer and head
        kept = [sum(map(sum, counts)) for counts in all_counts]
        # the FullKV reference in the same storage: per query head, every token is stored G times
        group = self.n_q_heads // self.n_kv_heads if self.settings.storage == "query" else 1
        full_bytes = pre.kv_bytes_full(held) * group
        if pre.keys:  # FullKV in the same storage dtype as the cells
            full_bytes = full_bytes * cache.layers[0].store.k.element_size() // pre.keys[0].element_size()
        out = []
        for b, ((policy, budget), plan) in enumerate(zip(cells, plans)):
            counts = all_counts[b]
            ragged = any(len(set(c)) > 1 for c in counts)
            out.append(Compressed(
                policy=policy.name,
                budget=budget,
                keep=keeps[b],
                layer_budgets=[round(sum(c) / len(c)) for c in counts],
                head_budgets=counts if ragged else None,
                kv_bytes=cache.kv_bytes(b),
                kv_bytes_full=full_bytes,
                compress_s=plan_s[b] + build_s * kept[b] / max(1, sum(kept))
                + (pre.stat_seconds(getattr(policy, "needs", ())) if budget.tokens < pre.n else 0.0),
                kept_tokens_mean=sum(sum(c) / len(c) for c in counts) / max(1, len(counts)),
                allocation_info=getattr(plan.allocation, "info", None) if plan is not None else None,
            ))
        return cache, out

    def _planned_stats(self, pre: Prefill, held: tuple[int, ...]) -> PrefillStats:
        """The prefill statistics of the layers a policy plans: all but those ``held`` at their window."""
        if not held:
            return pre.stats
        if held not in pre.planned:
            st = pre.stats
            pre.planned[held] = PrefillStats(
                layers=[ls for i, ls in enumerate(st.layers) if i not in held], n_q_heads=st.n_q_heads,
                n_kv_heads=st.n_kv_heads, storage=st.storage, gqa_reduce=st.gqa_reduce,
            )
        return pre.planned[held]

    def _merge_keep(self, pre: Prefill, held: tuple[int, ...], plan) -> list[KeepSet]:
        """Every layer's keep set: the plan's for the planned layers, the newest tokens for the held ones."""
        if not held:
            return plan.keep
        planned = iter(plan.keep if plan is not None else ())
        heads = pre.stats.n_storage_heads
        out = []
        for i in range(len(pre.keys)):
            if i not in held:
                out.append(next(planned))
                continue
            # what the model's own sliding cache holds: the tokens the next query's window reaches
            w = min(pre.n, int(pre.windows[i]) - 1)  # type: ignore[arg-type]
            newest = torch.arange(pre.n - w, pre.n, device=pre.keys[i].device)
            out.append(KeepSet(indices=newest.repeat(heads),
                               cu_seqlens=torch.arange(heads + 1, device=newest.device) * w))
        return out

    def decode_hook(self, policy, cache: RaggedCache, cell: int) -> DecodeHook | None:
        """The decode-time eviction callback of ``policy`` for one cell of ``cache`` (None: no rule).

        Each layer and head of the cell is held at the size it has now (after compression and
        any question tokens). A rule that needs the newest query's attention (``NEWEST_ATTENTION``,
        TOVA's) makes the cache record it for this cell on every later forward, reduced over each
        storage head's query heads with the run's ``gqa_reduce``.
        """
        if getattr(policy, "decode_rule", None) is None:
            return None
        budgets = [layer.stored_tokens(cell) for layer in cache.layers]
        every = self.settings.decode_every
        attends = NEWEST_ATTENTION in getattr(policy, "decode_needs", frozenset())
        if attends:
            cache.watch(cell, self.settings.gqa_reduce)

        def hook(cache: RaggedCache, cell: int, step: int) -> None:
            if step % every:
                return
            for i, layer in enumerate(cache.layers):
                if layer.window is not None:
                    continue  # a layer held at its window already forgets what its window leaves
                attention = cache.newest_attention(i, cell) if attends else None
                keep = policy.decode_keep(layer.stored_tokens(cell), cache.logical[cell], budgets[i],
                                          attention=attention)
                if keep is not None:
                    cache.evict(i, cell, keep)

        return hook

    # -- decoding --------------------------------------------------------------------------------
    @torch.no_grad()
    def feed(self, cache: RaggedCache, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Run tokens through the active cells of ``cache`` (appending them) -> logits [B, m, V] fp32.

        ``ids`` is [B, m] (one row per active cell) or a list of m ids fed to every active cell.
        """
        B = len(cache.active)
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        if ids_t.dim() == 1:
            ids_t = ids_t.view(1, -1).expand(B, -1)
        if ids_t.shape[0] != B:
            raise ValueError(f"{ids_t.shape[0]} rows of ids for {B} active cells")
        if ids_t.shape[1] == 0:
            return torch.empty(B, 0, self.model.config.vocab_size)
        out = self.model(input_ids=ids_t, cache=cache, use_cache=True, lukv=cache)
        return out.logits.float()

    @torch.no_grad()
    def generate(
        self,
        cache: RaggedCache,
        first_logits: torch.Tensor,
        max_new_tokens: int,
        eos_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
        decode_hooks: Sequence[DecodeHook | None] | None = None,
        follow: dict[int, int | Sequence[int]] | None = None,
    ) -> list[Generation]:
        """Greedy decoding of every active cell together; one :class:`Generation` per cell.

        ``first_logits`` ([B, V], or [V] shared by all) are the logits after the last prompt token.
        A cell that emits EOS, produces a stop string or reaches ``max_new_tokens`` leaves the
        batch; the others go on unchanged. ``decode_hooks[i]`` (decode-time eviction) runs for
        cell ``i`` after each of its appended tokens. Each step's wall time is shared equally
        by the cells in it.

        ``follow[i]`` makes row ``i`` teacher-forced instead of greedy: it is fed the tokens of a
        reference answer — row ``j``'s own tokens as they are decoded (``follow[i] = j``, lockstep),
        or a given token list — all but the reference's last, and its logits are what the
        reference's next tokens were predicted from (``stopped = "forced"``).
        """
        cells = list(cache.active)
        B = len(cells)
        first = first_logits.float()
        first = first.expand(B, -1) if first.dim() == 1 else first
        hooks = list(decode_hooks) if decode_hooks is not None else [None] * B
        tokens: list[list[int]] = [[] for _ in range(B)]
        logits: list[list[torch.Tensor]] = [[first[i]] for i in range(B)]
        stopped = ["length"] * B
        decode_s = [0.0] * B
        eos = set(int(e) for e in eos_ids)
        follow = dict(follow or {})
        for i in follow:
            stopped[i] = "forced"
        alive, cur = list(range(B)), first
        while alive:
            t0 = time.perf_counter()
            picks = torch.argmax(cur, dim=-1).tolist()
            going: dict[int, int] = {}
            for row, i in enumerate(alive):
                if i in follow:
                    continue
                tok = int(picks[row])
                tokens[i].append(tok)
                if tok in eos:
                    stopped[i] = "eos"
                elif stop and any(s in self.tokenizer.decode(tokens[i], skip_special_tokens=True) for s in stop):
                    stopped[i] = "stop"
                elif len(tokens[i]) < max_new_tokens:
                    going[i] = tok
            for i in alive:
                if i in follow:
                    ref, step = follow[i], len(tokens[i])
                    if isinstance(ref, int) and ref in going:
                        going[i] = tokens[ref][-1]
                    elif not isinstance(ref, int) and step < len(ref) - 1:
                        going[i] = int(ref[step])
                    if i in going:
                        tokens[i].append(going[i])
            still = [i for i in alive if i in going]
            rows = [going[i] for i in still]
            if still:
                if still != alive:
                    cache.set_active([cells[i] for i in still])
                cur = self.feed(cache, torch.tensor(rows).view(-1, 1))[:, -1]
                for row, i in enumerate(still):
                    logits[i].append(cur[row])
                    if hooks[i] is not None:
                        hooks[i](cache, cells[i], len(tokens[i]))
            _sync(self.device)
            share = (time.perf_counter() - t0) / len(alive)
            for i in alive:
                decode_s[i] += share
            alive = still
        out = []
        for i in range(B):
            text = self.tokenizer.decode([t for t in tokens[i] if t not in eos], skip_special_tokens=True)
            for s in stop:
                if s in text:
                    text = text[: text.index(s)]
            out.append(Generation(tokens=tokens[i], logits=torch.stack(logits[i]), decode_s=decode_s[i],
                                  text=text, stopped=stopped[i]))
        return out


def held_at_window(pre: Prefill, headroom: int) -> tuple[int, ...]:
    """The sliding-window layers whose window cuts within this prompt and ``headroom`` more tokens.

    Such a layer never attends further back than its window ``W``, so the model itself holds at most
    ``W`` tokens there. lukv-bench holds it the same way: the newest ``W - 1`` prompt tokens, never
    compressed, outside the budget (which is the mean over the other layers); ``kv_bytes`` counts
    what it holds. A sliding layer whose window covers everything is an ordinary layer.
    """
    return tuple(i for i, w in enumerate(pre.windows) if w is not None and w < pre.n + headroom)


def evicts_while_decoding(policy, budget: Budget, n: int) -> bool:
    """True when ``policy`` evicts during decoding at ``budget`` on an ``n``-token prompt.

    A budget that keeps the whole prompt never evicts, so it reproduces FullKV exactly.
    """
    return budget.tokens < n and getattr(policy, "decode_rule", None) is not None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Outcome:
    """The result of one (policy, budget) cell on one prompt."""

    policy: object
    budget_spec: object
    budget: Budget
    compressed: Compressed
    generation: Generation
    peak_mem_bytes: int  #: peak of the batch the cell ran in (compression + decoding)
    batch_size: int  #: cells decoded together with this one (itself included)
    kl_mean: float | None = None  #: mean KL(FullKV || policy) over the answer positions (teacher-forced)
    greedy_agreement: float | None = None  #: share of answer positions where the argmax equals FullKV's
    #: how fidelity was measured: "teacher-forced", "teacher-forced+decode-eviction", or None (FullKV)
    fidelity: str | None = None


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
    batch_settings: int | None = None,
):
    """Prefill once, then yield ``(prefill, Outcome)`` for each (policy, budget spec) in ``runs``.

    ``compress="prompt"`` prefills and compresses context + question (the window sees the question);
    ``compress="context"`` compresses only the context and feeds the question afterwards, to every
    cell of a batch at once. FullKV (``full_policy``) runs in the first batch as the reference of
    the fidelity metrics. Cells decode together in batches of ``batch_settings`` (None: all);
    then the teacher-forced fidelity pass over FullKV's answer runs for a whole batch in one forward
    (token by token for cells with decode-time eviction, which evict as they did while decoding).
    Outcomes are yielded batch by batch, so callers can persist each as soon as it is done.
    """
    needs = set().union(*(p.needs for p, _ in runs), full_policy.needs)
    if compress == "prompt":
        pre = engine.prefill(torch.tensor([list(context_ids) + list(question_ids)]), needs)
        tail: list[int] = []
    elif compress == "context":
        pre = engine.prefill(torch.tensor([list(context_ids)]), needs)
        tail = list(question_ids)
    else:
        raise ValueError(f"compress must be 'prompt' or 'context' (got {compress!r})")
    if batch_settings is not None and batch_settings < 1:
        raise ValueError(f"batch_settings must be >= 1 (got {batch_settings})")

    order = [(full_policy, 1.0)] + [(p, b) for p, b in runs if p.name != full_policy.name]
    full_wanted = any(p.name == full_policy.name for p, _ in runs)
    size = batch_settings or len(order)
    ref: Generation | None = None
    for lo in range(0, len(order), size):
        chunk = order[lo : lo + size]
        budgets = [Budget.resolve(spec, pre.n) for _, spec in chunk]
        evicting = [i for i, ((p, _), b) in enumerate(zip(chunk, budgets)) if evicts_while_decoding(p, b, pre.n)]
        # a cell that evicts while decoding is measured for fidelity by a shadow copy of its cache,
        # fed FullKV's answer in the same batch and evicting as it goes (a rollback cannot undo eviction)
        rows = [(p, b) for (p, _), b in zip(chunk, budgets)] + [(chunk[i][0], budgets[i]) for i in evicting]
        shadow = {len(chunk) + k: i for k, i in enumerate(evicting)}
        with engine.peak_memory() as mem:
            cache, comps = engine.compress(pre, rows, headroom=len(tail) + max_new_tokens)
            mark = cache.mark()
            first = engine.feed(cache, tail)[:, -1] if tail else pre.last_logits
            hooks = [engine.decode_hook(p, cache, i) if i in evicting or i in shadow else None
                     for i, (p, _) in enumerate(rows)]
            follow = {r: (0 if ref is None else ref.tokens) for r in shadow}
            gens = engine.generate(cache, first, max_new_tokens, eos_ids, stop, decode_hooks=hooks, follow=follow)
        if ref is None:
            ref = gens[0]
        outs = [Outcome(p, spec, b, c, g, mem.peak, len(rows))
                for (p, spec), b, c, g in zip(chunk, budgets, comps, gens)]
        _fidelity(engine, cache, mark, chunk, outs, evicting, tail, ref, full_policy)
        for r, i in shadow.items():
            _score_fidelity(outs[i], gens[r].logits, ref, tail, "teacher-forced+decode-eviction")
        del cache, mark, hooks  # done with the cache: its buffers go back to the engine's arena
        for out in outs:
            if out.policy is full_policy and not full_wanted:
                continue
            yield pre, out


def _score_fidelity(out: Outcome, test: torch.Tensor, ref: Generation, tail: list[int], how: str) -> None:
    """KL and greedy agreement of ``test`` (logits along FullKV's answer) against FullKV's own logits."""
    m = len(ref.tokens)
    # without a tail the first answer token comes from the shared, uncompressed prefill: leave it out
    want, test = (ref.logits, test[-m:]) if tail else (ref.logits[1:], test[-(m - 1):] if m > 1 else test[:0])
    if len(test):
        out.kl_mean = float(kl_divergence(want, test).mean())
        out.greedy_agreement = float(greedy_agreement(want, test))
        out.fidelity = how


def _fidelity(engine, cache, mark, chunk, outs, evicting, tail, ref, full_policy) -> None:
    """Teacher-force FullKV's answer through every cell of a batch that did not evict while decoding.

    One forward over (tail + FullKV's answer) for all of them, after rolling the cache back.
    """
    m = len(ref.tokens)
    forced = tail + ref.tokens[: m - 1]
    plain = [i for i, (p, _) in enumerate(chunk) if p is not full_policy and i not in evicting]
    if not forced or not plain:
        return
    cache.rollback(mark)
    cache.set_active(plain)
    fed = engine.feed(cache, forced)
    for row, i in enumerate(plain):
        _score_fidelity(outs[i], fed[row], ref, tail, "teacher-forced")
