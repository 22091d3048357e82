"""Run a suite: plan its units, have an executor evaluate them, write every record once.

This is the one run loop, whatever the task types: every task entry yields units
(:mod:`lukv_bench.units`), the :class:`Runner` plans which cells of each still lack a record in
``OUT/results.jsonl`` (see :mod:`lukv_bench.run.results`), an executor (:mod:`lukv_bench.run.executors`:
in this process, or on a Ray cluster) evaluates them in a :class:`~lukv_bench.run.session.Session`, and
the runner appends each record as it comes back: it is the only writer, so a rerun of the same command
resumes. The plan needs the model's tokenizer, not its weights: a rerun with nothing left loads no model.
The folder and ``run.json`` are written with the first record, so a run that fails before it leaves no
folder behind (and a folder that existed stays as it was). Before any model loads, a folder whose
``run.json`` holds other record-changing settings is refused (``on_change="error"``), unless the new
settings go beside the old ones (``"add"``: their records have other keys) or into a fresh folder
(``"new"``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lukv_bench.errors import UserError
from lukv_bench.records import suite_differences
from lukv_bench.run.fingerprint import differences as fingerprint_differences
from lukv_bench.run.progress import RunProgress, describe_plan
from lukv_bench.run.results import RESULTS_FILE, RUN_FILE, ResultsWriter
from lukv_bench.run.session import Inventory, SuitePolicies, SuiteUnits, versions
from lukv_bench.units import Unit

if TYPE_CHECKING:
    from lukv_bench.run.executors import Executor

log = logging.getLogger(__name__)

ON_CHANGE = ("error", "add", "new")


def _fresh_folder(out: Path) -> Path:
    """``OUT-2``, ``OUT-3``... : the first sibling of ``out`` that does not exist yet."""
    n = 2
    while (cand := out.with_name(f"{out.name}-{n}")).exists():
        n += 1
    return cand


class Runner:
    """Executes a validated suite: plans its units, has an executor evaluate them, writes the records."""

    def __init__(self, suite, out_dir: Path, progress: bool = True, on_change: str = "error",
                 say: Callable[[str], None] | None = None):
        """``say`` gets the run's status lines (records done and to run; default: standard error)."""
        if on_change not in ON_CHANGE:
            raise ValueError(f"on_change must be one of {ON_CHANGE}")
        self.suite = suite
        self.policies = SuitePolicies(suite)
        self.descriptions = self.policies.descriptions
        self.progress = progress
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._on_change = on_change
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
        run_json = out / RUN_FILE
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
        diffs += suite_differences(old_suite, new, old.get("policies"), self.descriptions)
        if "fingerprint" not in old:
            return [*diffs, f"{run_json} was written by a lukv-bench that did not fingerprint its data and model "
                            "(their changes were invisible to resume)"]
        return diffs + fingerprint_differences(old["fingerprint"], self.policies.fingerprint)

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
        run_json = self.out_dir / RUN_FILE
        if diffs and run_json.exists():
            try:
                old = json.loads(run_json.read_text())
                return [*old.get("history", []), {k: v for k, v in old.items() if k != "history"}]
            except ValueError:
                return []
        return []

    def _write_run_json(self, model_name: str, executor: dict[str, Any] | None = None,
                        started: str | None = None, finished: str | None = None) -> None:
        # started/finished (UTC, ISO 8601) time this invocation; the report shows the wall time from them
        info = {"suite": self.suite.to_dict(), "model": model_name, "policies": self.descriptions,
                "fingerprint": self.policies.fingerprint, "versions": versions(), "argv": sys.argv,
                "executor": executor or {"kind": "local"}, "started": started, "finished": finished}
        if self.history:
            info["history"] = self.history  # earlier settings whose records stay in results.jsonl
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / RUN_FILE).write_text(json.dumps(info, indent=2, default=str))

    # -- the run loop ---------------------------------------------------------------------------------
    def plan(self, inventory: Inventory) -> tuple[list[Unit], int, int]:
        """The units with cells still to evaluate (each unit's ``cells`` set), the records of the run in all, and
        how many of them results.jsonl already holds."""
        todo, total, done = [], 0, 0
        for unit in inventory.units:
            cells = []
            for policy, budget in self.policies.cells(unit.reference_only):
                finished = [self.writer.is_done(self.policies.key(inventory.model, unit, sid, policy, budget))
                            for sid in unit.samples]
                total += len(finished)
                done += sum(finished)
                if not all(finished):
                    cells.append((policy.name, budget))
            if cells:
                todo.append(dataclasses.replace(unit, cells=cells))
        return todo, total, done

    def run(self, executor: Executor) -> Path:
        """Evaluate everything not yet in results.jsonl with ``executor``; returns the results path."""
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            listed = SuiteUnits(self.suite)  # the tokenizer alone: planning loads no weights
            inventory = listed.inventory(self.policies.fingerprint["device"])
            units, total, done = self.plan(inventory)
            self._say(describe_plan(total, done, units, self.writer.path))
            if not units:
                if not (self.out_dir / RUN_FILE).exists():
                    self._write_run_json(inventory.model, executor.describe(), started)
                return self.writer.path
            there = executor.start(self.suite, listed)
            if there != inventory:  # units run elsewhere (a Ray worker with a GPU): its view decides
                if there.device != self.policies.fingerprint["device"]:  # the device is part of every record's key
                    self.policies = SuitePolicies(self.suite, device=there.device)
                    self._previous_runs(self._on_change)  # refuses a folder made on another device type
                inventory = there
                units, total, done = self.plan(inventory)
            self._evaluate(executor, units, inventory.model, started)
            self._write_run_json(inventory.model, executor.describe(), started,
                                 datetime.now(timezone.utc).isoformat(timespec="seconds"))
        finally:
            executor.close()
        return self.writer.path

    def _evaluate(self, executor: Executor, units: list[Unit], model: str, started: str) -> None:
        """Have ``executor`` evaluate ``units``, writing run.json with the first new record and each record as it
        comes back."""
        progress = RunProgress(units, enabled=self.progress)
        described = False
        try:
            for rec in executor.execute(units, progress.started):
                progress.record(rec.task, rec.sample_id)
                if not self.writer.is_done(rec.key()):
                    if not described:
                        self._write_run_json(model, executor.describe(), started)
                        described = True
                    self.writer.append(rec)
        finally:
            progress.close()
