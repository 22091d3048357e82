"""Executors: who evaluates a run's units. ``local`` runs them in this process, ``ray`` on a Ray cluster.

Whichever executor runs, the :class:`~lukv_bench.run.runner.Runner` plans the units (cells already in
``results.jsonl`` left out), writes ``run.json`` and appends each record the executor yields to
``results.jsonl``; it is the only writer of that file, so resuming works the same for both. Executors
run any unit of any task type; a unit that declares ``alone`` (it measures the machine, as latency
units do) runs with no other unit in flight.

The Ray executor (``lukv-bench run SUITE --executor ray [--address ADDR]``, extra ``lukv-bench[ray]``):

* one actor per worker (:class:`UnitWorker`) loads the model once and evaluates unit after unit;
  every actor asks the cluster for the suite's ``resources`` (CPUs and GPUs per worker);
* a worker that dies mid-unit (process killed, node lost) is replaced, and its unit goes back to the
  queue with ``attempt + 1``, at most ``max_retries`` times; records of a retried unit carry
  ``meta["attempt"]`` and ``run.json`` states ``max_retries``. Records of other units are written as
  each unit finishes, so they are never lost;
* a unit that raises :class:`~lukv_bench.errors.UserError` (bad data, a prompt too long for
  ``truncate: error``) is not retried: the units in flight finish and are written, then the error is
  raised naming the unit (exit code 2). Any other exception in a unit is a bug and is not retried
  either (exit code 1).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from lukv_bench.errors import UserError
from lukv_bench.records import Record
from lukv_bench.run.session import Inventory, Session, SuiteUnits
from lukv_bench.units import Unit

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
RAY_INSTALL = 'pip install "lukv-bench[ray]"'
DEFAULT_MAX_RETRIES = 3

#: called with each unit as its evaluation starts (the progress bar names it)
Started = Callable[[Unit], None]


def _ignore(unit: Unit) -> None:
    """The default :data:`Started`: nobody is told."""


class Executor(Protocol):
    """Evaluates units for a :class:`~lukv_bench.run.runner.Runner`, which writes what it yields."""

    def start(self, suite: Any, units: SuiteUnits | None = None) -> Inventory:
        """Load the model wherever units will run; return what it makes of the suite. ``units``: the suite's units
        as the driver listed them (an executor that runs units in this process may use them)."""
        ...

    def execute(self, units: list[Unit], started: Started = _ignore) -> Iterator[Record]:
        """Evaluate ``units``, calling ``started`` as each starts; yield each record as soon as it is back here."""
        ...

    def describe(self) -> dict[str, Any]:
        """How the units run (stored in ``run.json``)."""
        ...

    def close(self) -> None:
        """Release workers (safe to call after a failed start)."""
        ...


class LocalExecutor:
    """Runs units one after another in this process, on one loaded model (the default)."""

    def __init__(self) -> None:
        self.session: Session | None = None

    def start(self, suite: Any, units: SuiteUnits | None = None) -> Inventory:
        """Load the suite's model here (its units: ``units`` when the driver listed them already)."""
        self.session = Session(suite, units)
        return self.session.inventory()

    def execute(self, units: list[Unit], started: Started = _ignore) -> Iterator[Record]:
        """Evaluate units in order; records stream out batch by batch."""
        assert self.session is not None, "start() first"
        for unit in units:
            started(unit)
            yield from self.session.evaluate(unit)

    def describe(self) -> dict[str, Any]:
        """``{"kind": "local"}``."""
        return {"kind": "local"}

    def close(self) -> None:
        """Nothing to release: the model goes with the process."""


def require_ray():
    """Import Ray, or raise a UserError (exit code 2) that gives the install command."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, an optional extra: install it with {RAY_INSTALL}") from None
    return ray


def make_executor(kind: str, address: str | None = None, max_retries: int = DEFAULT_MAX_RETRIES) -> Executor:
    """The executor a CLI asks for: ``local`` (``address`` must be None) or ``ray``."""
    if kind not in EXECUTORS:
        raise UserError(f"--executor {kind}: unknown; choose one of {', '.join(EXECUTORS)}")
    if kind == "local":
        if address is not None:
            raise UserError("--address connects to a Ray cluster: add --executor ray, or drop --address")
        return LocalExecutor()
    return RayExecutor(address=address, max_retries=max_retries)


class UnitWorker:
    """The body of one Ray actor: the suite's model loaded once, evaluating the units sent to it."""

    def __init__(self, suite: Any) -> None:
        self.suite = suite
        self.session: Session | None = None

    def setup(self) -> Inventory:
        """Load the model (once per actor) and say what it makes of the suite."""
        self.session = Session(self.suite)
        return self.session.inventory()

    def run(self, unit: Unit) -> list[Record]:
        """Every record of ``unit``."""
        assert self.session is not None, "setup() first"
        return list(self.session.evaluate(unit))


class RayExecutor:
    """Runs units on Ray actors, one per worker, each holding the model; see the module docstring."""

    def __init__(self, address: str | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                 worker: type[UnitWorker] = UnitWorker, worker_args: tuple[Any, ...] = ()) -> None:
        """``worker`` (a :class:`UnitWorker` subclass, built with ``(suite, *worker_args)``) runs in each actor."""
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise UserError(f"--max-retries must be an integer >= 0 (got {max_retries!r})")
        self.ray = require_ray()
        self.address = address
        self.max_retries = max_retries
        self._worker, self._worker_args = worker, worker_args
        self.workers = 0
        self.cpus = 1.0
        self.gpus = 0.0
        self._suite = None
        self._owns_ray = False
        self._actor_class = None
        self._inventory: Inventory | None = None
        self._actors: list[Any] = []
        self._idle: list[Any] = []
        self._pending: dict[Any, tuple[Any, Unit | None]] = {}  # ref -> (actor, unit; None: the actor's setup)
        self._queue: deque[Unit] = deque()
        self._setup_failures = 0

    # -- starting -------------------------------------------------------------------------------
    def start(self, suite: Any, units: SuiteUnits | None = None) -> Inventory:
        """Connect to (or start) the cluster, start the workers, wait for the first to load the model (workers list
        the suite's units themselves: ``units`` is not used)."""
        self._suite = suite
        res = suite.resources
        self.cpus = float(res.cpus_per_worker or suite.threads or 1)
        self.gpus = float(res.gpus_per_worker)
        if suite.device.startswith("cuda") and self.gpus == 0:
            raise UserError(f"{suite.where('device')}: device {suite.device} needs GPUs on the workers; set "
                            "resources: {gpus_per_worker: 1} (or a fraction to share a GPU)")
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address, logging_level=logging.WARNING)
            self._owns_ray = True
        fit = self._workers_that_fit(required=res.workers is None)
        self.workers = res.workers or fit
        self._actor_class = ray.remote(self._worker)
        for _ in range(self.workers):
            self._add_worker()
        while self._inventory is None:
            failure = self._collect_one()
            if failure is not None:
                raise failure
        return self._inventory

    def _workers_that_fit(self, required: bool) -> int:
        """How many workers the cluster's present CPUs and GPUs hold; none is an error unless ``workers`` was set
        (then an autoscaler may still add nodes)."""
        total = self.ray.cluster_resources()
        cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
        n = int(cpus // self.cpus)
        if self.gpus > 0:
            n = min(n, int(gpus // self.gpus))
        if n < 1:
            problem = (f"{self._suite.where('resources')}: the Ray cluster ({cpus:g} CPUs, {gpus:g} GPUs) cannot hold "
                       f"one worker of {self.cpus:g} CPUs and {self.gpus:g} GPUs")
            if required:
                raise UserError(f"{problem}; lower resources.cpus_per_worker / gpus_per_worker, or add nodes")
            log.warning("%s yet: waiting for nodes to join (Ctrl-C stops; finished records are kept)", problem)
        return n

    def _add_worker(self) -> None:
        actor = self._actor_class.options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0).remote(
            self._suite, *self._worker_args
        )
        self._actors.append(actor)
        self._pending[actor.setup.remote()] = (actor, None)

    def _replace(self, actor: Any) -> None:
        """Drop a dead worker and start another in its place."""
        self.ray.kill(actor, no_restart=True)
        self._actors.remove(actor)
        self._add_worker()

    # -- running --------------------------------------------------------------------------------
    def execute(self, units: list[Unit], started: Started = _ignore) -> Iterator[Record]:
        """Dispatch units to idle workers (``started`` told of each); yield each finished unit's records; retry units
        of dead workers.

        A unit that must run ``alone`` waits until no unit is in flight, and nothing else starts while it runs.
        """
        queue = self._queue = deque(units)
        failure: BaseException | None = None
        while True:
            running = [u for _, u in self._pending.values() if u is not None]
            if not running and (failure is not None or not queue):
                break  # workers still loading the model are not waited for
            while failure is None and queue and self._idle and not any(u.alone for u in running):
                if queue[0].alone and running:
                    break
                actor = self._idle.pop()
                unit = queue.popleft()
                self._pending[actor.run.remote(unit)] = (actor, unit)
                running.append(unit)
                started(unit)
            if not self._pending:  # every worker is either idle or busy, so this cannot happen with units left
                raise RuntimeError(f"{len(queue)} units left but no Ray worker to run them")
            records: list[Record] = []
            failure = self._collect_one(records) or failure
            yield from records
        if failure is not None:
            raise failure

    def _collect_one(self, out: list[Record] | None = None) -> BaseException | None:
        """Wait for one setup or unit to end and deal with it; returns a failure that ends the run."""
        ray = self.ray
        [ref], _ = ray.wait(list(self._pending), num_returns=1)
        actor, unit = self._pending.pop(ref)
        what = f"unit {unit}" if unit is not None else "worker setup"
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the unit's own code raised: retrying would not help
            self._idle.append(actor)
            cause = e.cause
            if isinstance(cause, UserError):
                return UserError(f"{what}: {cause}")
            return RuntimeError(f"{what}: {type(cause).__name__}: {cause}")
        except _worker_lost(ray) as e:
            return self._lost(actor, unit, e)
        if unit is None:
            return self._ready(actor, result)
        self._idle.append(actor)
        for rec in result:
            if unit.attempt > 1:
                rec.meta["attempt"] = unit.attempt
            if out is not None:
                out.append(rec)
        return None

    def _ready(self, actor: Any, inventory: Inventory) -> BaseException | None:
        if self._inventory is None:
            self._inventory = inventory
        elif inventory != self._inventory:
            return RuntimeError(
                "workers disagree on the suite's samples or model name: give every node the same lukv-bench "
                "version, model and data files (at the same paths)"
            )
        self._idle.append(actor)
        return None

    def _lost(self, actor: Any, unit: Unit | None, err: BaseException) -> BaseException | None:
        """A worker died: replace it; put its unit back in the queue unless it has used up its retries."""
        self._replace(actor)
        reason = f"{type(err).__name__}: {str(err).splitlines()[0].rstrip('.') if str(err) else ''}"
        if unit is None:
            self._setup_failures += 1
            log.warning("a worker died while loading the model (%s); starting another", reason)
            if self._setup_failures > self.max_retries:
                return RuntimeError(f"{self._setup_failures} workers died while loading the model; last: {reason}")
            return None
        if unit.attempt > self.max_retries:
            return RuntimeError(
                f"unit {unit}: its worker died on each of {unit.attempt} attempts (--max-retries {self.max_retries});"
                f" last: {reason}. Records of other units are saved in results.jsonl: rerun to resume"
            )
        unit.attempt += 1
        log.warning("unit %s: worker died (%s); retrying, attempt %d of %d", unit, reason, unit.attempt,
                    self.max_retries + 1)
        self._queue.appendleft(unit)
        return None

    def describe(self) -> dict[str, Any]:
        """Cluster address, workers, per-worker resources and the retry bound."""
        return {"kind": "ray", "address": self.address, "workers": self.workers, "cpus_per_worker": self.cpus,
                "gpus_per_worker": self.gpus, "max_retries": self.max_retries}

    def close(self) -> None:
        """Stop the workers, and the cluster if this executor started it."""
        for actor in self._actors:
            self.ray.kill(actor, no_restart=True)
        self._actors.clear()
        self._idle.clear()
        self._pending.clear()
        if self._owns_ray:
            self.ray.shutdown()
            self._owns_ray = False


def _worker_lost(ray) -> tuple[type[BaseException], ...]:
    """Ray's errors for a worker process or node that went away (the unit itself did not fail)."""
    ex = ray.exceptions
    return (ex.RayActorError, ex.WorkerCrashedError, ex.NodeDiedError, ex.ObjectLostError, ex.OutOfMemoryError,
            ex.LocalRayletDiedError)
