"""The one record type of a results file, its key, and the identity of the settings behind it.

Every result — from the suite runner or from lm-eval tasks — is a :class:`Record`: one model x
task x sample x policy x budget under one set of record-changing settings. The key includes a
digest of those settings (:func:`setting_digest`), so records made under other settings (a policy
parameter, the window, the storage or compression mode, generation, truncation, data) never pass
for done. :func:`suite_differences` names what changed between a results folder's ``run.json``
and a new suite before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: suite keys that change what a record contains (``limit``, ``threads``, ``batch_settings`` and the
#: suite's name or file do not: the batched and single-setting engines give identical records)
RECORD_SETTINGS = (
    "model", "generation", "compress", "truncate", "chat_template", "window", "decode_every", "storage",
    "gqa_reduce", "seed", "device", "dtype",
)
#: record-changing suite keys added after records existed: they enter the digest only when set, so
#: the records of a suite that leaves them unset keep their keys
OPTIONAL_RECORD_SETTINGS = ("kv_dtype",)
#: task keys that do not change a record (``memory_limit_gb``: a latency task's report setting)
_TASK_NEUTRAL = ("limit", "memory_limit_gb", "control")  # control: adds its own records only


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_settings(suite_dict: dict[str, Any]) -> dict[str, Any]:
    """The record-changing run-level settings of a suite (its ``to_dict()``)."""
    out = {k: suite_dict.get(k) for k in RECORD_SETTINGS}
    return out | {k: suite_dict[k] for k in OPTIONAL_RECORD_SETTINGS if suite_dict.get(k) is not None}


def task_settings(task: dict[str, Any]) -> dict[str, Any]:
    """A task's record-changing configuration (its normalised dict without the keys of ``_TASK_NEUTRAL``)."""
    return {k: v for k, v in task.items() if k not in _TASK_NEUTRAL}


def setting_digest(run: dict[str, Any], task: dict[str, Any], policy: dict[str, Any]) -> str:
    """Digest of everything besides (model, task, sample, policy name, budget) that shapes a record.

    The policy counts by what it computes (scorer, allocator, decode rule, every parameter), not
    by the versions of the packages that supplied it: those are recorded, but a release that does
    not change a policy's rule must not invalidate finished records.
    """
    return _digest({"run": run, "task": task_settings(task), "policy": policy_rule(policy)})


def run_digest(run: dict[str, Any], task: dict[str, Any]) -> str:
    """Digest of the run-level and task settings of a record, without its policy: every policy of one run of
    a task shares it, so a report pairs each policy with the FullKV records of its own run settings."""
    return _digest({"run": run, "task": task_settings(task)})


def policy_rule(description: dict[str, Any]) -> dict[str, Any]:
    """A policy description without the packages that supplied it: what the policy computes."""
    return {k: v for k, v in description.items() if k != "components"}


@dataclass
class Record:
    """One result: a model x task x sample x (policy, budget) setting, with cost and fidelity.

    ``kv_bytes`` is what the cell's compressed cache holds (measured from the cache's buffers);
    ``kv_bytes_full`` the FullKV cache of the same prompt in the same storage (per query head in
    ``storage: query``, G x the KV-head cache). ``decode_s`` is the setting's share of
    the batched decode steps it was in; ``batch_size`` says how many settings shared them.
    """

    model: str
    task: str
    sample_id: str
    policy: str
    budget: Any  #: as written in the suite: a ratio or {"tokens": N}
    setting: str  #: :func:`setting_digest` of the settings that made this record
    score: float | None
    metric: str
    prediction: str
    answers: list[str]
    #: :func:`run_digest`: the settings without the policy; records with an equal one share their FullKV
    run_setting: str = ""
    policy_params: dict[str, Any] = field(default_factory=dict)
    policy_description: dict[str, Any] = field(default_factory=dict)  #: scorer, allocator, params, plugin
    budget_ratio: float | None = None
    budget_tokens_mean: float | None = None  #: tokens kept per layer and storage head, mean (what was kept)
    context_tokens: int | None = None  #: prompt tokens prefilled (after truncation)
    context_tokens_original: int | None = None  #: prompt tokens before truncation
    layer_budgets: list[int] | None = None
    head_budgets: list[list[int]] | None = None
    allocation_info: dict[str, Any] | None = None
    kv_bytes: int | None = None
    kv_bytes_full: int | None = None
    prefill_s: float | None = None
    compress_s: float | None = None
    decode_s: float | None = None
    new_tokens: int | None = None
    #: sweep records: the peak of the batch the record's cell was decoded in (CUDA: the allocator's peak; CPU:
    #: process RSS, weights included, less the buffer arena's buffers not lent to the live cache:
    #: ``runtime.arena``), the same for every cell of that batch: not a per-policy figure. Latency
    #: records: that cell's own cache buffers plus one decode step's allocations (use these for per-policy memory)
    peak_mem_bytes: int | None = None
    prefill_peak_mem_bytes: int | None = None  #: the prefill's peak, measured the same way as ``peak_mem_bytes``
    kl_mean: float | None = None
    greedy_agreement: float | None = None
    fidelity: str | None = None  #: how kl_mean was measured (None: not measured, e.g. FullKV)
    batch_size: int | None = None
    data_source: str = ""
    seed: int = 0
    compress_mode: str = "prompt"
    window: int = 32
    storage: str = "kv"
    gqa_reduce: str = "mean"
    meta: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def key(self) -> RecordKey:
        """The identity of this record in a results file."""
        return RecordKey.of(self.model, self.task, self.sample_id, self.policy, self.budget, self.setting)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict written to ``results.jsonl``."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        """Every field, in order (the results format)."""
        return [f.name for f in fields(cls)]

    def set_outcome(self, pre: Any, out: Any) -> Record:
        """Fill the cost, memory and fidelity fields from an engine :class:`~lukv_bench.runtime.engine.Outcome`."""
        comp, gen = out.compressed, out.generation
        self.budget_ratio = out.budget.ratio
        self.budget_tokens_mean = round(comp.kept_tokens_mean, 2)
        self.context_tokens = pre.n
        self.layer_budgets = comp.layer_budgets
        self.head_budgets = comp.head_budgets
        self.allocation_info = comp.allocation_info
        self.kv_bytes = comp.kv_bytes
        self.kv_bytes_full = comp.kv_bytes_full
        self.prefill_s = pre.prefill_s
        self.compress_s = comp.compress_s
        self.decode_s = gen.decode_s
        self.new_tokens = len(gen.tokens)
        self.peak_mem_bytes = out.peak_mem_bytes
        self.prefill_peak_mem_bytes = pre.peak_mem_bytes
        self.kl_mean = out.kl_mean
        self.greedy_agreement = out.greedy_agreement
        self.fidelity = out.fidelity
        self.batch_size = out.batch_size
        return self


@dataclass(frozen=True)
class RecordKey:
    """The identity of a record in a results file: which cell of which sample, under which settings.

    ``budget`` is the budget as written in the suite, in canonical JSON (``0.2``, ``{"tokens": 256}``);
    ``setting`` the :func:`setting_digest` digest of every other record-changing setting.
    """

    model: str
    task: str
    sample_id: str
    policy: str
    budget: str
    setting: str

    @classmethod
    def of(cls, model: Any, task: Any, sample_id: Any, policy: Any, budget: Any, setting: Any) -> RecordKey:
        """The key of these fields as a record holds them (the budget as written)."""
        return cls(str(model), str(task), str(sample_id), str(policy), json.dumps(budget, sort_keys=True),
                   str(setting or ""))


def record_key(rec: dict[str, Any]) -> RecordKey:
    """The key of a record read back from a results file."""
    return RecordKey.of(rec["model"], rec["task"], rec["sample_id"], rec["policy"], rec["budget"],
                        rec.get("setting", ""))


def suite_differences(old: dict[str, Any], new: dict[str, Any], old_policies: dict[str, Any] | None = None,
                      new_policies: dict[str, Any] | None = None) -> list[str]:
    """What changed between two suites (``to_dict()`` forms) in ways that change records.

    Added policies, budgets, tasks or samples are not differences (they only add keys); a policy or
    task present in both with other parameters is. ``*_policies`` map policy names to their resolved
    descriptions, when known (otherwise the entries as written are compared).
    """
    diffs = []
    for k in RECORD_SETTINGS + OPTIONAL_RECORD_SETTINGS:
        if old.get(k) != new.get(k):
            diffs.append(f"{k}: {json.dumps(old.get(k), default=str)} -> {json.dumps(new.get(k), default=str)}")
    old_tasks = {t.get("name"): task_settings(t) for t in old.get("tasks", [])}
    for t in new.get("tasks", []):
        name = t.get("name")
        if name in old_tasks and old_tasks[name] != task_settings(t):
            changed = sorted(k for k in set(old_tasks[name]) | set(task_settings(t))
                             if old_tasks[name].get(k) != t.get(k))
            diffs.append(f"tasks[{name}]: {', '.join(changed)} changed")
    if old_policies is not None and new_policies is not None:
        for name, desc in new_policies.items():
            if name in old_policies and policy_rule(old_policies[name] or {}) != policy_rule(desc):
                diffs.append(f"policy {name}: {json.dumps(old_policies[name], default=str)} -> "
                             f"{json.dumps(desc, default=str)}")
    return diffs
