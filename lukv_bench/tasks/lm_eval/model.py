"""lm-eval integration: an ``LM`` that answers every request under many (policy, budget) settings.

Requests that share a context are prefilled once; all settings are compressed from that prefill
into one batched cache and answered together (:func:`~lukv_bench.runtime.engine.sweep` for
``generate_until``, one teacher-forced forward per continuation for ``loglikelihood``). Answers for
all settings are cached; :meth:`LukvEvalLM.use` selects which setting lm-eval's ``evaluate`` sees,
so each setting is one ordinary lm-eval evaluation with its own metrics.

Protocol: the request context is compressed *except its last* ``tail`` *tokens* (the question and
answer prompt, typically), which are fed after compression; the answer is then generated or
scored. Without such a tail the first continuation token would be scored from the uncompressed
prefill, and a single-token multiple-choice answer would never feel the compression.
``loglikelihood_rolling`` (perplexity) is computed without compression, and says so.

Tokenisation follows lm-eval's ``HFLM``: trailing spaces of a context move to the continuation,
the continuation's tokens are those of ``context + continuation`` after the context's, and an
empty context is replaced by one prefix token (BOS, else EOS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lukv_bench.runtime.contract import Budget
from lukv_bench.runtime.engine import Engine, Generation, Outcome, sweep
from lukv_bench.runtime.memory import PeakMemory
from lukv_bench.tasks.lm_eval.task_type import DEFAULT_TAIL

log = logging.getLogger(__name__)

__all__ = ["LukvEvalLM", "run_lm_eval"]


Setting = tuple[Any, Any]  #: (policy, budget spec)


@dataclass
class PrefillFigures:
    """What a record needs of a prefill (the prefill itself, with its K/V, is not kept)."""

    n: int  #: tokens prefilled (the compressed part of the context)
    prefill_s: float
    peak_mem_bytes: int
    tail: int  #: uncompressed context tokens fed after compression


@dataclass
class Answer:
    """One request's answer under one setting, with the figures its record needs."""

    value: Any  #: (logprob, is_greedy) or the generated text
    pre: PrefillFigures
    outcome: Outcome
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _figures(pre, tail: int) -> PrefillFigures:
    return PrefillFigures(n=pre.n, prefill_s=pre.prefill_s, peak_mem_bytes=pre.peak_mem_bytes, tail=tail)


@register_model("lukv")
class LukvEvalLM(LM):
    """lm-eval model running a lukv-bench :class:`~lukv_bench.runtime.engine.Engine` under several settings.

    Args:
        engine: the engine (model, tokenizer, capture settings).
        settings: (policy, budget spec) pairs; answers are computed for all of them at once.
        full_policy: the FullKV policy, reference for the fidelity metrics of generation.
        chat: whether lm-eval renders prompts with the chat template (then no BOS is added,
            the rendered text carries its own special tokens).
        max_length: context window; longer inputs are left-truncated (default: the model's
            ``max_position_embeddings``).
        tail: context tokens left uncompressed and fed after compression.
        batch_settings: settings decoded together (None: all).
    """

    def __init__(self, engine: Engine, settings: Sequence[Setting], full_policy: Any, chat: bool = True,
                 max_length: int | None = None, tail: int = DEFAULT_TAIL, batch_settings: int | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.settings = list(settings)
        self.full_policy = full_policy
        self.chat = chat
        self.tail = tail
        self.batch_settings = batch_settings
        cfg = engine.model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or 8192
        self.active = 0
        self._answers: dict[tuple, list[Answer]] = {}  # request key -> answer per setting
        self._index: dict[tuple, tuple] = {}  # (task, doc_id, idx) -> request key
        self._warned: set[str] = set()

    # -- lm-eval plumbing ---------------------------------------------------------------------------
    def use(self, index: int) -> LukvEvalLM:
        """Make lm-eval see the answers of setting ``index``."""
        if not 0 <= index < len(self.settings):
            raise IndexError(f"setting {index} out of range (have {len(self.settings)})")
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

    def _split(self, ids: list[int]) -> tuple[list[int], list[int]]:
        """(compressed head, uncompressed tail); the head keeps at least one token."""
        cut = max(1, len(ids) - self.tail)
        return ids[:cut], ids[cut:]

    # -- bookkeeping ----------------------------------------------------------------------------------
    @staticmethod
    def _req_key(req) -> tuple:
        return (req.request_type, tuple(map(str, req.args)))

    def _note(self, req) -> None:
        """Remember which request key answers (task, doc_id, idx), for :meth:`doc_answers`."""
        self._index[(getattr(req, "task_name", None), getattr(req, "doc_id", None), getattr(req, "idx", 0))] = (
            self._req_key(req))

    def doc_answers(self, task_name: str, doc_id: Any) -> list[Answer] | None:
        """Per setting, the answer of a document's first request (choices share the context).

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
        one batched compression for all settings, then every continuation is scored for all
        settings in one forward (tail + continuation, teacher-forced).
        """
        groups: dict[tuple[int, ...], list[tuple[tuple, list[int]]]] = defaultdict(list)
        seen: set[tuple] = set()
        for r in requests:
            self._note(r)
            key = self._req_key(r)
            if key in self._answers or key in seen:
                continue
            seen.add(key)
            ctx, cont = self._encode_pair(*r.args)
            if not cont:
                self._warn_once("empty", "a loglikelihood request has an empty continuation (scored 0.0)")
            ctx = self._truncate(ctx, len(cont))
            groups[tuple(ctx)].append((key, cont))
        for ctx, items in groups.items():
            self._score_group(list(ctx), items)
        return [self._answers[self._req_key(r)][self.active].value for r in requests]

    @torch.no_grad()
    def _score_group(self, ctx_ids: list[int], items: list[tuple[tuple, list[int]]]) -> None:
        eng = self.engine
        head, tail = self._split(ctx_ids)
        needs = set().union(*(p.needs for p, _ in self.settings))
        pre = eng.prefill(torch.tensor([head]), needs)
        figures = _figures(pre, len(tail))
        answers: dict[tuple, list[Answer]] = {key: [] for key, _ in items}
        size = self.batch_settings or len(self.settings)
        room = len(tail) + max((len(c) for _, c in items), default=0)
        for lo in range(0, len(self.settings), size):
            chunk = self.settings[lo : lo + size]
            budgets = [Budget.resolve(spec, pre.n) for _, spec in chunk]
            with PeakMemory(eng.device) as mem:
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
                        answers[key].append(Answer(value, figures, out, {"continuation_tokens": len(cont),
                                                                         "group_size": len(items)}))
            for key, _ in items:
                for a in answers[key][lo:]:
                    a.outcome.peak_mem_bytes = mem.peak
        self._answers.update(answers)
        if not tail:
            self._warn_once("tail", "tail: 0 — the first continuation token is scored from the uncompressed prefill")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation under each setting until EOS, a stop string, or ``max_gen_toks``.

        ``do_sample``/``temperature`` are ignored (always greedy: compression is compared on the
        same decoding rule). One prefill per request serves every setting; the context's tail is
        fed after compression (``compress: context``) and all settings decode together.
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
            ctx_ids = self._encode(context) or [self._prefix_token()]
            head, tail = self._split(self._truncate(ctx_ids, max_toks))
            by_setting: dict[tuple[str, str], Answer] = {}
            for pre, out in sweep(self.engine, head, tail, self.settings, self.full_policy, compress="context",
                                  max_new_tokens=max_toks, eos_ids=self.engine.eos_ids(), stop=until,
                                  batch_settings=self.batch_settings):
                out.compressed = dataclasses.replace(out.compressed, keep=[])
                out.generation.logits = torch.empty(0)
                by_setting[(out.policy.name, repr(out.budget_spec))] = Answer(
                    out.generation.text, _figures(pre, len(tail)), out, {"stopped": out.generation.stopped})
            self._answers[key] = [by_setting[(p.name, repr(s))] for p, s in self.settings]
        return [self._answers[self._req_key(r)][self.active].value for r in requests]

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style scoring over whole documents, WITHOUT compression (FullKV for every setting).

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


# -- running lm-eval tasks ----------------------------------------------------------------------------
def _sample_score(sample: dict[str, Any]) -> tuple[str, float | None]:
    """(metric name, value) of one lm-eval logged sample.

    RULER reports one metric per sequence length (named ``"1024"``, ``"4096"``...) and sets the
    lengths a doc does not have to -1: take the doc's own ``max_length``. Otherwise the first
    numeric metric (lm-eval's first ``metric_list`` entry, e.g. ``acc``).
    """
    names = list(sample.get("metrics", []))
    doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
    if "max_length" in doc and str(doc["max_length"]) in names:
        names = [str(doc["max_length"])] + names
    for name in names:
        value = sample.get(name)
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        if isinstance(value, (bool, int, float)):
            return name, float(value)
    return (names[0] if names else ""), None


def _metric_label(name: str, doc: dict[str, Any]) -> str:
    """A readable metric name: RULER's per-length metric ``"1024"`` becomes ``string_match@1024``."""
    if name.isdigit() and "max_length" in doc:
        return f"string_match@{name}"
    return name


def _answers_of(task: Any, doc: Any, target: Any) -> list[str]:
    """Reference answers as strings; a multiple-choice target index becomes the choice text."""
    choices = None
    if isinstance(target, int) and getattr(getattr(task, "config", None), "doc_to_choice", None):
        with contextlib.suppress(Exception):
            choices = task.doc_to_choice(doc)
    if choices is not None and isinstance(target, int) and 0 <= target < len(choices):
        return [str(choices[target])]
    if isinstance(target, (list, tuple)):
        return [str(t) for t in target]
    return [str(target)]


def _prediction_of(task: Any, doc: Any, resps: Any) -> str:
    """The model's answer: the generated text, or the highest-scoring choice of a multiple-choice doc."""
    if not isinstance(resps, list) or not resps:
        return str(resps)
    first = resps[0]
    if isinstance(first, list) and first and isinstance(first[0], str):
        return first[0]
    if isinstance(first, str):
        return first
    lls = [r[0] if isinstance(r, (list, tuple)) else r for r in resps]
    if all(isinstance(v, (int, float)) for v in lls):
        best = max(range(len(lls)), key=lambda i: lls[i])
        with contextlib.suppress(Exception):
            choices = task.doc_to_choice(doc)
            if len(choices) == len(lls):
                return str(choices[best])
        return str(best)
    return str(first)


def _data_source(task_name: str, task: Any, lm_meta: dict[str, Any]) -> str:
    """Where a task's documents come from, for the report (generated offline vs a dataset)."""
    meta = f"; metadata {lm_meta}" if lm_meta else ""
    if task_name.startswith(("niah_", "ruler_")):
        return f"RULER {task_name}: synthetic data generated offline by lm-eval from the model's tokenizer{meta}"
    cfg = getattr(task, "config", None)
    path = getattr(cfg, "dataset_path", None) or "?"
    files = (getattr(cfg, "dataset_kwargs", None) or {}).get("data_files")
    where = f"local files {files}" if path == "json" and files else f"dataset {path!r}"
    return f"lm-eval task {task_name} ({where}, loaded by lm-eval{meta})"


def _leaf_tasks(task_dict: dict) -> dict[str, Any]:
    """Flatten lm-eval's (possibly nested, group-keyed) task dict to {task name: Task}."""
    out: dict[str, Any] = {}
    for k, v in task_dict.items():
        if isinstance(v, dict):
            out.update(_leaf_tasks(v))
        elif v is not None:
            name = k if isinstance(k, str) else getattr(getattr(v, "config", None), "task", str(k))
            out[name] = v
    return out


@contextlib.contextmanager
def _quiet_nltk(task_names: Sequence[str]) -> Iterator[None]:
    """Import RULER's haystack module without its offline ``nltk.download("punkt_tab")`` noise.

    That import tries a download when punkt_tab is missing, prints an error and then a
    success-looking line. The synthetic haystacks used here do not need punkt; the essay ones need
    downloads anyway. Does nothing unless a RULER task (``niah_*``, ``ruler*``) is requested, or
    when nltk is absent or punkt_tab is installed.
    """
    if not any(n.startswith(("niah", "ruler")) for n in task_names):
        yield
        return
    try:
        import nltk
    except ImportError:
        yield
        return
    try:
        nltk.data.find("tokenizers/punkt_tab")
        installed = True
    except LookupError:
        installed = False
    if installed:
        yield
        return
    real = nltk.download

    def no_download(*args: Any, **kwargs: Any) -> bool:
        log.info("nltk punkt_tab is not installed; not downloading it (RULER's synthetic haystacks do not need it)")
        return False

    nltk.download = no_download
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(ImportError):
            import lm_eval.tasks.ruler.prepare_niah  # noqa: F401
        yield
    finally:
        nltk.download = real


class _DropKnownNoise(logging.Filter):
    """Drops two lm-eval warnings that are expected here and repeat once per task and setting."""

    NOISE = (
        "Custom kwargs can be passed to `--metadata`",  # RULER: we do pass them (max_seq_lengths)
        "No aggregation function defined for metric",  # RULER's per-length metric; mean is right
    )

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the known noise."""
        msg = record.getMessage()
        return not any(n in msg for n in self.NOISE)


@contextlib.contextmanager
def _quiet_lm_eval_logs() -> Iterator[None]:
    """Attach :class:`_DropKnownNoise` to the lm-eval loggers that emit it, for the duration."""
    flt = _DropKnownNoise()
    loggers = [logging.getLogger(n) for n in ("lm_eval.api.task", "lm_eval.evaluator_utils")]
    for lg in loggers:
        lg.addFilter(flt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(flt)


def _task_manager(cfg: Any, metadata: dict[str, Any]) -> Any:
    """A TaskManager; only the include_path is indexed when it holds every requested task (0 s vs ~7 s)."""
    from lm_eval.tasks import TaskManager

    if cfg.include_path:
        tm = TaskManager(include_path=cfg.include_path, include_defaults=False, metadata=metadata)
        if all(name in tm.all_tasks for name in cfg.tasks):
            return tm
    return TaskManager(include_path=cfg.include_path, metadata=metadata)


_HUB_HINT = (
    " (it needs a download from the Hugging Face hub, which is not reachable: RULER's essay haystacks "
    "niah_single_2/3, niah_multikey_1, niah_multivalue, niah_multiquery and qa_squad/qa_hotpot do; "
    "niah_single_1, niah_multikey_2/3, ruler_vt, ruler_cwe and ruler_fwe generate their data offline)"
)


def _load_tasks(cfg: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """{task name: Task} for every name in ``cfg.tasks`` (groups expanded); names the one that fails."""
    from lukv_bench.errors import UserError

    tm = _task_manager(cfg, metadata)
    tasks: dict[str, Any] = {}
    with _quiet_nltk(cfg.tasks):
        for name in cfg.tasks:
            try:
                if hasattr(tm, "load"):  # lm-eval >= 0.4.10: flat dicts
                    tasks.update(tm.load([name])["tasks"])
                else:  # pragma: no cover - older lm-eval
                    from lm_eval.tasks import get_task_dict

                    tasks.update(_leaf_tasks(get_task_dict([name], tm)))
            except Exception as e:
                text = f"{type(e).__name__}: {e}"
                hint = _HUB_HINT if any(w in text for w in ("Hub", "huggingface", "Connection", "resolve")) else ""
                msg = f"lm_eval task {cfg.name!r}: lm-eval could not load {name!r}: {text[:400]}{hint}"
                raise UserError(msg) from e
    return tasks


def run_lm_eval(cfg: Any, engine: Engine, tokenizer_path: str, settings: Sequence[Setting], full_policy: Any,
                writer: Any, make_record: Callable[..., Any], chat: bool, batch_settings: int | None = None,
                progress: Any = None) -> None:
    """Evaluate every (policy, budget) in ``settings`` on the lm-eval tasks of ``cfg``; append records.

    Per lm-eval task, one :class:`LukvEvalLM` answers all settings not yet in ``writer`` (each
    shared context prefilled once, all settings batched); lm-eval's ``evaluate`` then runs once per
    setting over the cached answers to compute that setting's per-doc metrics, which become one
    record per (doc, policy, budget). ``make_record(task, doc_id, policy, budget, **fields)`` is the
    runner's record constructor (the one record type, keyed with the run's settings). Records land
    task by task, so an interrupted run resumes per task.
    """
    lm_meta = cfg.lm_eval_metadata()
    metadata = {**({"tokenizer": tokenizer_path, "pretrained": tokenizer_path} if tokenizer_path else {}), **lm_meta}
    with _quiet_lm_eval_logs():
        _run_tasks(cfg, engine, _load_tasks(cfg, metadata), lm_meta, settings, full_policy, writer, make_record,
                   chat, batch_settings, progress)


def _run_tasks(cfg: Any, engine: Engine, tasks: dict[str, Any], lm_meta: dict[str, Any],
               settings: Sequence[Setting], full_policy: Any, writer: Any, make_record: Callable[..., Any],
               chat: bool, batch_settings: int | None, progress: Any) -> None:
    """The body of :func:`run_lm_eval`: per task, answer the settings not yet done and write records."""
    from lm_eval.evaluator import evaluate

    if cfg.num_fewshot is not None:
        for task in tasks.values():
            task.set_config(key="num_fewshot", value=cfg.num_fewshot)
    settings = list(settings)
    tail = cfg.tail

    def blank(task_name: str, doc_id: Any, policy: Any, spec: Any):
        return make_record(f"{cfg.name}/{task_name}", doc_id, policy, spec, score=None, metric="", prediction="",
                           answers=[])

    for task_name, task in tasks.items():
        n_docs = len(task.eval_docs)
        n = min(n_docs, int(cfg.limit)) if cfg.limit else n_docs
        todo = [(p, s) for p, s in settings if not all(writer.is_done(blank(task_name, d, p, s)) for d in range(n))]
        if not todo:
            continue
        if progress is not None and getattr(progress, "total", None) is not None:
            progress.total += sum(not writer.is_done(blank(task_name, d, p, s)) for p, s in todo for d in range(n))
            progress.refresh()
        lm = LukvEvalLM(engine, todo, full_policy, chat=chat, tail=tail, batch_settings=batch_settings)
        source = _data_source(task_name, task, lm_meta)
        for i, (policy, spec) in enumerate(todo):
            res = evaluate(lm.use(i), {task_name: task}, limit=cfg.limit, log_samples=True, bootstrap_iters=0,
                           apply_chat_template=chat)
            written: set[Any] = set()
            for s in (res or {}).get("samples", {}).get(task_name, []):
                doc_id = s["doc_id"]
                if doc_id in written:  # one record per doc: the first filter's
                    continue
                written.add(doc_id)
                doc = s.get("doc") if isinstance(s.get("doc"), dict) else {}
                metric, value = _sample_score(s)
                answers = lm.doc_answers(task_name, doc_id)
                meta = {"lm_eval_task": task_name, "lm_eval_metric": metric, "lm_eval_filter": s.get("filter"),
                        "uncompressed_tail": tail, **({"max_length": doc["max_length"]} if "max_length" in doc else {})}
                rec = make_record(
                    f"{cfg.name}/{task_name}", doc_id, policy, spec, score=value, metric=_metric_label(metric, doc),
                    prediction=_prediction_of(task, s.get("doc"), s.get("filtered_resps")),
                    answers=_answers_of(task, s.get("doc"), s.get("target")), data_source=source, meta=meta,
                )
                if answers is not None:
                    a = answers[i]
                    rec.set_outcome(a.pre, a.outcome)
                    rec.context_tokens = a.pre.n + a.pre.tail
                    rec.context_tokens_original = rec.context_tokens
                    meta.update(a.extra)
                else:
                    log.warning("no answers recorded for %s doc %s: cost fields left empty", task_name, doc_id)
                if not writer.is_done(rec):
                    writer.append(rec)
                    if progress is not None:
                        progress.update(1)
