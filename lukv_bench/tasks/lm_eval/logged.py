"""What a record takes from one of lm-eval's logged samples: its score, metric, prediction and answers."""

from __future__ import annotations

import contextlib
from typing import Any


def sample_score(sample: dict[str, Any]) -> tuple[str, float | None]:
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


def metric_label(name: str, doc: dict[str, Any]) -> str:
    """A readable metric name: RULER's per-length metric ``"1024"`` becomes ``string_match@1024``."""
    if name.isdigit() and "max_length" in doc:
        return f"string_match@{name}"
    return name


def answers_of(task: Any, doc: Any, target: Any) -> list[str]:
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


def prediction_of(task: Any, doc: Any, resps: Any) -> str:
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


def data_source(task_name: str, task: Any, lm_meta: dict[str, Any]) -> str:
    """Where a task's documents come from, for the report (generated offline vs a dataset)."""
    meta = f"; metadata {lm_meta}" if lm_meta else ""
    if task_name.startswith(("niah_", "ruler_")):
        return f"RULER {task_name}: synthetic data generated offline by lm-eval from the model's tokenizer{meta}"
    cfg = getattr(task, "config", None)
    path = getattr(cfg, "dataset_path", None) or "?"
    files = (getattr(cfg, "dataset_kwargs", None) or {}).get("data_files")
    where = f"local files {files}" if path == "json" and files else f"dataset {path!r}"
    return f"lm-eval task {task_name} ({where}, loaded by lm-eval{meta})"
