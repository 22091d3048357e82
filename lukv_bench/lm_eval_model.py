"""lm-eval integration: an ``LM`` that answers every request under many (policy, budget) settings.

Requests that share a context are prefilled once; each (policy, budget) compresses that prefill
and then scores every continuation (``loglikelihood``) or generates (``generate_until``). Answers
for all settings are computed together and cached; :meth:`LukvEvalLM.use` selects which setting
lm-eval's ``evaluate`` sees, so each setting is one ordinary lm-eval evaluation with its own
metrics. ``loglikelihood_rolling`` (perplexity) is computed without compression, and says so.

The whole request context is compressed (lm-eval does not separate context from question).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lukv_bench.engine import Engine, sweep
from lukv_bench.policy import Budget

log = logging.getLogger(__name__)


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
    extra: dict[str, Any] = field(default_factory=dict)


@register_model("lukv")
class LukvEvalLM(LM):
    """lm-eval model running a lukv-bench :class:`~lukv_bench.engine.Engine` under several settings."""

    def __init__(self, engine: Engine, settings: list[tuple[Any, Any]], full_policy, chat: bool = True,
                 max_length: int | None = None):
        super().__init__()
        self.engine = engine
        self.settings = list(settings)
        self.full_policy = full_policy
        self.chat = chat
        cfg = engine.model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", 8192)
        self.active = 0
        self._answers: dict[tuple, list[Any]] = {}  # request key -> answer per setting
        self.stats: dict[tuple, list[RequestStats]] = {}  # (task, doc_id, idx) -> stats per setting
        self._warned_rolling = False

    # -- lm-eval plumbing ---------------------------------------------------------------------------
    def use(self, index: int) -> LukvEvalLM:
        """Make lm-eval see the answers of setting ``index``."""
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
        """Render a chat with the model's own template."""
        return self.engine.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode(self, text: str) -> list[int]:
        # chat-rendered text already carries its special tokens
        add = not self.chat
        return list(self.engine.tokenizer(text, add_special_tokens=add)["input_ids"])

    def _eos(self) -> list[int]:
        eos = self.engine.tokenizer.eos_token_id
        return [] if eos is None else [eos]

    @staticmethod
    def _req_key(req) -> tuple:
        return (req.request_type, tuple(map(str, req.args)))

    def _stats_key(self, req) -> tuple:
        return (getattr(req, "task_name", None), getattr(req, "doc_id", None), getattr(req, "idx", 0))

    # -- requests -------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each continuation given its (compressed) context."""
        missing = [r for r in requests if self._req_key(r) not in self._answers]
        by_context: dict[str, list] = defaultdict(list)
        for r in missing:
            by_context[r.args[0]].append(r)
        for context, reqs in by_context.items():
            self._score_group(context, reqs)
        return [self._answers[self._req_key(r)][self.active] for r in requests]

    @torch.no_grad()
    def _score_group(self, context: str, reqs: list) -> None:
        eng = self.engine
        ctx_ids = self._encode(context)
        if not ctx_ids:
            ctx_ids = [eng.tokenizer.bos_token_id or eng.tokenizer.eos_token_id]
        needs = set().union(*(p.needs for p, _ in self.settings))
        pre = eng.prefill(torch.tensor([ctx_ids]), needs)
        conts = [list(eng.tokenizer(r.args[1], add_special_tokens=False)["input_ids"]) for r in reqs]
        answers: list[list[Any]] = [[] for _ in reqs]
        stats: list[list[RequestStats]] = [[] for _ in reqs]
        for policy, spec in self.settings:
            budget = Budget.resolve(spec, pre.n)
            comp = eng.compress(pre, policy, budget)
            mark = comp.cache.mark()
            for i, cont in enumerate(conts):
                logits = torch.cat([pre.last_logits[None], eng.feed(comp.cache, cont[:-1])]) if cont else None
                comp.cache.rollback(mark)
                if logits is None:
                    answers[i].append((0.0, True))
                else:
                    logp = torch.log_softmax(logits, -1)
                    target = torch.tensor(cont)
                    total = float(logp.gather(1, target[:, None]).sum())
                    greedy = bool((logits.argmax(-1) == target).all())
                    answers[i].append((total, greedy))
                stats[i].append(RequestStats(
                    context_tokens=pre.n, kv_bytes=comp.kv_bytes, kv_bytes_full=comp.kv_bytes_full,
                    layer_budgets=comp.layer_budgets, prefill_s=pre.prefill_s, compress_s=comp.compress_s,
                    budget_ratio=budget.ratio, budget_tokens_mean=budget.tokens,
                ))
        for r, a, s in zip(reqs, answers, stats):
            self._answers[self._req_key(r)] = a
            self.stats[self._stats_key(r)] = s

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation under each setting until a stop string or ``max_gen_toks``."""
        for r in requests:
            if self._req_key(r) in self._answers:
                continue
            context, gen_kwargs = r.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_toks = int(gen_kwargs.get("max_gen_toks", 256))
            ctx_ids = self._encode(context)
            answers, stats = [], []
            for pre, out in sweep(self.engine, ctx_ids, [], self.settings, self.full_policy, compress="prompt",
                                  max_new_tokens=max_toks, eos_ids=self._eos(), stop=until):
                comp, gen = out.compressed, out.generation
                answers.append(gen.text)
                stats.append(RequestStats(
                    context_tokens=pre.n, kv_bytes=comp.kv_bytes, kv_bytes_full=comp.kv_bytes_full,
                    layer_budgets=comp.layer_budgets, prefill_s=pre.prefill_s, compress_s=comp.compress_s,
                    decode_s=gen.decode_s, new_tokens=len(gen.tokens), kl_mean=out.kl_mean,
                    greedy_agreement=out.greedy_agreement, budget_ratio=out.budget.ratio,
                    budget_tokens_mean=out.budget.tokens,
                ))
            self._answers[self._req_key(r)] = answers
            self.stats[self._stats_key(r)] = stats
        return [self._answers[self._req_key(r)][self.active] for r in requests]

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style scoring over whole documents, WITHOUT compression (FullKV for every setting)."""
        if not self._warned_rolling:
            log.warning("loglikelihood_rolling runs uncompressed: perplexity tasks do not measure eviction")
            self._warned_rolling = True
        out = []
        model = self.engine.model
        for r in requests:
            ids = self._encode(r.args[0])
            bos = self.engine.tokenizer.bos_token_id
            ids = ([bos] if bos is not None else []) + ids
            total = 0.0
            window = self.max_length
            for start in range(1, len(ids), window):
                chunk = torch.tensor([ids[max(0, start - 1) : start + window - 1]])
                logits = model(chunk).logits[0].float()
                target = torch.tensor(ids[start : start + window])
                logp = torch.log_softmax(logits[: len(target)], -1)
                total += float(logp.gather(1, target[:, None]).sum())
            out.append(total)
        return out


def _sample_score(sample: dict[str, Any]) -> tuple[str, float | None]:
    """(metric name, value) of one lm-eval logged sample: its first numeric metric."""
    for name in sample.get("metrics", []):
        value = sample.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) or isinstance(value, bool):
            return name, float(value)
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (int, float)):
            return name, float(value[0])
    return "", None


def run_lm_eval(cfg, engine: Engine, model_name: str, tokenizer_path: str, settings, full_policy, writer,
                record_base: dict[str, Any], chat: bool, progress=None) -> None:
    """Evaluate every (policy, budget) in ``settings`` on the lm-eval tasks of ``cfg``; append records.

    One :class:`LukvEvalLM` answers all settings (each shared context prefilled once); lm-eval's
    ``evaluate`` then runs once per setting over cached answers to compute that setting's metrics.
    """
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager, get_task_dict

    from lukv_bench.results import record_key

    metadata = {"tokenizer": tokenizer_path, "pretrained": tokenizer_path, **cfg.lm_eval_metadata()}
    tm = TaskManager(include_path=cfg.include_path, metadata=metadata)
    task_dict = get_task_dict(cfg.tasks, tm)
    if cfg.num_fewshot is not None:
        for task in task_dict.values():
            if hasattr(task, "set_config"):
                task.set_config(key="num_fewshot", value=cfg.num_fewshot)
    lm = LukvEvalLM(engine, settings, full_policy, chat=chat)

    def key(task_name: str, doc_id: Any, policy, spec) -> tuple:
        return record_key({"model": model_name, "task": f"{cfg.name}/{task_name}", "sample_id": str(doc_id),
                           "policy": policy.name, "budget": spec})

    for i, (policy, spec) in enumerate(settings):
        wanted = []
        for task_name, task in task_dict.items():
            n_docs = len(list(task.eval_docs))
            n = min(n_docs, cfg.limit) if cfg.limit else n_docs
            wanted += [key(task_name, d, policy, spec) for d in range(n)]
        if wanted and all(writer.is_done(k) for k in wanted):
            continue
        res = evaluate(lm.use(i), task_dict, limit=cfg.limit, log_samples=True, bootstrap_iters=0,
                       apply_chat_template=chat)
        for task_name, samples in (res or {}).get("samples", {}).items():
            for s in samples:
                doc_id = s["doc_id"]
                metric, value = _sample_score(s)
                st_list = lm.stats.get((task_name, doc_id, 0)) or next(
                    (v for (t, d, _), v in lm.stats.items() if t == task_name and d == doc_id), None)
                st = st_list[i] if st_list else None
                resp = s.get("filtered_resps") or s.get("resps")
                rec = dict(record_base)
                rec.update({
                    "model": model_name, "task": f"{cfg.name}/{task_name}", "sample_id": str(doc_id),
                    "policy": policy.name, "policy_params": policy.params, "budget": spec,
                    "score": value, "metric": metric, "prediction": str(resp[0] if isinstance(resp, list) and resp
                                                                      else resp),
                    "answers": [str(s.get("target"))],
                    "data_source": f"lm-eval task {task_name} (lm-eval's own data loading; metadata {cfg.metadata})",
                })
                if st is not None:
                    rec.update({
                        "budget_ratio": st.budget_ratio, "budget_tokens_mean": st.budget_tokens_mean,
                        "context_tokens": st.context_tokens, "layer_budgets": st.layer_budgets,
                        "kv_bytes": st.kv_bytes, "kv_bytes_full": st.kv_bytes_full, "prefill_s": st.prefill_s,
                        "compress_s": st.compress_s, "decode_s": st.decode_s, "new_tokens": st.new_tokens,
                        "kl_mean": st.kl_mean, "greedy_agreement": st.greedy_agreement,
                    })
                writer.append(rec)
                if progress is not None:
                    progress.update(1)
