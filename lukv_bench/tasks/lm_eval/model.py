"""lm-eval integration: an ``LM`` that answers every request under many (policy, budget) cells.

Requests that share a context are prefilled once; all cells are compressed from that prefill
into one batched cache and answered together (:func:`~lukv_bench.runtime.engine.sweep` for
``generate_until``, one teacher-forced forward per continuation for ``loglikelihood``). Answers for
all cells are cached; :meth:`LukvEvalLM.use` selects which cell lm-eval's ``evaluate`` sees,
so each cell is one ordinary lm-eval evaluation with its own metrics.

Protocol (``compress: context``): the request is cut where its document's question starts
(:mod:`~lukv_bench.tasks.lm_eval.question`; ``split: question``); what comes before is prefilled and
compressed, the question and the answer prompt are fed after compression; the answer is then
generated or scored. When the question is not found (or with ``split: tail``) the last ``tail``
tokens are fed after compression instead, with a warning. Without an uncompressed tail the first
continuation token would be scored from the uncompressed prefill, and a single-token
multiple-choice answer would never feel the compression. Each answer records where the cut was
and how it was found. With ``doc_text`` set the model answers the no-context control: the
document's text before its question is removed from every request.
``loglikelihood_rolling`` (perplexity) is computed without compression, and says so.

Tokenisation follows lm-eval's ``HFLM``: trailing spaces of a context move to the continuation,
the continuation's tokens are those of ``context + continuation`` after the context's, and an
empty context is replaced by one prefix token (BOS, else EOS).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lukv_bench.errors import UserError
from lukv_bench.runtime.contract import Budget
from lukv_bench.runtime.engine import Engine, Generation, Outcome, sweep
from lukv_bench.tasks.lm_eval.question import locate, token_cut, without_context

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TAIL", "SPLITS", "LukvEvalLM"]

#: context tokens an lm-eval request leaves uncompressed and feeds after compression when its question is not found
DEFAULT_TAIL = 32
#: where a request is cut: at its document's question (falling back to ``tail`` tokens), or ``tail`` tokens always
SPLITS = ("question", "tail")


Cell = tuple[Any, Any]  #: (policy, budget spec)


@dataclass
class PrefillFigures:
    """What a record needs of a prefill (the prefill itself, with its K/V, is not kept)."""

    n: int  #: tokens prefilled (the compressed part of the context)
    prefill_s: float
    peak_mem_bytes: int
    tail: int  #: uncompressed context tokens fed after compression


@dataclass
class Answer:
    """One request's answer under one cell, with the figures its record needs."""

    value: Any  #: (logprob, is_greedy) or the generated text
    pre: PrefillFigures
    outcome: Outcome
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _figures(pre, tail: int) -> PrefillFigures:
    return PrefillFigures(n=pre.n, prefill_s=pre.prefill_s, peak_mem_bytes=pre.peak_mem_bytes, tail=tail)


@register_model("lukv")
class LukvEvalLM(LM):
    """lm-eval model running a lukv-bench :class:`~lukv_bench.runtime.engine.Engine` under several cells.

    Args:
        engine: the engine (model, tokenizer, capture settings).
        cells: (policy, budget spec) pairs; answers are computed for all of them at once.
        full_policy: the FullKV policy, reference for the fidelity metrics of generation.
        chat: whether lm-eval renders prompts with the chat template (then no BOS is added,
            the rendered text carries its own special tokens).
        max_length: context window; longer inputs are left-truncated (default: the model's
            ``max_position_embeddings``).
        tail: context tokens left uncompressed and fed after compression when the question is not
            found (``split: question``) or always (``split: tail``).
        batch_settings: cells decoded together (None: all).
        split: ``question`` (cut each request where its document's question starts) or ``tail``.
        doc_text: the task's ``doc_to_text``; when given, every request is answered without the
            document's text before its question (the no-context control).
    """

    def __init__(self, engine: Engine, cells: Sequence[Cell], full_policy: Any, chat: bool = True,
                 max_length: int | None = None, tail: int = DEFAULT_TAIL, batch_settings: int | None = None,
                 split: str = "question", doc_text: Callable[[Any], str] | None = None) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.engine = engine
        self.cells = list(cells)
        self.full_policy = full_policy
        self.chat = chat
        self.tail = tail
        self.split = split
        self.doc_text = doc_text
        self.batch_settings = batch_settings
        cfg = engine.model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or 8192
        self.active = 0
        self._answers: dict[tuple, list[Answer]] = {}  # request key -> answer per cell
        self._index: dict[tuple, tuple] = {}  # (task, doc_id, idx) -> request key
        self._warned: set[str] = set()

    # -- lm-eval plumbing ---------------------------------------------------------------------------
    def use(self, index: int) -> LukvEvalLM:
        """Make lm-eval see the answers of cell ``index``."""
        if not 0 <= index < len(self.cells):
            raise IndexError(f"setting {index} out of range (have {len(self.cells)})")
        self.active = index
        return self

    @property
    def tokenizer_name(self) -> str:
        """Used by lm-eval to key chat-templated request caches."""
        return str(getattr(self.engine.tokenizer, "name_or_path", "lukv")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The tokenizer's chat template, when chat mode is on."""
        return getattr(self.engine.tokenizer, "chat_template", None) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render a chat with the model's own template.

        lm-eval passes ``add_generation_prompt=False`` when the last message is an assistant turn
        that the model should continue (a task's ``gen_prefix``): that turn must stay open, or the
        model sees a finished answer and stops at once. Same as ``HFLM``.
        """
        tok = self.engine.tokenizer
        continue_final = not add_generation_prompt and bool(chat_history) and chat_history[-1]["role"] == "assistant"
        kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt,
                  "continue_final_message": continue_final}
        try:
            return tok.apply_chat_template(chat_history, **kwargs)
        except Exception as e:  # jinja2 TemplateError: e.g. templates without a system role
            if not any(m["role"] == "system" for m in chat_history):
                raise
            self._warn_once("system", f"chat template failed ({e}); retrying without the system message")
            return tok.apply_chat_template([m for m in chat_history if m["role"] != "system"], **kwargs)

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    # -- tokenisation ---------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        # chat-rendered text already carries its special tokens
        return list(self.engine.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def _prefix_token(self) -> int:
        tok = self.engine.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation token ids the way lm-eval's ``HFLM`` splits them."""
        if not context:
            return [self._prefix_token()], list(
                self.engine.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        return ctx, whole[len(ctx):]

    def _truncate(self, ids: list[int], room: int) -> list[int]:
        """Left-truncate ``ids`` so that ``room`` more tokens fit in the context window."""
        keep = max(1, self.max_length - room)
        if len(ids) > keep:
            self._warn_once("truncate", f"requests longer than {self.max_length} tokens are left-truncated")
            return ids[-keep:]
        return ids

    def _context(self, req: Any, context: str) -> str:
        """The request's context as answered: unchanged, or without its document's text for the control."""
        if self.doc_text is None:
            return context
        doc = getattr(req, "doc", None)
        span = locate(context, doc)
        control = without_context(context, self.doc_text(doc), span) if span is not None else None
        if control is None:
            raise UserError(
                f"lm_eval task {getattr(req, 'task_name', '?')!r}: the no-context control needs each request's "
                "question (a RULER document, or a `question`/`query` field whose text is in the request) and the "
                "document's text around it; this task's documents have none: set `control: false` in its entry")
        return control

    def _split(self, req: Any, context: str, room: int) -> tuple[list[int], list[int], dict[str, Any]]:
        """(compressed head, uncompressed tail, where the cut is and how it was found) of a request's context.

        ``context`` is the text whose tokens the request uses (left-truncated here so that ``room`` more
        tokens fit); the head keeps at least one token.
        """
        ids = self._encode(context) or [self._prefix_token()]
        kept = self._truncate(ids, room)
        span = locate(context, getattr(req, "doc", None)) if self.split == "question" and context else None
        before = token_cut(self.engine.tokenizer, context, span.start, not self.chat) if span is not None else 0
        cut = before - (len(ids) - len(kept))  # left truncation drops tokens before the cut
        if span is not None and cut >= 1:
            method = span.method
        else:
            if self.split == "question":
                why = ("was not found (no RULER document, no `question`/`query` field whose text is in the request)"
                       if span is None else "starts the request (nothing before it to compress)" if before < 1
                       else "was left-truncated")
                self._warn_once("split", f"task {getattr(req, 'task_name', '?')!r}: a request's question {why}; its "
                                         f"last {self.tail} tokens are fed after compression instead (meta.split)")
            cut = max(1, len(kept) - self.tail)
            method = f"tail: the last {self.tail} tokens" + (" (question not found)" * (self.split == "question"))
        return kept[:cut], kept[cut:], {"split": method, "compressed_tokens": cut, "uncompressed_tail": len(kept) - cut}

    # -- bookkeeping ----------------------------------------------------------------------------------
    @staticmethod
    def _req_key(req) -> tuple:
        return (req.request_type, tuple(map(str, req.args)))

    def _note(self, req) -> None:
        """Remember which request key answers (task, doc_id, idx), for :meth:`doc_answers`."""
        self._index[(getattr(req, "task_name", None), getattr(req, "doc_id", None), getattr(req, "idx", 0))] = (
            self._req_key(req))

    def doc_answers(self, task_name: str, doc_id: Any) -> list[Answer] | None:
        """Per cell, the answer of a document's first request (choices share the context).

        Decode time and answer tokens are summed over the document's requests when it sent several.
        """
        keys = sorted((idx, key) for (t, d, idx), key in self._index.items() if t == task_name and d == doc_id)
        distinct = list(dict.fromkeys(k for _, k in keys if k in self._answers))
        if not distinct:
            return None
        per_req = [self._answers[k] for k in distinct]
        out = []
        for i, first in enumerate(per_req[0]):
            if len(per_req) == 1:
                out.append(first)
                continue
            gen = dataclasses.replace(
                first.outcome.generation,
                decode_s=sum(r[i].outcome.generation.decode_s for r in per_req),
                tokens=[t for r in per_req for t in r[i].outcome.generation.tokens],
            )
            outcome = dataclasses.replace(first.outcome, generation=gen)
            out.append(dataclasses.replace(first, outcome=outcome, extra={**first.extra, "requests": len(keys)}))
        return out

    # -- requests -------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each continuation given its (compressed) context.

        Requests with the same context tokens form one group: one prefill of the context's head,
        one batched compression for all cells, then every continuation is scored for all
        cells in one forward (tail + continuation, teacher-forced).
        """
        groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[tuple[tuple, list[int]]]] = defaultdict(list)
        splits: dict[tuple[tuple[int, ...], tuple[int, ...]], dict[str, Any]] = {}
        seen: set[tuple] = set()
        for r in requests:
            self._note(r)
            key = self._req_key(r)
            if key in self._answers or key in seen:
                continue
            seen.add(key)
            context, continuation = r.args
            context = self._context(r, context)
            _, cont = self._encode_pair(context, continuation)
            if not cont:
                self._warn_once("empty", "a loglikelihood request has an empty continuation (scored 0.0)")
            # _encode_pair moves a context's trailing spaces to the continuation
            head, tail, split = self._split(r, context.rstrip(), len(cont))
            groups[(tuple(head), tuple(tail))].append((key, cont))
            splits[(tuple(head), tuple(tail))] = split
        for (head, tail), items in groups.items():
            self._score_group(list(head), list(tail), items, splits[(head, tail)])
        return [self._answers[self._req_key(r)][self.active].value for r in requests]

    @torch.no_grad()
    def _score_group(self, head: list[int], tail: list[int], items: list[tuple[tuple, list[int]]],
                     split: dict[str, Any]) -> None:
        eng = self.engine
        needs = set().union(*(p.needs for p, _ in self.cells))
        pre = eng.prefill(torch.tensor([head]), needs)
        figures = _figures(pre, len(tail))
        answers: dict[tuple, list[Answer]] = {key: [] for key, _ in items}
        size = self.batch_settings or len(self.cells)
        room = len(tail) + max((len(c) for _, c in items), default=0)
        for lo in range(0, len(self.cells), size):
            chunk = self.cells[lo : lo + size]
            budgets = [Budget.resolve(spec, pre.n) for _, spec in chunk]
            with eng.peak_memory() as mem:
                cache, comps = eng.compress(pre, [(p, b) for (p, _), b in zip(chunk, budgets)], headroom=room)
                mark = cache.mark()
                for key, cont in items:
                    t0 = time.perf_counter()
                    forced = tail + cont[:-1]
                    logits = eng.feed(cache, forced) if forced else torch.empty(len(chunk), 0, 1)
                    cache.rollback(mark)
                    if tail:
                        logits = logits[:, len(tail) - 1 :]
                    else:  # no tail: the first continuation token comes from the prefill's last logits
                        first = pre.last_logits.expand(len(chunk), 1, -1)
                        logits = torch.cat([first, logits], dim=1) if logits.shape[1] else first
                    share = (time.perf_counter() - t0) / len(chunk)
                    for row, ((policy, spec), budget, comp) in enumerate(zip(chunk, budgets, comps)):
                        if cont:
                            logp = torch.log_softmax(logits[row, : len(cont)], -1)
                            target = torch.tensor(cont, device=logp.device)
                            value = (float(logp.gather(1, target[:, None]).sum()),
                                     bool((logp.argmax(-1) == target).all()))
                        else:
                            value = (0.0, True)
                        gen = Generation(tokens=list(cont), logits=torch.empty(0), decode_s=share)
                        out = Outcome(policy, spec, budget, dataclasses.replace(comp, keep=[]), gen, 0, len(chunk))
                        answers[key].append(Answer(value, figures, out, {**split, "continuation_tokens": len(cont),
                                                                         "group_size": len(items)}))
            for key, _ in items:
                for a in answers[key][lo:]:
                    a.outcome.peak_mem_bytes = mem.peak
        self._answers.update(answers)
        if not tail:
            self._warn_once("tail", "tail: 0 — the first continuation token is scored from the uncompressed prefill")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation under each cell until EOS, a stop string, or ``max_gen_toks``.

        ``do_sample``/``temperature`` are ignored (always greedy: compression is compared on the
        same decoding rule). One prefill per request serves every cell; the context from its
        question on is fed after compression (``compress: context``) and all cells decode together.
        """
        for r in requests:
            self._note(r)
            key = self._req_key(r)
            if key in self._answers:
                continue
            context, gen_kwargs = r.args
            gen_kwargs = dict(gen_kwargs or {})
            if gen_kwargs.get("do_sample"):
                self._warn_once("sample", "do_sample=True is ignored: lukv-bench decodes greedily")
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else [u for u in until if u]
            max_toks = int(gen_kwargs.get("max_gen_toks", gen_kwargs.get("max_new_tokens", 256)))
            head, tail, split = self._split(r, self._context(r, context), max_toks)
            by_setting: dict[tuple[str, str], Answer] = {}
            for pre, out in sweep(self.engine, head, tail, self.cells, self.full_policy, compress="context",
                                  max_new_tokens=max_toks, eos_ids=self.engine.eos_ids(), stop=until,
                                  batch_settings=self.batch_settings):
                out.compressed = dataclasses.replace(out.compressed, keep=[])
                # a copy: the engine keeps FullKV's generation (with its logits) as the reference of later batches
                out.generation = dataclasses.replace(out.generation, logits=torch.empty(0))
                by_setting[(out.policy.name, repr(out.budget_spec))] = Answer(
                    out.generation.text, _figures(pre, len(tail)), out, {**split, "stopped": out.generation.stopped})
            self._answers[key] = [by_setting[(p.name, repr(s))] for p, s in self.cells]
        return [self._answers[self._req_key(r)][self.active].value for r in requests]

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style scoring over whole documents, WITHOUT compression (FullKV for every cell).

        The document (after one prefix token) is cut into disjoint windows of ``max_length``
        tokens; each window is scored from scratch with the previous window's last token as its
        first input, like lm-eval's rolling windows with ``context_len=1``.
        """
        self._warn_once("rolling", "loglikelihood_rolling runs uncompressed: perplexity tasks do not measure eviction")
        model = self.engine.model
        device = self.engine.device
        out = []
        for r in requests:
            self._note(r)
            ids = [self._prefix_token()] + list(self.engine.tokenizer(r.args[0], add_special_tokens=False)["input_ids"])
            total = 0.0
            window = self.max_length
            for start in range(1, len(ids), window):
                chunk = torch.tensor([ids[start - 1 : start + window - 1]], device=device)
                logits = model(chunk).logits[0].float()
                target = torch.tensor(ids[start : start + window], device=device)
                logp = torch.log_softmax(logits[: len(target)], -1)
                total += float(logp.gather(1, target[:, None]).sum())
            out.append(total)
        return out
