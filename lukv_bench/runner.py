"""Run a suite: for each model, task and sample, one prefill, then every (policy, budget) together.

Records (:class:`~lukv_bench.records.Record`) go to ``OUT/results.jsonl`` as each batch of settings
finishes (see :mod:`lukv_bench.results`); a rerun of the same command skips what is done. Before
any model loads, a folder whose ``run.json`` holds other record-changing settings is refused
(``on_change="error"``), unless the new settings go beside the old ones (``"add"``: their records
have other keys) or into a fresh folder (``"new"``).
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
from lukv_bench.prompts import build_prompt, fit_prompt, model_max_positions, use_chat_template
from lukv_bench.records import Record, run_settings, setting_id, suite_differences
from lukv_bench.results import RESULTS_FILE, ResultsWriter

log = logging.getLogger(__name__)

ON_CHANGE = ("error", "add", "new")


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


def _fresh_folder(out: Path) -> Path:
    """``OUT-2``, ``OUT-3``... : the first sibling of ``out`` that does not exist yet."""
    n = 2
    while (cand := out.with_name(f"{out.name}-{n}")).exists():
        n += 1
    return cand


class Runner:
    """Executes a validated suite on one machine."""

    def __init__(self, suite, out_dir: Path, progress: bool = True, on_change: str = "error"):
        from lukv_bench.registry import resolve_policy

        if on_change not in ON_CHANGE:
            raise ValueError(f"on_change must be one of {ON_CHANGE}")
        self.suite = suite
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
        self.full = next(p for p in self.policies if p.name == "full")
        self.descriptions = {p.name: p.describe() for p in self.policies}
        self.run_settings = run_settings(suite.to_dict())
        self.out_dir = self._choose_folder(Path(out_dir), on_change)
        self.history: list[dict[str, Any]] = self._previous_runs(on_change)
        self.writer = ResultsWriter(self.out_dir)

    # -- the results folder -----------------------------------------------------------------------
    def _choose_folder(self, out: Path, on_change: str) -> Path:
        if on_change == "new" and self._differences(out):
            fresh = _fresh_folder(out)
            log.warning("%s holds results of other settings: writing to %s", out, fresh)
            return fresh
        return out

    def _differences(self, out: Path) -> list[str]:
        """What the folder's run.json says differently from this suite ([] when compatible or new)."""
        run_json = out / "run.json"
        if not run_json.exists():
            if (out / RESULTS_FILE).exists():
                return [f"{out / RESULTS_FILE} exists without a run.json (its settings are unknown)"]
            return []
        try:
            old = json.loads(run_json.read_text())
            old_suite = old["suite"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return [f"{run_json} cannot be read ({e})"]
        new = self.suite.to_dict()
        diffs = []
        if old_suite.get("name") != new["name"]:
            diffs.append(f"suite name: {old_suite.get('name')!r} -> {new['name']!r} (results of another suite)")
        return diffs + suite_differences(old_suite, new, old.get("policies"), self.descriptions)

    def _previous_runs(self, on_change: str) -> list[dict[str, Any]]:
        diffs = self._differences(self.out_dir)
        if diffs and on_change == "error":
            listing = "\n  ".join(diffs)
            raise UserError(
                f"{self.out_dir / 'run.json'}: this folder holds results made under other settings:\n  {listing}\n"
                "Resuming would mix them. Choose one: --out OTHER_FOLDER; --new-run (write to a fresh sibling "
                f"folder such as {_fresh_folder(self.out_dir)}); or --add-settings (keep the old records and add "
                "the new settings beside them as distinct keys)."
            )
        run_json = self.out_dir / "run.json"
        if diffs and run_json.exists():
            try:
                old = json.loads(run_json.read_text())
                return [*old.get("history", []), {k: v for k, v in old.items() if k != "history"}]
            except ValueError:
                return []
        return []

    def _write_run_json(self, model_name: str) -> None:
        info = {"suite": self.suite.to_dict(), "model": model_name, "policies": self.descriptions,
                "versions": versions(), "argv": sys.argv}
        if self.history:
            info["history"] = self.history  # earlier settings whose records stay in results.jsonl
        (self.out_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))

    # -- helpers ----------------------------------------------------------------------------------
    def _policy_budgets(self, policy) -> list[Any]:
        # FullKV does not depend on the budget: one record per sample
        return [1.0] if policy.name == "full" else list(self.suite.budgets)

    def _setting(self, task_dict: dict[str, Any], policy) -> str:
        return setting_id(self.run_settings, task_dict, self.descriptions[policy.name])

    def _record(self, model: str, task_name: str, sample_id: Any, policy, budget, task_dict, **fields) -> Record:
        """A record with the identity and run-level fields filled; results go in ``fields``."""
        s = self.suite
        return Record(
            model=model, task=task_name, sample_id=str(sample_id), policy=policy.name, budget=budget,
            setting=self._setting(task_dict, policy), policy_params=policy.params,
            policy_description=self.descriptions[policy.name], seed=s.seed, compress_mode=s.compress,
            window=s.window, storage=s.storage, gqa_reduce=s.gqa_reduce, versions=versions(), **fields,
        )

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> Path:
        """Run everything not yet in results.jsonl; returns the results path."""
        from lukv_bench.models import load_model
        from lukv_bench.tasks import expand_task
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
        expanded = [(t, cfg) for cfg in suite.tasks for t in expand_task(cfg, suite, lm.tokenizer)]
        lm_eval_tasks = [(t, cfg) for t, cfg in expanded if isinstance(t, LmEvalTaskConfig)]
        samples = [(t, cfg, list(t.samples(t.limit))) for t, cfg in expanded if not isinstance(t, LmEvalTaskConfig)]
        per_sample = sum(len(self._policy_budgets(p)) for p in self.policies)
        total = per_sample * sum(len(s) for _, _, s in samples)
        bar = tqdm(total=total, desc="overall", unit="run", disable=not self.progress, position=0)
        for task, cfg, task_samples in samples:
            for sample in task_samples:
                todo = [(p, b) for p in self.policies for b in self._policy_budgets(p)
                        if not self.writer.is_done(self._record(lm.name, task.name, sample.id, p, b, cfg,
                                                                score=None, metric="", prediction="", answers=[]))]
                bar.update(per_sample - len(todo))
                if todo:
                    self._run_sample(engine, lm.name, task, cfg, sample, todo, chat, bar)
        if lm_eval_tasks:
            from lukv_bench.lm_eval_model import run_lm_eval
            from lukv_bench.models import resolve_model_path

            tokenizer_path = resolve_model_path(suite.model)[0] if suite.model != "tiny" else ""
            runs = [(p, b) for p in self.policies for b in self._policy_budgets(p)]
            for cfg, task_dict in lm_eval_tasks:
                def make(task_name, doc_id, policy, budget, _cfg=task_dict, **fields):
                    return self._record(lm.name, task_name, doc_id, policy, budget, _cfg, **fields)

                run_lm_eval(cfg, engine, tokenizer_path, runs, self.full, self.writer, make, chat,
                            batch_settings=suite.batch_settings, progress=bar)
        bar.close()
        return self.writer.path

    def _run_sample(self, engine, model_name, task, cfg, sample, todo, chat, bar) -> None:
        suite = self.suite
        max_new = sample.max_new_tokens or suite.max_new_tokens
        ids, original, used = fit_prompt(
            build_prompt(engine.tokenizer, sample, chat), model_max_positions(engine.model.config), max_new,
            suite.truncate, task=task.name, sample_id=str(sample.id), where=suite.where("truncate"),
        )
        outcomes = sweep(
            engine, ids.context, ids.question, todo, self.full, compress=suite.compress,
            max_new_tokens=max_new, eos_ids=engine.eos_ids(), stop=suite.stop, batch_settings=suite.batch_settings,
        )
        for pre, out in outcomes:
            gen = out.generation
            meta = dict(sample.meta)
            warning = suite.budget_warning(out.budget.tokens, pre.n) if out.policy.name != "full" else None
            if warning:
                meta["budget_warning"] = warning
                log.warning("%s %s: %s", task.name, sample.id, warning)
            rec = self._record(
                model_name, task.name, sample.id, out.policy, out.budget_spec, cfg,
                score=task.score(gen.text, sample), metric=task.metric, prediction=gen.text, answers=sample.answers,
                context_tokens_original=original, data_source=task.data_source, meta=meta,
            ).set_outcome(pre, out)
            self.writer.append(rec)
            bar.update(1)
        if used < original:
            log.info("%s %s: prompt truncated from %d to %d tokens (%s)", task.name, sample.id, original, used,
                     suite.truncate)
