"""Run a suite: for each model, task and sample, one prefill, then every (policy, budget) together.

Records (:class:`~lukv_bench.records.Record`) go to ``OUT/results.jsonl`` as each batch of settings
finishes (see :mod:`lukv_bench.run.results`); a rerun of the same command skips what is done. Before
any model loads, a folder whose ``run.json`` holds other record-changing settings is refused
(``on_change="error"``), unless the new settings go beside the old ones (``"add"``: their records
have other keys) or into a fresh folder (``"new"``).

The work is split into :class:`Unit` s (one model x task x sample, every setting on one prefill). An
executor (:mod:`lukv_bench.run.executors`: in this process, or on a Ray cluster) evaluates them with an
:class:`Evaluator` holding a loaded :class:`Session`; records come back to the :class:`Runner`, the only
writer of ``results.jsonl``.
"""

from __future__ import annotations

import functools
import json
import logging
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lukv_bench.errors import UserError
from lukv_bench.records import Record, run_settings, setting_id, suite_differences
from lukv_bench.run.results import RESULTS_FILE, ResultsWriter
from lukv_bench.runtime.engine import Engine, EngineSettings, sweep
from lukv_bench.runtime.prompts import build_prompt, fit_prompt, model_max_positions, use_chat_template
from lukv_bench.version import __version__

if TYPE_CHECKING:
    from lukv_bench.run.executors import Executor

log = logging.getLogger(__name__)

ON_CHANGE = ("error", "add", "new")


@functools.cache
def versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    import transformers


    out = {
        "lukv_bench": __version__,
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


@dataclass
class Unit:
    """One unit of work: one model x task x sample, and the settings (policy name, budget) it still needs.

    Every setting of the sample is evaluated on one prefill. ``attempt`` counts the runs of this unit:
    an executor whose worker died mid-unit runs it again with ``attempt + 1``.
    """

    task: str
    sample: str
    todo: list[tuple[str, Any]]
    attempt: int = 1

    def __str__(self) -> str:
        return f"task {self.task!r}, sample {self.sample!r}"


@dataclass
class Catalog:
    """What a loaded model makes of a suite: the model's name and the sample ids of each sample task.

    Small and picklable: a remote worker sends it to the driver, which plans the units from it.
    """

    model: str
    tasks: list[tuple[str, dict[str, Any], list[str]]]  #: (task name, suite task dict, sample ids)
    lm_eval: bool = False  #: the suite has lm-eval tasks (run after the units, by the local executor)
    latency: bool = False  #: the suite has latency tasks (run last, in this process, one setting at a time)


class Session:
    """The model of a suite loaded in this process, with its engine and the suite's tasks and samples."""

    def __init__(self, suite) -> None:
        from lukv_bench.runtime.models import load_model
        from lukv_bench.tasks import expand_task
        from lukv_bench.tasks.control import add_controls
        from lukv_bench.tasks.latency import LatencyTaskConfig
        from lukv_bench.tasks.lm_eval.task_type import LmEvalTaskConfig

        if suite.threads:
            torch.set_num_threads(int(suite.threads))
        torch.manual_seed(suite.seed)
        self.lm = load_model(suite.model, dtype=suite.dtype, device=str(resolve_device(suite.device)))
        settings = EngineSettings(
            window=suite.window, storage=suite.storage, gqa_reduce=suite.gqa_reduce, decode_every=suite.decode_every
        )
        self.engine = Engine(self.lm.model, self.lm.tokenizer, settings)
        self.chat = use_chat_template(self.lm.tokenizer, suite.chat_template)
        expanded = [(t, cfg) for cfg in suite.tasks for t in expand_task(cfg, suite, self.lm.tokenizer)]
        self.lm_eval_tasks = [(t, cfg) for t, cfg in expanded if isinstance(t, LmEvalTaskConfig)]
        self.latency_tasks = [(t, cfg) for t, cfg in expanded if isinstance(t, LatencyTaskConfig)]
        #: sample tasks by name: (task, suite task dict, {sample id: sample}) in the tasks' sample order
        self.samples = {t.name: (t, cfg, {str(s.id): s for s in t.samples(t.limit)})
                        for t, cfg in expanded if not isinstance(t, (LmEvalTaskConfig, LatencyTaskConfig))}
        add_controls(self.samples)  # `<task>:no-context` beside each task whose entry sets `control`

    def catalog(self) -> Catalog:
        """The model name and every sample task's sample ids, in order."""
        tasks = [(name, cfg, list(samples)) for name, (_, cfg, samples) in self.samples.items()]
        return Catalog(model=self.lm.name, tasks=tasks, lm_eval=bool(self.lm_eval_tasks),
                       latency=bool(self.latency_tasks))


class Evaluator:
    """The model side of a run, built from the suite alone: its policies, its records, and units evaluated.

    A worker on another machine builds one from the suite; :class:`Runner` is one, plus the results folder.
    """

    def __init__(self, suite) -> None:
        from lukv_bench.registry import resolve_policy

        self.suite = suite
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
        self._settings: dict[tuple[str, str], str] = {}

    # -- helpers ----------------------------------------------------------------------------------
    def _runs(self, control: bool = False) -> list[tuple[Any, Any]]:
        """The (policy, budget) settings of a task: a no-context control runs FullKV only."""
        policies = [self.full] if control else self.policies
        return [(p, b) for p in policies for b in self._policy_budgets(p)]

    def _policy_budgets(self, policy) -> list[Any]:
        # FullKV does not depend on the budget: one record per sample
        return [1.0] if policy.name == "full" else list(self.suite.budgets)

    def _setting(self, task_dict: dict[str, Any], policy) -> str:
        # one digest per (task, policy): planning asks for it once per sample and setting
        key = (task_dict["name"], policy.name)
        if key not in self._settings:
            self._settings[key] = setting_id(self.run_settings, task_dict, self.descriptions[policy.name])
        return self._settings[key]

    def _record(self, model: str, task_name: str, sample_id: Any, policy, budget, task_dict, **fields) -> Record:
        """A record with the identity and run-level fields filled; results go in ``fields``."""
        s = self.suite
        return Record(
            model=model, task=task_name, sample_id=str(sample_id), policy=policy.name, budget=budget,
            setting=self._setting(task_dict, policy), policy_params=policy.params,
            policy_description=self.descriptions[policy.name], seed=s.seed, compress_mode=s.compress,
            window=s.window, storage=s.storage, gqa_reduce=s.gqa_reduce, versions=versions(), **fields,
        )

    def policy(self, name: str):
        """The resolved policy called ``name``."""
        return next(p for p in self.policies if p.name == name)

    def run_unit(self, session: Session, unit: Unit) -> Iterator[Record]:
        """Evaluate every setting ``unit`` still needs on one prefill; yield records batch by batch."""
        task, cfg, samples = session.samples[unit.task]
        todo = [(self.policy(name), budget) for name, budget in unit.todo]
        yield from self._run_sample(session.engine, session.lm.name, task, cfg, samples[unit.sample], todo,
                                    session.chat)

    def _run_sample(self, engine, model_name, task, cfg, sample, todo, chat) -> Iterator[Record]:
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
                data_source=task.data_source, meta=meta,
            ).set_outcome(pre, out)
            rec.context_tokens_original = pre.n + (original - used)  # what would have been prefilled
            yield rec
        if used < original:
            log.info("%s %s: prompt truncated from %d to %d tokens (%s)", task.name, sample.id, original, used,
                     suite.truncate)


class Runner(Evaluator):
    """Executes a validated suite: plans its units, has an executor evaluate them, writes the records."""

    def __init__(self, suite, out_dir: Path, progress: bool = True, on_change: str = "error"):
        if on_change not in ON_CHANGE:
            raise ValueError(f"on_change must be one of {ON_CHANGE}")
        super().__init__(suite)
        self.progress = progress
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

    def _write_run_json(self, model_name: str, executor: dict[str, Any] | None = None) -> None:
        info = {"suite": self.suite.to_dict(), "model": model_name, "policies": self.descriptions,
                "versions": versions(), "argv": sys.argv, "executor": executor or {"kind": "local"}}
        if self.history:
            info["history"] = self.history  # earlier settings whose records stay in results.jsonl
        (self.out_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))

    # -- main loop --------------------------------------------------------------------------------
    def plan(self, catalog: Catalog) -> tuple[list[Unit], int]:
        """The units still to run (settings already in results.jsonl left out) and the number of runs in all."""
        from lukv_bench.tasks.control import is_control

        units, total = [], 0
        for task_name, cfg, sample_ids in catalog.tasks:
            runs = self._runs(is_control(task_name))
            for sample_id in sample_ids:
                total += len(runs)
                todo = [(p.name, b) for p, b in runs
                        if not self.writer.is_done(self._record(catalog.model, task_name, sample_id, p, b, cfg,
                                                                score=None, metric="", prediction="", answers=[]))]
                if todo:
                    units.append(Unit(task=task_name, sample=sample_id, todo=todo))
        return units, total

    def run(self, executor: Executor | None = None) -> Path:
        """Run everything not yet in results.jsonl with ``executor`` (default: in this process); returns the
        results path."""
        from lukv_bench.run.executors import LocalExecutor

        executor = executor or LocalExecutor()
        try:
            catalog = executor.start(self)
            self._write_run_json(catalog.model, executor.describe())
            units, total = self.plan(catalog)
            bar = tqdm(total=total, desc="overall", unit="run", disable=not self.progress, position=0)
            bar.update(total - sum(len(u.todo) for u in units))
            for rec in executor.execute(units):
                self.writer.append(rec)
                bar.update(1)
            if catalog.lm_eval:
                self._run_lm_eval(executor.session, bar)
            if catalog.latency:
                self._run_latency(executor.session, bar)
            bar.close()
        finally:
            executor.close()
        return self.writer.path

    def _run_lm_eval(self, session: Session, bar) -> None:
        from lukv_bench.runtime.models import resolve_model_path
        from lukv_bench.tasks.lm_eval.model import run_lm_eval

        suite, lm = self.suite, session.lm
        tokenizer_path = resolve_model_path(suite.model)[0] if suite.model != "tiny" else ""
        runs = self._runs()
        for cfg, task_dict in session.lm_eval_tasks:
            def make(task_name, doc_id, policy, budget, _cfg=task_dict, **fields):
                return self._record(lm.name, task_name, doc_id, policy, budget, _cfg, **fields)

            run_lm_eval(cfg, session.engine, tokenizer_path, runs, self.full, self.writer, make, session.chat,
                        batch_settings=suite.batch_settings, progress=bar)

    def _run_latency(self, session: Session | None, bar) -> None:
        """Measure the latency tasks in this process, one setting at a time (resumes per record)."""
        from lukv_bench.tasks.latency import run_latency

        if session is None:
            raise UserError("latency tasks measure this machine: run the suite with --executor local")
        runs = self._runs()
        for task, task_dict in session.latency_tasks:
            bar.total += len(runs) * len(task.lengths)
            bar.refresh()

            def make(sample_id, policy, budget, _task=task, _cfg=task_dict, **fields):
                return self._record(session.lm.name, _task.name, sample_id, policy, budget, _cfg, **fields)

            run_latency(task, session.engine, runs, self.full, self.writer, make, progress=bar)
