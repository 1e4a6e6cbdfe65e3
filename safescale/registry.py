"""One generic registry of named plug-ins (conditions, detectors, ...).

A :class:`Registry` holds objects by name from three sources, looked up in this order:

1. registered ones (``@registry.decorator("name")`` or :meth:`Registry.register`);
2. bundled ones named lazily as ``"module:object"`` (or ``"module"``, whose import
   registers the name itself): nothing is imported until the name is asked for, so
   listing names never imports a heavy module;
3. entry points an installed distribution declares in the registry's group (loaded on
   first use).

The registry does the bookkeeping; each caller keeps its own contract checks and
messages (errors here carry what happened, see :class:`EntryPointError`). Bottom layer:
imports nothing of safescale.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import Generic, TypeVar

__all__ = [
    "AmbiguousEntryPointError",
    "EntryPointError",
    "EntryPointLoadError",
    "Registry",
    "load_object",
]

T = TypeVar("T")


class EntryPointError(Exception):
    """An entry point that cannot be used.

    Attributes:
        name: the entry point's name.
        values: the ``module:object`` value(s) declared under it.
    """

    def __init__(self, name: str, values: list[str]) -> None:
        super().__init__(f"entry point {name!r} ({', '.join(values)})")
        self.name = name
        self.values = values


class AmbiguousEntryPointError(EntryPointError):
    """Several installed distributions declare the same name."""


class EntryPointLoadError(EntryPointError):
    """Importing the entry point's object raised (``cause``; a ``SystemExit`` too)."""

    def __init__(self, name: str, values: list[str], cause: BaseException) -> None:
        super().__init__(name, values)
        self.cause = cause


def load_object(reference: str) -> object:
    """Import ``"module:object"`` (dotted attributes allowed) or ``"module"``."""
    module_name, _, attribute = reference.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else ():
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Named objects of one kind: registered, bundled (lazy) and entry points.

    Args:
        kind: what the objects are (``detector``, ``condition``), for messages.
        group: the entry-point group searched for names not registered or bundled.
        bundled: name -> ``"module:object"`` (the object is registered under the name
            on first use) or ``"module"`` (importing it registers the name).
    """

    def __init__(
        self, kind: str, *, group: str | None = None, bundled: Mapping[str, str] | None = None
    ) -> None:
        self.kind = kind
        self.group = group
        self.bundled: dict[str, str] = dict(bundled or {})
        self._objects: dict[str, T] = {}

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r})"

    # ------------------------------------------------------------ registering
    def register(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` (the same object again is a no-op).

        Raises:
            ValueError: another object holds the name.
        """
        held = self._objects.get(name)
        if held is not None and held is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered by {held}")
        self._objects[name] = obj
        return obj

    def unregister(self, name: str) -> T | None:
        """Remove the object registered under ``name`` and return it (None when there
        is none); the bundled table and the entry points are untouched."""
        return self._objects.pop(name, None)

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")``: :meth:`register` the decorated object."""

        def wrap(obj: T) -> T:
            return self.register(name, obj)

        return wrap

    # ------------------------------------------------------------ looking up
    def registered(self) -> dict[str, T]:
        """The objects registered so far (a copy; bundled ones appear once loaded)."""
        return dict(self._objects)

    def name_of(self, obj: object) -> str | None:
        """The name ``obj`` is registered under, or None."""
        return next((n for n, o in self._objects.items() if o is obj), None)

    def entry_points(self) -> dict[str, list[metadata.EntryPoint]]:
        """The installed entry points of the group by name (several when they clash)."""
        found: dict[str, list[metadata.EntryPoint]] = {}
        if self.group is not None:
            for ep in metadata.entry_points(group=self.group):
                found.setdefault(ep.name, []).append(ep)
        return found

    def names(self) -> list[str]:
        """Registered, bundled and entry-point names, sorted (nothing is imported)."""
        return sorted(set(self._objects) | set(self.bundled) | set(self.entry_points()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def load_bundled(self, name: str) -> T | None:
        """The bundled object ``name`` (imported now if need be), or None."""
        if name in self._objects:
            return self._objects[name]
        reference = self.bundled.get(name)
        if reference is None:
            return None
        obj = load_object(reference)
        if ":" in reference:
            self.register(name, obj)  # type: ignore[arg-type]
        return self._objects.get(name)

    def load_entry_point(self, name: str) -> object | None:
        """The object the installed entry point ``name`` declares (not registered:
        the caller checks it first), or None when no entry point has that name.

        Raises:
            AmbiguousEntryPointError: several entry points declare ``name``.
            EntryPointLoadError: importing it raised (``SystemExit`` included).
        """
        eps = self.entry_points().get(name, [])
        if not eps:
            return None
        values = [ep.value for ep in eps]
        if len(eps) > 1:
            raise AmbiguousEntryPointError(name, values)
        try:
            return eps[0].load()
        except (Exception, SystemExit) as error:
            raise EntryPointLoadError(name, values, error) from None

    def get(self, name: str) -> T | None:
        """A registered or bundled object (entry points: :meth:`load_entry_point`)."""
        return self.load_bundled(name)
