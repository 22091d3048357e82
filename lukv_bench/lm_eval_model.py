"""lm-eval integration: an ``LM`` that answers every request under many (policy, budget) settings.

Requests that share a context are prefilled once; each (policy, budget) compresses that prefill
and then scores every continuation (``loglikelihood``) or generates (``generate_until``). Answers
for all settings are computed together and cached; :meth:`LukvEvalLM.use` selects which setting
lm-eval's ``evaluate`` sees, so each setting is one ordinary lm-eval evaluation with its own
metrics. ``loglikelihood_rolling`` (perplexity) is computed without compression, and says so.

The whole request context is compressed (lm-eval does not separate context from question).
Tokenisation follows lm-eval's ``HFLM``: trailing spaces of a context move to the continuation,
the continuation's tokens are those of ``context + continuation`` after the context's, and an
empty context is replaced by one prefix token (BOS, else EOS).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lukv_bench.engine import Engine, sweep
from lukv_bench.policy import Budget

log = logging.getLogger(__name__)

__all__ = ["LukvEvalLM", "RequestStats", "run_lm_eval"]


@dataclass
class RequestStats:
    """Cost and memory figures of one request under one setting (joined to lm-eval's per-doc logs)."""

    context_tokens: int
    kv_bytes: int
    kv_bytes_full: int
    layer_budgets: list[int]
    prefill_s: float
    compress_s: float
    decode_s: float = 0.0
    new_tokens: int = 0
    kl_mean: float | None = None
    greedy_agreement: float | None = None
    budget_ratio: float = 1.0
    budget_tokens_mean: int = 0
    head_budgets: list[list[int]] | None = None
    allocation_info: dict[str, Any] | None = None
    peak_mem_bytes: int | None = None
    prefill_peak_mem_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, pre, comp, budget, **more: Any) -> RequestStats:
        """Figures of one compressed cache (``comp``) built from prefill ``pre`` at ``budget``."""
        return cls(
            context_tokens=pre.n, kv_bytes=comp.kv_bytes, kv_bytes_full=comp.kv_bytes_full,
            layer_budgets=comp.layer_budgets, prefill_s=pre.prefill_s, compress_s=comp.compress_s,
            budget_ratio=budget.ratio, budget_tokens_mean=budget.tokens, head_budgets=comp.head_budgets,
            allocation_info=comp.allocation_info, prefill_peak_mem_bytes=pre.peak_mem_bytes, **more,
        )


Setting = tuple[Any, Any]  #: (policy, budget spec)


@register_model("lukv")
class LukvEvalLM(LM):
    """lm-eval model running a lukv-bench :class:`~lukv_bench.engine.Engine` under several settings.

    Args:
        engine: the engine (model, tokenizer, capture settings).
        settings: (policy, budget spec) pairs; answers are computed for all of them at once.
        full_policy: the FullKV policy, reference for the fidelity metrics of generation.
        chat: whether lm-eval renders prompts with the chat template (then no BOS is added,
            the rendered text carries its own special tokens).
        max_length: context window; longer inputs are left-truncated (default: the model's
            ``max_position_embeddings``).
    """

    def __init__(self, engine: Engine, settings: Sequence[Setting], full_policy: Any, chat: bool = True,
                 max_length: int | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.settings = list(settings)
        self.full_policy = full_policy
        self.chat = chat
        cfg = engine.model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or 8192
        self.active = 0
        self._answers: dict[tuple, list[Any]] = {}  # request key -> answer per setting
        self._req_stats: dict[tuple, list[RequestStats]] = {}  # request key -> stats per setting
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

    # -- bookkeeping ----------------------------------------------------------------------------------
    @staticmethod
    def _req_key(req) -> tuple:
        return (req.request_type, tuple(map(str, req.args)))

    def _note(self, req) -> None:
        """Remember which request key answers (task, doc_id, idx), for :meth:`doc_stats`."""
        self._index[(getattr(req, "task_name", None), getattr(req, "doc_id", None), getattr(req, "idx", 0))] = (
            self._req_key(req))

    def doc_stats(self, task_name: str, doc_id: Any) -> list[RequestStats] | None:
        """Stats per setting of one document: those of its first request (choices share the context).

        Time and new tokens are summed over the document's requests when it sent several.
        """
        keys = sorted((idx, key) for (t, d, idx), key in self._index.items() if t == task_name and d == doc_id)
        distinct = list(dict.fromkeys(k for _, k in keys if k in self._req_stats))
        if not distinct:
            return None
        per_req = [self._req_stats[k] for k in distinct]
        out = []
        for i, first in enumerate(per_req[0]):
            st = RequestStats(**{**first.__dict__, "extra": dict(first.extra)})
            if len(per_req) > 1:
                st.decode_s = sum(s[i].decode_s for s in per_req)
                st.new_tokens = sum(s[i].new_tokens for s in per_req)
                st.extra["requests"] = len(keys)
            out.append(st)
        return out

    # -- requests -------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each continuation given its (compressed) context.

        Requests with the same context tokens form one group: one prefill, one compression per
        setting, then every continuation is scored on that compressed cache.
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
        return [self._answers[self._req_key(r)][self.active] for r in requests]

    @torch.no_grad()
    def _score_group(self, ctx_ids: list[int], items: list[tuple[tuple, list[int]]]) -> None:
        eng = self.engine
        needs = set().union(*(p.needs for p, _ in self.settings))
        pre = eng.prefill(torch.tensor([ctx_ids]), needs)
        answers: list[list[Any]] = [[] for _ in items]
        stats: list[list[RequestStats]] = [[] for _ in items]
        for policy, spec in self.settings:
            budget = Budget.resolve(spec, pre.n)
            comp = eng.compress(pre, policy, budget)
            mark = comp.cache.mark()
            for i, (_, cont) in enumerate(items):
                if not cont:
                    answers[i].append((0.0, True))
                else:
                    logits = torch.cat([pre.last_logits[None], eng.feed(comp.cache, cont[:-1])])
                    comp.cache.rollback(mark)
                    logp = torch.log_softmax(logits, -1)
                    target = torch.tensor(cont, device=logp.device)
                    total = float(logp.gather(1, target[:, None]).sum())
                    greedy = bool((logits.argmax(-1) == target).all())
                    answers[i].append((total, greedy))
                stats[i].append(RequestStats.of(
                    pre, comp, budget, extra={"continuation_tokens": len(cont), "group_size": len(items)}
                ))
        for (key, _), a, s in zip(items, answers, stats):
            self._answers[key] = a
            self._req_stats[key] = s

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation under each setting until EOS, a stop string, or ``max_gen_toks``.

        ``do_sample``/``temperature`` are ignored (always greedy: compression is compared on the
        same decoding rule). One prefill per request serves every setting.
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
            ctx_ids = self._truncate(ctx_ids, max_toks)
            answers, stats = [], []
            for pre, out in sweep(self.engine, ctx_ids, [], self.settings, self.full_policy, compress="prompt",
                                  max_new_tokens=max_toks, eos_ids=self.engine.eos_ids(), stop=until):
                comp, gen = out.compressed, out.generation
                answers.append(gen.text)
                stats.append(RequestStats.of(
                    pre, comp, out.budget, decode_s=gen.decode_s, new_tokens=len(gen.tokens),
                    kl_mean=out.kl_mean, greedy_agreement=out.greedy_agreement,
                    peak_mem_bytes=out.peak_mem_bytes, extra={"stopped": gen.stopped},
                ))
            self._answers[key] = answers
            self._req_stats[key] = stats
        return [self._answers[self._req_key(r)][self.active] for r in requests]

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


def run_lm_eval(cfg: Any, engine: Engine, model_name: str, tokenizer_path: str, settings: Sequence[Setting],
                full_policy: Any, writer: Any, record_base: dict[str, Any], chat: bool,
                progress: Any = None) -> None:
    """Evaluate every (policy, budget) in ``settings`` on the lm-eval tasks of ``cfg``; append records.

    Per lm-eval task, one :class:`LukvEvalLM` answers all settings not yet in ``writer`` (each
    shared context prefilled once); lm-eval's ``evaluate`` then runs once per setting over the
    cached answers to compute that setting's per-doc metrics, which become one record per
    (doc, policy, budget). Records land task by task, so an interrupted run resumes per task.
    """
    lm_meta = cfg.lm_eval_metadata()
    metadata = {**({"tokenizer": tokenizer_path, "pretrained": tokenizer_path} if tokenizer_path else {}), **lm_meta}
    with _quiet_lm_eval_logs():
        _run_tasks(cfg, engine, model_name, _load_tasks(cfg, metadata), lm_meta, settings, full_policy, writer,
                   record_base, chat, progress)


def _run_tasks(cfg: Any, engine: Engine, model_name: str, tasks: dict[str, Any], lm_meta: dict[str, Any],
               settings: Sequence[Setting], full_policy: Any, writer: Any, record_base: dict[str, Any], chat: bool,
               progress: Any) -> None:
    """The body of :func:`run_lm_eval`: per task, answer the settings not yet done and write records."""
    from lm_eval.evaluator import evaluate

    from lukv_bench.results import record_key

    if cfg.num_fewshot is not None:
        for task in tasks.values():
            task.set_config(key="num_fewshot", value=cfg.num_fewshot)
    settings = list(settings)

    def key(task_name: str, doc_id: Any, policy: Any, spec: Any) -> tuple:
        return record_key({"model": model_name, "task": f"{cfg.name}/{task_name}", "sample_id": str(doc_id),
                           "policy": policy.name, "budget": spec})

    for task_name, task in tasks.items():
        n_docs = len(task.eval_docs)
        n = min(n_docs, int(cfg.limit)) if cfg.limit else n_docs
        todo = [(p, s) for p, s in settings if not all(writer.is_done(key(task_name, d, p, s)) for d in range(n))]
        if not todo:
            continue
        if progress is not None and getattr(progress, "total", None) is not None:
            progress.total += sum(not writer.is_done(key(task_name, d, p, s)) for p, s in todo for d in range(n))
            progress.refresh()
        lm = LukvEvalLM(engine, todo, full_policy, chat=chat)
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
                st_list = lm.doc_stats(task_name, doc_id)
                st = st_list[i] if st_list else None
                rec = dict(record_base)
                rec.update({
                    "model": model_name, "task": f"{cfg.name}/{task_name}", "sample_id": str(doc_id),
                    "policy": policy.name, "policy_params": policy.params, "budget": spec,
                    "score": value, "metric": _metric_label(metric, doc),
                    "prediction": _prediction_of(task, s.get("doc"), s.get("filtered_resps")),
                    "answers": _answers_of(task, s.get("doc"), s.get("target")),
                    "data_source": source,
                    "meta": {**record_base.get("meta", {}), "lm_eval_task": task_name, "lm_eval_metric": metric,
                             "lm_eval_filter": s.get("filter"),
                             **({"max_length": doc["max_length"]} if "max_length" in doc else {})},
                })
                if st is not None:
                    rec.update({
                        "budget_ratio": st.budget_ratio, "budget_tokens_mean": st.budget_tokens_mean,
                        "context_tokens": st.context_tokens, "layer_budgets": st.layer_budgets,
                        "head_budgets": st.head_budgets, "allocation_info": st.allocation_info,
                        "kv_bytes": st.kv_bytes, "kv_bytes_full": st.kv_bytes_full, "prefill_s": st.prefill_s,
                        "compress_s": st.compress_s, "decode_s": st.decode_s, "new_tokens": st.new_tokens,
                        "kl_mean": st.kl_mean, "greedy_agreement": st.greedy_agreement,
                        "peak_mem_bytes": st.peak_mem_bytes, "prefill_peak_mem_bytes": st.prefill_peak_mem_bytes,
                    })
                    rec["meta"].update(st.extra)
                else:
                    log.warning("no request stats for %s doc %s: cost fields left empty", task_name, doc_id)
                if not writer.is_done(rec):
                    writer.append(rec)
                    if progress is not None:
                        progress.update(1)
