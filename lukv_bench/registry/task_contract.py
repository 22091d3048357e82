"""What a task type plugin declares: the keys of its suite entries (:class:`Key`) and :class:`TaskType`.

The registry checks every registered task type against this contract when the plugins load; the
suite validation (:mod:`lukv_bench.config.schema`) walks an entry against the type's ``keys``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lukv_bench.config.schema import TaskContext
    from lukv_bench.config.suite import Suite

#: the value types a :class:`Key` may declare
TYPES = (
    "str", "text", "int", "number", "bool", "map", "file", "folder", "metric", "list[str]", "list[int]",
    "list[number]",
)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED = _Marker("REQUIRED")  #: a key without a default: the entry must give it
OPTIONAL = _Marker("OPTIONAL")  #: a key that may be absent and gets no default


@dataclass(frozen=True)
class Key:
    """One key of a task type's config: its type, default and checks.

    ``type`` is one of :data:`TYPES`: ``text`` is a string that may be empty, ``file``/``folder`` a path
    that must exist (relative to the suite file's folder; stored absolute), ``metric`` a registered
    metric name. ``default`` is a value, :data:`REQUIRED` or :data:`OPTIONAL`; ``default_from`` names a
    suite-level setting to default to instead (``"seed"``). ``minimum``/``maximum`` bound numbers (list
    items too); ``choices`` restricts strings; ``unique`` forbids repeated list items. A key with
    ``refused`` set is not allowed: the text says why and what to do instead.
    """

    type: str = "str"
    default: Any = OPTIONAL
    help: str = ""  #: what to write, shown when a required key is missing
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    unique: bool = False
    default_from: str | None = None
    refused: str | None = None

    @staticmethod
    def refuse(reason: str) -> Key:
        """A key the task type does not accept, with the reason (and the fix)."""
        return Key(refused=reason)


#: keys every task entry may have, whatever its type
COMMON_KEYS: dict[str, Key] = {
    "name": Key("str", REQUIRED),
    "type": Key("str", REQUIRED),
    "limit": Key("int", None, minimum=1, nullable=True),
}


def check_keys(keys: Any) -> str | None:
    """Why a task type's ``keys`` is not a usable schema, or None."""
    if not isinstance(keys, Mapping):
        return f"keys must be a mapping of key name -> Key, got {type(keys).__name__}"
    for name, key in keys.items():
        if not isinstance(key, Key):
            return f"keys[{name!r}] must be a lukv_bench.config.schema.Key, got {type(key).__name__}"
        if key.refused is None and key.type not in TYPES:
            return f"keys[{name!r}]: unknown type {key.type!r}; known: {', '.join(TYPES)}"
        if name in COMMON_KEYS:
            return f"keys[{name!r}]: {name!r} is common to every task type and cannot be redeclared"
    return None


@runtime_checkable
class TaskType(Protocol):
    """A ``type:`` of suite task entry: its config schema, its cross-key checks and how to build it.

    Registered as a class (``register(cls)`` in a plugin's ``register_task_types`` hook; the class's
    ``name`` is the ``type:`` value). Suite validation walks ``keys`` (see :mod:`lukv_bench.config.schema`)
    with file and line numbers, then calls ``check``; ``build`` gets the checked entry (defaults
    filled, paths absolute) and returns what the entry stands for: sample-based tasks (the
    :class:`~lukv_bench.tasks.base.Task` protocol) or any :class:`~lukv_bench.units.UnitSource` (one or a list).
    """

    name: str
    keys: Mapping[str, Key]  #: the entry's keys besides name, type and limit

    def check(self, task: dict[str, Any], report: Callable[[str, str], None], ctx: TaskContext) -> None:
        """Checks one key cannot express; ``task`` holds only the keys that passed; ``report(key, problem)``."""
        ...

    def build(self, task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> Any:
        """The task (or a list of tasks) this entry stands for."""
        ...


def data_version(task_type: Any, task: dict[str, Any]) -> str | None:
    """The version of the generator behind an entry's data, from the type's optional ``data_version(task)``.

    A task type that generates its samples (rather than reading them from a file) declares it, so a new
    generator design or corpus changes the records' settings digest; None when the type has none.
    """
    fn = getattr(task_type, "data_version", None)
    return fn(task) if callable(fn) else None
