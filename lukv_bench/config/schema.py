"""Config schemas: the keys a task type declares, and the walk that checks a task entry against them.

A task type (:class:`~lukv_bench.registry.task_contract.TaskType`) declares ``keys``: a mapping of key name to
:class:`Key` (type, default, bounds, choices, or a reason the key is refused). :func:`check_task`
walks an entry against that schema and reports every problem through a :class:`Checker`, which
formats it as ``FILE:LINE: KEY.PATH: problem``; entries built in code are checked by the same walk
(:func:`normalize_task`), without file and line. The checks one key cannot express (a data file's
rows, a subset that depends on the source) live in the task type's ``check``.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lukv_bench.errors import UserError
from lukv_bench.registry.catalog import catalog
from lukv_bench.registry.task_contract import COMMON_KEYS, OPTIONAL, REQUIRED, Key, _Marker


def resolve_path(folder: Path, value: str) -> Path:
    """A path written in a suite: ``~`` expanded, relative to the suite's folder unless absolute."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (folder / p).resolve()



INVALID = _Marker("INVALID")  #: a value that failed its checks


# --- problems with file, line and key path ------------------------------------------------------


def line_for(lines: dict[str, int], key_path: str) -> int | None:
    """Line of ``key_path``, else of its closest ancestor."""
    path = key_path
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""


def top_key(key_path: str) -> str:
    """The top-level key of a key path: ``tasks`` for ``tasks[0].path``."""
    return re.split(r"[.\[]", key_path, maxsplit=1)[0]


def locate(key_path: str, file: str | None, lines: dict[str, int], options: dict[str, str],
           line: int | None = None) -> str:
    """Where ``key_path`` was set, for messages: ``--option: KEY.PATH`` when a command-line option set its
    top-level key, else ``FILE:LINE: KEY.PATH`` (``line``: a known line; ``file`` None: the path alone)."""
    shown = key_path or "<top level>"
    option = options.get(top_key(key_path))
    if option is not None:
        return f"{option}: {shown}"
    if file is None:
        return shown
    line = line or line_for(lines, key_path)
    return f"{file}:{line}: {shown}" if line else f"{file}: {shown}"


def join_path(parent: str, key: str | int) -> str:
    """``parent.key`` or ``parent[i]`` (``key`` alone at the top level)."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def show(value: Any) -> str:
    """A value and its YAML type for messages: ``'many' (str)``."""
    text = repr(value)
    kind = "null" if value is None else type(value).__name__
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind})"


class Checker:
    """Collects problems with file/line/key-path context (``file`` None: entries built in code)."""

    def __init__(self, file: str | None, values: dict[str, int] | None = None, keys: dict[str, int] | None = None,
                 options: dict[str, str] | None = None):
        """``options``: top-level keys given on the command line -> the option that set them (named instead of a
        file and line)."""
        self.file = file
        self.values = values or {}
        self.keys = keys or {}
        self.options = options or {}
        self.problems: list[str] = []

    def fail(self, path: str, msg: str, *, at_key: bool = False) -> None:
        """Record a problem at ``path`` (the key's own line when ``at_key``, else its value's)."""
        line = self.keys.get(path) if at_key else None
        self.problems.append(f"{locate(path, self.file, self.values, self.options, line)}: {msg}")

    def is_int(self, path: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> bool:
        """Whether ``value`` is an integer (>= ``minimum``); records the problem if not."""
        if value is None and allow_none:
            return True
        if isinstance(value, bool) or not isinstance(value, int):
            what = f"an integer >= {minimum}" if minimum is not None else "an integer"
            self.fail(path, f"expected {what}{' or null' if allow_none else ''}, got {show(value)}")
            return False
        if minimum is not None and value < minimum:
            self.fail(path, f"must be >= {minimum}, got {value}")
            return False
        return True

    def is_str(self, path: str, value: Any, nonempty: bool = True) -> bool:
        """Whether ``value`` is a (non-empty) string; records the problem if not."""
        if not isinstance(value, str) or (nonempty and not value.strip()):
            what = "a non-empty string" if nonempty else "a string"
            self.fail(path, f"expected {what}, got {show(value)}")
            return False
        return True

    def is_choice(self, path: str, value: Any, choices: tuple) -> bool:
        """Whether ``value`` is one of ``choices``; records the problem (with the closest choice) if not."""
        if value not in choices:
            names = [str(c) for c in choices]
            close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6) if isinstance(value, str) else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.fail(path, f"got {show(value)}; allowed: {', '.join(names)}{hint}")
            return False
        return True

    def unknown_keys(self, path: str, mapping: dict, allowed: tuple[str, ...]) -> list[str]:
        """Record every key of ``mapping`` not in ``allowed`` (with the closest allowed one); return them."""
        unknown = [str(k) for k in mapping if k not in allowed]
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.fail(join_path(path, key), f"unknown key {key!r}; {hint}allowed keys: {', '.join(allowed)}",
                      at_key=True)
        return unknown


# --- the walk ------------------------------------------------------------------------------------


@dataclass
class TaskContext:
    """What a task entry's checks need from around it."""

    folder: Path  #: relative paths resolve against it (the suite file's folder)
    settings: dict[str, Any] = field(default_factory=dict)  #: suite-level settings for ``default_from``


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounds(c: Checker, path: str, value: float, key: Key) -> bool:
    if key.minimum is not None and value < key.minimum:
        c.fail(path, f"must be >= {key.minimum:g}, got {value}")
        return False
    if key.maximum is not None and value > key.maximum:
        c.fail(path, f"must be <= {key.maximum:g}, got {value}")
        return False
    return True


def _scalar(c: Checker, path: str, value: Any, typ: str, key: Key, ctx: TaskContext) -> Any:
    """The checked (and for paths and metrics: normalised) value, or INVALID after recording why."""
    if typ in ("str", "text"):
        if not c.is_str(path, value, nonempty=typ == "str"):
            return INVALID
        if key.choices is not None and not c.is_choice(path, value, key.choices):
            return INVALID
        return value
    if typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            what = f"an integer >= {key.minimum:g}" if key.minimum is not None else "an integer"
            c.fail(path, f"expected {what}{' or null' if key.nullable else ''}, got {show(value)}")
            return INVALID
        return value if _bounds(c, path, value, key) else INVALID
    if typ == "number":
        if not _number(value):
            c.fail(path, f"expected a number, got {show(value)}")
            return INVALID
        return value if _bounds(c, path, value, key) else INVALID
    if typ == "bool":
        if not isinstance(value, bool):
            c.fail(path, f"expected true or false, got {show(value)}")
            return INVALID
        return value
    if typ == "map":
        if not isinstance(value, dict):
            c.fail(path, f"expected a map, got {show(value)}")
            return INVALID
        return value
    if typ in ("file", "folder"):
        if not c.is_str(path, value):
            return INVALID
        resolved = resolve_path(ctx.folder, value)
        if typ == "file" and not resolved.exists():
            c.fail(path, f"file not found: {resolved}")
            return INVALID
        if typ == "folder" and not resolved.is_dir():
            c.fail(path, f"folder not found: {resolved}")
            return INVALID
        return str(resolved)
    if typ == "metric":
        metrics = catalog().metrics
        entry = metrics.get(value) if isinstance(value, str) else None
        if entry is None:
            c.is_choice(path, value, tuple(metrics.names()))
            return INVALID
        return entry.name
    raise ValueError(f"unknown key type {typ!r}")  # check_keys refuses these at registration


_ITEM_NAMES = {"str": "strings", "int": "integers", "number": "numbers"}


def check_value(c: Checker, path: str, value: Any, key: Key, ctx: TaskContext) -> Any:
    """``value`` checked against ``key`` (lists item by item), or INVALID after recording every problem."""
    if value is None and key.nullable:
        return None
    if not key.type.startswith("list["):
        return _scalar(c, path, value, key.type, key, ctx)
    item_type = key.type[5:-1]
    if not isinstance(value, list) or not value:
        c.fail(path, f"expected a non-empty list of {_ITEM_NAMES[item_type]}, got {show(value)}")
        return INVALID
    items = [_scalar(c, join_path(path, i), v, item_type, key, ctx) for i, v in enumerate(value)]
    if any(v is INVALID for v in items):
        return INVALID
    if key.unique:
        dups = sorted({str(v) for i, v in enumerate(items) if v in items[:i]})
        if dups:
            c.fail(path, f"duplicate entries: {', '.join(dups)}")
            return INVALID
    return items


def check_task(
    c: Checker, path: str, value: dict[str, Any], task_type: Any, ctx: TaskContext, deep: bool = True
) -> dict[str, Any]:
    """Check a task entry against its type's schema; return it with defaults filled and paths resolved.

    Every problem goes to ``c``: unknown and refused keys (at the key's line), missing required keys,
    wrong values; then (``deep``) the type's own ``check`` runs on the keys that passed.
    """
    schema = {**COMMON_KEYS, **task_type.keys}
    allowed = tuple(k for k, key in schema.items() if key.refused is None)
    bad = set(c.unknown_keys(path, {k: v for k, v in value.items() if k not in schema}, allowed))
    task = dict(value)
    for name, key in schema.items():
        key_path = join_path(path, name)
        if key.refused is not None:
            if name in value:
                c.fail(key_path, key.refused, at_key=True)
                bad.add(name)
            continue
        if name in ("name", "type"):
            continue  # the suite checks these before the type is known
        if name not in value:
            if key.default is REQUIRED:
                c.fail(path, f"missing required key {name!r}" + (f" ({key.help})" if key.help else ""))
                bad.add(name)
            elif key.default_from is not None:
                task[name] = ctx.settings[key.default_from]
            elif key.default is not OPTIONAL:
                task[name] = copy.deepcopy(key.default)
            continue
        checked = check_value(c, key_path, value[name], key, ctx)
        if checked is INVALID:
            bad.add(name)
        else:
            task[name] = checked

    def report(key: str, msg: str) -> None:
        c.fail(join_path(path, key) if key else path, msg)

    if deep:
        task_type.check({k: v for k, v in task.items() if k not in bad}, report, ctx)
    return task


def normalize_task(task: dict[str, Any], task_type: Any, ctx: TaskContext, deep: bool = True) -> dict[str, Any]:
    """Check an entry without a file (built in code) against its type's schema: defaults filled, paths
    resolved; one UserError lists every problem. ``deep=False`` skips the type's cross-key ``check``."""
    c = Checker(None)
    out = check_task(c, "", task, task_type, ctx, deep)
    if c.problems:
        label = f"{task.get('type')} task {task.get('name')!r}"
        raise UserError(f"{label}: " + "; ".join(c.problems))
    return out
