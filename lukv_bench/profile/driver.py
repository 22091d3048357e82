"""The ``lukv-bench profile`` driver: load the model and the samples, profile each, gather the result.

:func:`run_profile` resolves the settings (a suite's, overridden by the options), loads the model,
picks the samples (a suite's tasks, a JSONL file or the built-in pass-key set), profiles each
(:func:`~lukv_bench.profile.per_sample.profile_sample`) and returns a
:class:`~lukv_bench.profile.result.ProfileResult`; :func:`~lukv_bench.profile.files.write_outputs`
writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lukv_bench.config.options import Overrides
from lukv_bench.config.suite import load_suite
from lukv_bench.errors import UserError
from lukv_bench.profile.allocations import allocation_policies
from lukv_bench.profile.options import DEFAULT_LIMIT, DEFAULT_WINDOW, ProfileSettings
from lukv_bench.profile.per_sample import profile_sample
from lukv_bench.profile.result import ProfileResult
from lukv_bench.runtime.engine import Engine, EngineSettings
from lukv_bench.runtime.models import load_model, resolve_device
from lukv_bench.runtime.prompts import use_chat_template
from lukv_bench.tasks import build_tasks, expand_task
from lukv_bench.tasks.lm_eval.task_type import LmEvalTaskConfig

#: the samples profiled when neither a suite nor a data file is given: offline pass-key retrieval
#: (the pass key is the answer-bearing span) at four depths of a ~1000-token context
DEFAULT_TASK: dict[str, Any] = {
    "name": "passkey",
    "type": "needle",
    "lengths": [1000],
    "depths": [0.1, 0.35, 0.65, 0.9],
    "seed": 0,
}


def _load_model(spec: str, from_suite: bool, dtype: str, device: str) -> Any:
    """The model to profile; a load error names the option (or the suite) that gave it."""
    try:
        return load_model(spec, dtype=dtype, device=device)
    except UserError as e:
        where = "the suite's model" if from_suite else "--model"
        raise type(e)(f"{where} {spec!r}: {e}; pass --model embedded, a hub id, a model folder or a .gguf file") from e


def _tasks(suite: Any, data: Path | None, tokenizer: Any, limit: int) -> tuple[list[tuple[Any, list[Any]]], list[str]]:
    """(task, samples) pairs to profile and lines for what was skipped."""
    if suite is not None:
        tasks = build_tasks(suite, tokenizer=tokenizer)
    elif data is not None:
        file = Path(data).expanduser()
        if not file.is_file():
            raise UserError(
                f"--data {data}: file not found; give a JSONL file with one "
                '{"id", "context", "question", "answers"} object per line'
            )
        try:
            tasks = expand_task({"name": file.stem, "type": "jsonl", "path": str(file.resolve())})
        except UserError as e:
            raise type(e)(f"--data: {e}") from e
    else:
        tasks = expand_task(dict(DEFAULT_TASK), None, tokenizer)
    out, skipped = [], []
    for task in tasks:
        if isinstance(task, LmEvalTaskConfig):
            skipped.append(f"task {task.name!r}: lm_eval tasks have no context/answer samples to profile; skipped")
            continue
        out.append((task, list(task.samples(limit))))
    if not any(samples for _, samples in out):
        raise UserError("no samples to profile: the suite/data holds no jsonl, longbench or needle samples")
    return out, skipped


def run_profile(
    model: str | None = None,
    suite: Path | None = None,
    data: Path | None = None,
    settings: ProfileSettings | None = None,
    limit: int = DEFAULT_LIMIT,
    threads: int | None = None,
    progress: bool = True,
) -> ProfileResult:
    """Profile up to ``limit`` samples per task of ``suite``, ``data`` (JSONL) or the built-in pass-key set.

    With a suite, its model, window, chat template, GQA reduction, dtype, device and threads are used
    unless overridden (``model``, an explicit ``settings.window``...). LMBA/LMBO always use the
    ``compress: prompt`` window (the last prompt tokens, question included).
    """
    if suite is not None and data is not None:
        raise UserError("give either --suite or --data, not both")
    settings = settings or ProfileSettings()
    s = None
    if suite is not None:
        try:
            s = load_suite(suite, Overrides(limit=limit, model=model))
        except UserError as e:
            raise type(e)(f"--suite: {e}") from e
        settings.chat_template, settings.gqa_reduce, settings.truncate = s.chat_template, s.gqa_reduce, s.truncate
        if settings.window is None:
            settings.window = s.window
    if settings.window is None:
        settings.window = DEFAULT_WINDOW
    spec = model or (s.model if s is not None else "embedded")
    dtype, device = (s.dtype, s.device) if s is not None else ("float32", "auto")
    threads = threads or (s.threads if s is not None else None)
    if threads:
        torch.set_num_threads(int(threads))
    lm = _load_model(spec, from_suite=model is None and s is not None, dtype=dtype, device=str(resolve_device(device)))
    tasks, skipped = _tasks(s, data, lm.tokenizer, limit)
    engine = Engine(lm.model, lm.tokenizer, EngineSettings(window=settings.window, gqa_reduce=settings.gqa_reduce))
    try:
        chat = use_chat_template(lm.tokenizer, settings.chat_template)
    except ValueError as e:
        raise UserError(f"--suite: {e}; set chat_template: auto or false") from e
    policies = allocation_policies()
    scorer = policies[0].policy.scorer  # SnapKV's pooled window votes rank tokens for LMBO
    result = ProfileResult(
        model=lm.name, settings=settings, samples=[], skipped=skipped, n_kv_heads=engine.n_kv_heads,
        data_source=[t.data_source for t, _ in tasks],
    )
    total = sum(len(samples) for _, samples in tasks)
    with tqdm(total=total, desc="profile", unit="sample", disable=not progress) as bar:
        for task, samples in tasks:
            for sample in samples:
                result.samples.append(profile_sample(engine, task.name, sample, chat, settings, scorer, policies))
                bar.update(1)
    result.n_layers = result.samples[0].lmba.shape[1]
    no_answer = result.ablation_skipped()
    if no_answer:
        result.skipped.append(
            f"ablation: {len(no_answer)} of {total} samples skipped: no answer in their context "
            f"(or a truncated prompt): {', '.join(no_answer)}"
        )
    return result
