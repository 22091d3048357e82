"""The sides of a run that need the suite: its cells and records (:class:`SuitePolicies`), its units
(:class:`SuiteUnits`, built with the model's tokenizer alone), and a loaded model that evaluates units
(:class:`Session`).

The driver builds a :class:`SuitePolicies` and a :class:`SuiteUnits` to plan (which record keys each unit
would write) without loading the model's weights, so a finished run is seen as such in seconds; every
executor's worker builds a :class:`Session` from the suite alone (the local one reuses the driver's units)
and evaluates the units sent to it.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lukv_bench.config.suite import resolve_policies
from lukv_bench.records import Record, RecordKey, run_digest, run_settings, setting_digest
from lukv_bench.registry import resolve_policy
from lukv_bench.run.fingerprint import data_fingerprint, device_identity, model_identity
from lukv_bench.runtime.contract import FULL
from lukv_bench.runtime.engine import Engine, EngineSettings
from lukv_bench.runtime.models import load_model, load_tokenizer, model_name, resolve_device
from lukv_bench.runtime.prompts import use_chat_template
from lukv_bench.tasks import unit_sources
from lukv_bench.units import Unit, UnitSource
from lukv_bench.version import __version__


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


class SuitePolicies:
    """A suite's policies resolved (FullKV added when absent), its cells, and the identity of its records.

    The records' settings digest covers what the suite's names resolve to (:mod:`lukv_bench.run.fingerprint`):
    the model's weights, the data files' bytes, the generators' versions, and the device type units run on
    (``device``; default: what ``device:`` resolves to in this process).
    """

    def __init__(self, suite: Any, device: str | None = None) -> None:
        self.suite = suite
        self.policies = resolve_policies(suite)
        if not any(p.name == FULL for p in self.policies):
            self.policies.insert(0, resolve_policy(FULL))
        self.full = self.by_name(FULL)
        self.descriptions = {p.name: p.describe() for p in self.policies}
        self.fingerprint = {
            "model": model_identity(suite.model),
            "device": device or device_identity(suite.device),
            "data": {task["name"]: data_fingerprint(task) for task in suite.tasks},
        }
        self.run_settings = {**run_settings(suite.to_dict()),
                             "resolved": {k: self.fingerprint[k] for k in ("model", "device")}}
        self._digests: dict[tuple[str, str], str] = {}  #: (entry, policy) -> setting digest
        self._run_digests: dict[str, str] = {}  #: entry -> run setting digest

    def by_name(self, name: str) -> Any:
        """The resolved policy called ``name``."""
        return next(p for p in self.policies if p.name == name)

    def cells(self, reference_only: bool = False) -> list[tuple[Any, Any]]:
        """(policy, budget as written) of every cell; FullKV, which does not depend on the budget, once."""
        policies = [self.full] if reference_only else self.policies
        return [(p, b) for p in policies for b in ([1.0] if p is self.full else self.suite.budgets)]

    def setting(self, entry: str, policy: Any) -> str:
        """The settings digest of the records of task entry ``entry`` under ``policy``."""
        key = (entry, policy.name)
        if key not in self._digests:
            self._digests[key] = setting_digest(self.run_settings, self._task(entry), self.descriptions[policy.name])
        return self._digests[key]

    def _task(self, entry: str) -> dict[str, Any]:
        """A task entry's record-changing configuration with its data fingerprint."""
        return {**self.suite.task(entry), "data": self.fingerprint["data"][entry]}

    def run_setting(self, entry: str) -> str:
        """The settings digest of task entry ``entry`` without a policy (shared by all its cells)."""
        if entry not in self._run_digests:
            self._run_digests[entry] = run_digest(self.run_settings, self._task(entry))
        return self._run_digests[entry]

    def key(self, model: str, unit: Unit, sample_id: str, policy: Any, budget: Any) -> RecordKey:
        """The key of the record ``unit`` writes for ``sample_id`` in cell (``policy``, ``budget``)."""
        return RecordKey.of(model, unit.task, sample_id, policy.name, budget, self.setting(unit.entry, policy))

    def record(self, model: str, unit: Unit, sample_id: Any, policy: Any, budget: Any, **fields: Any) -> Record:
        """A record with the identity and run-level fields filled; results go in ``fields``."""
        s = self.suite
        return Record(
            model=model, task=unit.task, sample_id=str(sample_id), policy=policy.name, budget=budget,
            setting=self.setting(unit.entry, policy), run_setting=self.run_setting(unit.entry),
            policy_params=policy.params,
            policy_description=self.descriptions[policy.name], seed=s.seed, compress_mode=s.compress,
            window=s.window, storage=s.storage, gqa_reduce=s.gqa_reduce, versions=versions(), **fields,
        )


@dataclass
class Inventory:
    """What a loaded model makes of a suite: the model's name and every unit, in suite order.

    Small and picklable: a remote worker sends it to the driver, which plans from it.
    """

    model: str
    device: str  #: the device type the units run on
    units: list[Unit]


class SuiteUnits:
    """A suite's unit sources and their units, in suite order; built with the model's tokenizer, not its weights."""

    def __init__(self, suite: Any, tokenizer: Any = None) -> None:
        """``tokenizer``: the loaded model's (default: the suite model's tokenizer, loaded alone)."""
        self.model = model_name(suite.model)  #: the model name records carry
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(suite.model)
        self.sources = [src for entry in suite.tasks for src in unit_sources(entry, suite, self.tokenizer)]
        self._units: dict[str, tuple[UnitSource, list[Unit]]] | None = None

    def by_task(self) -> dict[str, tuple[UnitSource, list[Unit]]]:
        """{record task name: (its source, its units)}, listed once."""
        if self._units is None:
            self._units = {}
            for src in self.sources:
                for unit in src.units():
                    self._units.setdefault(unit.task, (src, []))[1].append(unit)
        return self._units

    def inventory(self, device: str) -> Inventory:
        """The model name and every unit of every task, for units that run on ``device`` (a device type)."""
        units = [u for _, units in self.by_task().values() for u in units]
        return Inventory(model=self.model, device=device, units=units)


class Session:
    """The suite's model loaded in this process, its engine and unit sources: evaluates units.

    It is the :class:`~lukv_bench.units.UnitContext` every unit's evaluation gets.
    """

    def __init__(self, suite: Any, units: SuiteUnits | None = None) -> None:
        """``units``: the suite's units already listed in this process (default: listed here with the model's
        tokenizer)."""
        if suite.threads:
            torch.set_num_threads(int(suite.threads))
        torch.manual_seed(suite.seed)
        self.suite = suite
        device = resolve_device(suite.device)
        self.policies = SuitePolicies(suite, device=device.type)
        self.full = self.policies.full
        self.lm = load_model(suite.model, dtype=suite.dtype, device=str(device))
        settings = EngineSettings(
            window=suite.window, storage=suite.storage, gqa_reduce=suite.gqa_reduce, decode_every=suite.decode_every,
            kv_dtype=suite.kv_dtype,
        )
        # CPU: reuse the cache buffers from sample to sample (fresh ones cost page faults); CUDA's caching
        # allocator reuses freed blocks already
        self.engine = Engine(self.lm.model, self.lm.tokenizer, settings, arena=device.type == "cpu")
        self.chat = use_chat_template(self.lm.tokenizer, suite.chat_template)
        self.units = units if units is not None else SuiteUnits(suite, self.lm.tokenizer)

    def inventory(self) -> Inventory:
        """The model name and every unit of every task, in suite order."""
        return self.units.inventory(self.policies.fingerprint["device"])

    def evaluate(self, unit: Unit) -> Iterator[Record]:
        """The records of ``unit``'s cells, batch by batch."""
        yield from self.units.by_task()[unit.task][0].evaluate(unit, self)

    # -- the UnitContext a unit's evaluation gets ---------------------------------------------------------
    def cells(self, unit: Unit) -> list[tuple[Any, Any]]:
        """The unit's cells as (resolved policy, budget as written)."""
        return [(self.policies.by_name(name), budget) for name, budget in unit.cells]

    def record(self, unit: Unit, sample_id: Any, policy: Any, budget: Any, **fields: Any) -> Record:
        """A record of ``unit`` with its identity and the run's settings filled."""
        return self.policies.record(self.lm.name, unit, sample_id, policy, budget, **fields)
