"""Run a suite: for each model, task and sample, one prefill, then every (policy, budget).

Records go to ``OUT/results.jsonl`` as they finish (see :mod:`lukv_bench.results`); a rerun of the
same command skips what is done. ``OUT/run.json`` holds the suite and the software versions.
"""

from __future__ import annotations

import functools
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lukv_bench.engine import Engine, EngineSettings, sweep
from lukv_bench.errors import UserError
from lukv_bench.prompts import build_prompt, use_chat_template
from lukv_bench.results import ResultsWriter, record_key

log = logging.getLogger(__name__)


@functools.cache
def versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    import transformers

    import lukv_bench

    out = {
        "lukv_bench": lukv_bench.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(setting)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {setting} was requested but CUDA is not available; use device: auto or cpu")
    return dev


class Runner:
    """Executes a validated suite on one machine."""

    def __init__(self, suite, out_dir: Path, progress: bool = True):
        from lukv_bench.registry import resolve_policy

        self.suite = suite
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.policies = []
        for i, spec in enumerate(suite.policies):
            try:
                self.policies.append(resolve_policy(spec))
            except UserError as e:
                raise type(e)(f"{suite.where(f'policies[{i}]')}: {e}") from e
            # records are keyed by policy name: a second entry with the same name would be skipped
            first = next(j for j, p in enumerate(self.policies) if p.name == self.policies[-1].name)
            if first != i:
                raise UserError(
                    f"{suite.where(f'policies[{i}]')}: policy name {self.policies[-1].name!r} is already used by "
                    f"policies[{first}] (results are keyed by name); give this variant its own name, e.g. "
                    f"{{name: my-{self.policies[-1].name}, scorer: ..., allocator: ..., <params>}}"
                )
        if not any(p.name == "full" for p in self.policies):
            # FullKV is the reference for fidelity and for the report; it always runs
            self.policies.insert(0, resolve_policy("full"))
        self.writer = ResultsWriter(self.out_dir)

    # -- helpers ----------------------------------------------------------------------------------
    def _budgets(self) -> list[Any]:
        return list(self.suite.budgets)

    def _policy_budgets(self, policy) -> list[Any]:
        # FullKV does not depend on the budget: one record per sample
        return [1.0] if policy.name == "full" else self._budgets()

    def _write_run_json(self, model_name: str) -> None:
        info = {"suite": self.suite.to_dict(), "model": model_name, "versions": versions(), "argv": sys.argv}
        (self.out_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> Path:
        """Run everything not yet in results.jsonl; returns the results path."""
        from lukv_bench.models import load_model
        from lukv_bench.tasks import build_tasks
        from lukv_bench.tasks.lm_eval_tasks import LmEvalTaskConfig

        suite = self.suite
        if suite.threads:
            torch.set_num_threads(int(suite.threads))
        torch.manual_seed(suite.seed)
        device = resolve_device(suite.device)
        lm = load_model(suite.model, dtype=suite.dtype, device=str(device))
        self._write_run_json(lm.name)
        settings = EngineSettings(
            window=suite.window, storage=suite.storage, gqa_reduce=suite.gqa_reduce, decode_every=suite.decode_every
        )
        engine = Engine(lm.model, lm.tokenizer, settings)
        chat = use_chat_template(lm.tokenizer, suite.chat_template)
        tasks = build_tasks(suite, tokenizer=lm.tokenizer)
        lm_eval_tasks = [t for t in tasks if isinstance(t, LmEvalTaskConfig)]
        sample_tasks = [t for t in tasks if not isinstance(t, LmEvalTaskConfig)]
        per_sample = sum(len(self._policy_budgets(p)) for p in self.policies)
        samples = [(task, list(task.samples(task.limit))) for task in sample_tasks]
        total = per_sample * sum(len(s) for _, s in samples)
        bar = tqdm(total=total, desc="overall", unit="run", disable=not self.progress, position=0)
        bar.update(min(total, len(self.writer.done)))
        for task, task_samples in samples:
            for sample in task_samples:
                todo = [
                    (p, b)
                    for p in self.policies
                    for b in self._policy_budgets(p)
                    if not self.writer.is_done(self._key(lm.name, task, sample, p, b))
                ]
                if not todo:
                    continue
                self._run_sample(engine, lm.name, task, sample, todo, chat, bar)
        if lm_eval_tasks:
            from lukv_bench.lm_eval_model import run_lm_eval
            from lukv_bench.models import resolve_model_path

            tokenizer_path = resolve_model_path(suite.model)[0] if suite.model != "tiny" else ""
            runs = [(p, b) for p in self.policies for b in self._policy_budgets(p)]
            full = next(p for p in self.policies if p.name == "full")
            base = {"seed": suite.seed, "compress_mode": "prompt", "window": settings.window,
                    "storage": settings.storage, "gqa_reduce": settings.gqa_reduce, "versions": versions(),
                    "meta": {}}
            for cfg in lm_eval_tasks:
                run_lm_eval(cfg, engine, lm.name, tokenizer_path, runs, full, self.writer, base, chat, progress=bar)
        bar.close()
        return self.writer.path

    def _key(self, model: str, task, sample, policy, budget) -> tuple:
        return record_key(
            {"model": model, "task": task.name, "sample_id": sample.id, "policy": policy.name, "budget": budget}
        )

    def _run_sample(self, engine, model_name, task, sample, todo, chat, bar) -> None:
        suite = self.suite
        ids = build_prompt(engine.tokenizer, sample, chat)
        full = next(p for p in self.policies if p.name == "full")
        inner = tqdm(total=len(todo), desc=f"{task.name}:{sample.id}", leave=False, disable=not self.progress)
        outcomes = sweep(
            engine, ids.context, ids.question, todo, full, compress=suite.compress,
            max_new_tokens=suite.max_new_tokens, eos_ids=engine.eos_ids(), stop=suite.stop,
        )
        for pre, out in outcomes:
            comp, gen = out.compressed, out.generation
            rec = {
                "model": model_name,
                "task": task.name,
                "sample_id": sample.id,
                "policy": out.policy.name,
                "policy_params": out.policy.params,
                "budget": out.budget_spec,
                "budget_ratio": out.budget.ratio,
                "budget_tokens_mean": out.budget.tokens,
                "context_tokens": pre.n,
                "layer_budgets": comp.layer_budgets,
                "head_budgets": comp.head_budgets,
                "allocation_info": comp.allocation_info,
                "score": task.score(gen.text, sample),
                "metric": task.metric,
                "prediction": gen.text,
                "answers": sample.answers,
                "kv_bytes": comp.kv_bytes,
                "kv_bytes_full": comp.kv_bytes_full,
                "prefill_s": pre.prefill_s,
                "compress_s": comp.compress_s,
                "decode_s": gen.decode_s,
                "new_tokens": len(gen.tokens),
                "peak_mem_bytes": out.peak_mem_bytes,
                "prefill_peak_mem_bytes": pre.peak_mem_bytes,
                "kl_mean": out.kl_mean,
                "greedy_agreement": out.greedy_agreement,
                "data_source": task.data_source,
                "seed": suite.seed,
                "compress_mode": suite.compress,
                "window": engine.settings.window,
                "storage": engine.settings.storage,
                "gqa_reduce": engine.settings.gqa_reduce,
                "meta": sample.meta,
                "versions": versions(),
            }
            self.writer.append(rec)
            bar.update(1)
            inner.update(1)
        inner.close()
