"""Condition registry: ``@condition("name")`` on a module's ``build_graph``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from safescale.records import CONDITIONS

__all__ = ["CONDITIONS", "build_condition", "condition", "registered_conditions"]

GraphBuilder = Callable[..., CompiledStateGraph]
_BUILDERS: dict[str, GraphBuilder] = {}


def condition(name: str) -> Callable[[GraphBuilder], GraphBuilder]:
    """Register a condition's ``build_graph(checkpointer=None)``."""

    def wrap(fn: GraphBuilder) -> GraphBuilder:
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise ValueError(f"condition {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn

    return wrap


def _load_bundled() -> None:
    for name in CONDITIONS:
        importlib.import_module(f"safescale.agents.conditions.{name}")


def registered_conditions() -> list[str]:
    """Names of all registered conditions (bundled ones first, in paper order)."""
    _load_bundled()
    extra = sorted(set(_BUILDERS) - set(CONDITIONS))
    return [*CONDITIONS, *extra]


def build_condition(
    name: str, checkpointer: BaseCheckpointSaver | None = None
) -> CompiledStateGraph:
    """Compile the graph of a registered condition."""
    _load_bundled()
    if name not in _BUILDERS:
        raise KeyError(
            f"unknown condition {name!r}; registered: {', '.join(registered_conditions())}"
        )
    return _BUILDERS[name](checkpointer=checkpointer)
