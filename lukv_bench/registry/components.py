"""One registry class for every kind of pluggable component (scorers, allocators, policies, task types, ...).

A :class:`Registry` maps names (and aliases) to :class:`Entry` objects that remember where the component
came from (:class:`Origin`: the plugin's entry point name, its distribution and version). Lookup ignores
case and treats ``_`` and ``-`` alike; an unknown name raises a :class:`~lukv_bench.errors.UserError` with
the closest known name. A name that is already taken is not overwritten: the first registration wins and
the attempt is kept in :attr:`Registry.conflicts`.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lukv_bench.errors import UserError

T = TypeVar("T")


def name_key(name: str) -> str:
    """Lookup form of a name: case and ``_``/``-`` do not matter."""
    return name.strip().lower().replace("_", "-")


def doc_line(obj: object) -> str:
    """First line of an object's docstring ("" when it has none)."""
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def protocol_members(protocol: type) -> list[str]:
    """Attributes and methods a :class:`typing.Protocol` declares (its own, not ``object``'s)."""
    names = list(getattr(protocol, "__annotations__", {}))
    names += [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_") and n not in names]
    return names


def missing_members(obj: object, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``obj`` (a class or an instance) lacks."""
    return [m for m in protocol_members(protocol) if not hasattr(obj, m)]


@dataclass(frozen=True)
class Origin:
    """Where a component came from: the plugin (entry point name) and its distribution and version."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def describe(self) -> dict[str, str | None]:
        """JSON-able form."""
        return {"plugin": self.plugin, "distribution": self.distribution, "version": self.version}


@dataclass
class Entry(Generic[T]):
    """A registered component: its name, aliases, the object itself and its origin."""

    kind: str
    name: str
    obj: T
    origin: Origin
    aliases: tuple[str, ...] = ()
    description: str = ""

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: kind, name, aliases, description and origin."""
        return {
            "kind": self.kind,
            "name": self.name,
            "aliases": list(self.aliases),
            "description": self.description,
            **self.origin.describe(),
        }


@dataclass(frozen=True)
class Conflict:
    """A registration refused because its name (or an alias) was already taken."""

    kind: str
    name: str
    plugin: str  #: the plugin that tried to register it
    owner: str  #: the plugin that holds the name

    def message(self) -> str:
        """The text recorded against the plugin that lost."""
        return f"{self.kind} name {self.name!r} is already registered by plugin {self.owner!r}"


@dataclass
class Registry(Generic[T]):
    """Named components of one kind, in registration order."""

    kind: str  #: e.g. "scorer", "task type"
    plural: str = ""  #: for messages ("policies"); default: kind + "s"
    entries: dict[str, Entry[T]] = field(default_factory=dict)  #: canonical name -> entry
    conflicts: list[Conflict] = field(default_factory=list)
    _lookup: dict[str, str] = field(default_factory=dict, repr=False)  #: name_key(name or alias) -> name

    def __post_init__(self) -> None:
        self.plural = self.plural or f"{self.kind}s"

    def register(
        self,
        obj: T,
        origin: Origin,
        name: str | None = None,
        aliases: typing.Iterable[str] | None = None,
        description: str | None = None,
    ) -> Entry[T] | None:
        """Add ``obj`` under ``name`` (default: its ``name`` attribute) and its aliases.

        Returns the entry, or None when a name was taken (the conflict is recorded). Raises
        TypeError when no usable name is given.
        """
        name = name if name is not None else getattr(obj, "name", None)
        if not isinstance(name, str) or not name.strip():
            raise TypeError(
                f"a {self.kind} needs a name: give the class a `name` ClassVar, or call register(obj, name=...)"
            )
        aliases = tuple(aliases if aliases is not None else getattr(obj, "aliases", ()) or ())
        for n in (name, *aliases):
            owner = self._lookup.get(name_key(n))
            if owner is not None:
                self.conflicts.append(Conflict(self.kind, n, origin.plugin, self.entries[owner].origin.plugin))
                return None
        if description is None:  # a component's own description (a PolicySpec's), else its docstring's first line
            own = getattr(obj, "description", None)
            description = own if isinstance(own, str) else doc_line(obj)
        entry = Entry(self.kind, name, obj, origin, aliases, description)
        self.entries[name] = entry
        for n in (name, *aliases):
            self._lookup[name_key(n)] = name
        return entry

    def get(self, name: str) -> Entry[T] | None:
        """The entry registered under ``name`` or one of its aliases, else None."""
        if not isinstance(name, str):
            return None
        canonical = self._lookup.get(name_key(name))
        return self.entries[canonical] if canonical is not None else None

    def lookup(self, name: str) -> Entry[T]:
        """The entry for ``name``; a :class:`UserError` naming the closest match and the known names otherwise."""
        entry = self.get(name)
        if entry is None:
            raise self.unknown(name)
        return entry

    def names(self, aliases: bool = False) -> list[str]:
        """Canonical names in registration order (with every alias after its name when ``aliases``)."""
        if not aliases:
            return list(self.entries)
        return [n for e in self.entries.values() for n in (e.name, *e.aliases)]

    def suggest(self, name: str) -> str | None:
        """The closest registered name or alias, if any is close."""
        known = self.names(aliases=True)
        close = difflib.get_close_matches(name_key(str(name)), [name_key(k) for k in known], n=1, cutoff=0.4)
        return next(k for k in known if name_key(k) == close[0]) if close else None

    def unknown(self, name: str) -> UserError:
        """The error for an unknown name: ``unknown <kind> 'x'; did you mean 'y'? Known <kinds>: ...``."""
        close = self.suggest(name)
        hint = f"; did you mean {close!r}?" if close else "."
        known = ", ".join(sorted(self.names(aliases=True)))
        return UserError(f"unknown {self.kind} {name!r}{hint} Known {self.plural}: {known}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(list(self.entries.values()))

    def __len__(self) -> int:
        return len(self.entries)
