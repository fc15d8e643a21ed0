"""Handlers by name: the built-ins, entry points and ``module:attr`` specs.

A handler is a callable taking a :class:`~workers.context.TaskContext` and
returning a small JSON-like result. ``cheap=True`` handlers run inline in the
worker's event loop (no process hop; they must be quick and never block);
all others run in a child process the worker can kill on a hard timeout or a
hard cancel. Task kinds are allow-listed by this registry: a worker runs
nothing it has no handler for.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from eventcore.errors import EventcoreError

__all__ = ["ENTRY_POINT_GROUP", "Handler", "HandlerLoadError", "Registry", "handler"]

ENTRY_POINT_GROUP = "eventcore.handlers"
BUILTIN_MODULES = ("workers.handlers.diagnostic", "workers.handlers.image_tasks")


class HandlerLoadError(EventcoreError):
    """A handler spec could not be imported or is not a handler."""


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    fn: Callable[..., Any]
    cheap: bool = False
    models: tuple[str, ...] = ()


def handler(
    name: str, *, cheap: bool = False, models: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Handler]:
    """Decorator: ``@handler("resize")`` turns a function into a :class:`Handler`."""

    def wrap(fn: Callable[..., Any]) -> Handler:
        return Handler(name, fn, cheap, models)

    return wrap


def _handlers_in(obj: Any) -> Iterator[Handler]:
    if isinstance(obj, Handler):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _handlers_in(item)
    elif hasattr(obj, "__dict__") and type(obj).__name__ == "module":
        for value in vars(obj).values():
            if isinstance(value, Handler):
                yield value
    else:
        raise HandlerLoadError(f"{obj!r} is not a handler, a list of handlers or a module")


class Registry:
    """The handlers one worker offers, by task kind."""

    def __init__(self, specs: Iterable[str] = (), *, entry_points: bool = True) -> None:
        self.specs = tuple(specs)
        self.entry_points = entry_points
        self._by_name: dict[str, Handler] = {}
        self.reload()

    def reload(self) -> None:
        """(Re)load every source. Modules named by specs are re-imported, so a
        deployment can ship new handler code without restarting workers."""
        found: dict[str, Handler] = {}
        for module in BUILTIN_MODULES:
            for h in _handlers_in(importlib.import_module(module)):
                found[h.name] = h
        if self.entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    loaded = ep.load()
                except Exception as exc:  # a broken plug-in must not stop the worker
                    raise HandlerLoadError(f"entry point {ep.name!r} ({ep.value}): {exc}") from exc
                for h in _handlers_in(loaded):
                    found[h.name] = h
        for spec in self.specs:
            for h in _handlers_in(load_spec(spec, reload=True)):
                found[h.name] = h
        self._by_name = found

    def get(self, kind: str) -> Handler | None:
        return self._by_name.get(kind)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_name))

    def models(self) -> tuple[str, ...]:
        return tuple(sorted({m for h in self._by_name.values() for m in h.models}))


def load_spec(spec: str, *, reload: bool = False) -> Any:
    """Import ``package.module:attr`` (or a whole module) and return the object."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        if reload:
            module = importlib.reload(module)
    except Exception as exc:
        raise HandlerLoadError(f"cannot import handlers {spec!r}: {exc}") from exc
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise HandlerLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
