"""Condition registry: ``@condition("name")`` on a module's ``build_graph``, plus
external conditions named by import path or entry point.

A config's ``conditions`` entry (a *source*) is resolved by :func:`resolve_condition`:

* a bundled name (``standard_rag``) or a name registered with ``@condition``;
* an import path ``package.module:build_graph``: its top-level module is looked up
  first in the *import path* of the config that names it (the config's own directory
  unless the config says otherwise, plus ``safescale run --import-path DIR``), then
  among the installed packages on ``sys.path``. The current directory is never
  searched unless it is one of those; the directories are added at the *end* of
  ``sys.path`` (for the modules the condition itself imports), so a ``faiss.py`` or
  ``pandas.py`` beside a config never shadows an installed package;
* the name of an entry point in group ``safescale.conditions`` whose object is a
  builder.

Resolving compiles the graph (no checkpointer, no model) and checks it against the
contract (:mod:`safescale.agents.contract`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from safescale.agents.contract import ENTRY_POINT_GROUP, contract_problems
from safescale.registry import AmbiguousEntryPointError, EntryPointLoadError, Registry
from safescale.rundir import CONDITIONS, check_slug

__all__ = [
    "CONDITIONS",
    "CONDITION_REGISTRY",
    "ENTRY_POINT_GROUP",
    "ConditionError",
    "ConditionSpec",
    "build_condition",
    "condition",
    "registered_conditions",
    "resolve_condition",
]

GraphBuilder = Callable[..., CompiledStateGraph]
#: Builders registered with ``@condition`` (bundled and external); the six bundled
#: conditions load on first use, entry points in :data:`ENTRY_POINT_GROUP` when named.
CONDITION_REGISTRY: Registry[GraphBuilder] = Registry(
    "condition",
    group=ENTRY_POINT_GROUP,
    bundled={name: f"safescale.agents.conditions.{name}" for name in CONDITIONS},
)
_RESOLVED: dict[tuple[str, tuple[str, ...]], ConditionSpec] = {}


class ConditionError(ValueError):
    """A condition source that cannot be resolved, built or that breaks the contract."""


@dataclass(frozen=True)
class ConditionSpec:
    """A resolved condition.

    Attributes:
        name: the name its records carry.
        source: what named it (bundled name, import path or entry-point name).
        builder: ``build_graph(checkpointer=None) -> CompiledStateGraph``.
        bundled: one of the six bundled conditions.
    """

    name: str
    source: str
    builder: GraphBuilder
    bundled: bool

    def build(self, checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
        """Compile the graph with ``checkpointer``."""
        return self.builder(checkpointer=checkpointer)


def condition(name: str) -> Callable[[GraphBuilder], GraphBuilder]:
    """Register a condition's ``build_graph(checkpointer=None)``."""
    check_slug(name, "condition name")

    def wrap(fn: GraphBuilder) -> GraphBuilder:
        held = CONDITION_REGISTRY.registered().get(name)
        if held is not None and held is not fn:
            raise ValueError(f"condition {name!r} is already registered")
        return CONDITION_REGISTRY.register(name, fn)

    return wrap


def _load_bundled() -> None:
    for name in CONDITIONS:
        CONDITION_REGISTRY.load_bundled(name)


def registered_conditions() -> list[str]:
    """Names of the bundled conditions (paper order), then the other registered ones and
    the installed entry points (sorted)."""
    _load_bundled()
    extra = set(CONDITION_REGISTRY.names()) - set(CONDITIONS)
    return [*CONDITIONS, *sorted(extra)]


def _search_dirs(import_path: Sequence[str | Path]) -> tuple[str, ...]:
    return tuple(str(Path(d).expanduser().resolve()) for d in import_path)


def _find_in(top: str, dirs: tuple[str, ...]) -> None:
    """Import the top-level module ``top`` from the first of ``dirs`` that holds it
    (nothing when none does, or when it is imported already)."""
    if not dirs or top in sys.modules:
        return
    spec = importlib.machinery.PathFinder.find_spec(top, list(dirs))
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(top, None)
        raise


def _import_path(source: str, dirs: tuple[str, ...] = ()) -> object:
    module_name, _, attr = source.partition(":")
    where = (
        f"the import path ({', '.join(dirs)}) and the installed packages"
        if dirs
        else "the installed packages (no import path: give the config an import_path, "
        "or run with --import-path DIR)"
    )
    for directory in dirs:  # what the condition module imports itself
        if directory not in sys.path:
            sys.path.append(directory)
    try:
        _find_in(module_name.split(".")[0], dirs)
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConditionError(
            f"cannot import module {module_name!r} of condition {source!r}: {error} "
            f"(looked in {where})"
        ) from None
    except SystemExit as error:  # the user's module called sys.exit() while importing
        raise ConditionError(
            f"importing {module_name!r} for condition {source!r} called sys.exit({error.code!r})"
        ) from None
    except Exception as error:  # the user's module failed while importing
        raise ConditionError(
            f"importing {module_name!r} for condition {source!r} failed: "
            f"{type(error).__name__}: {error}"
        ) from None
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConditionError(
                f"module {module_name!r} has no attribute {attr!r} (condition {source!r})"
            )
        obj = getattr(obj, part)
    return obj


def _compile(source: str, builder: object) -> CompiledStateGraph:
    if not callable(builder):
        raise ConditionError(f"condition {source!r} is not a graph builder function")
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    if (
        params
        and "checkpointer" not in params
        and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    ):
        raise ConditionError(
            f"condition {source!r}: the builder must accept checkpointer= "
            "(def build_graph(checkpointer=None))"
        )
    try:
        graph = builder(checkpointer=None)
    except SystemExit as error:
        raise ConditionError(
            f"building condition {source!r} called sys.exit({error.code!r})"
        ) from None
    except Exception as error:
        raise ConditionError(
            f"building condition {source!r} failed: {type(error).__name__}: {error}"
        ) from None
    problems = contract_problems(graph)
    if problems:
        raise ConditionError(
            f"condition {source!r} breaks the condition contract: {'; '.join(problems)}"
        )
    return graph


def _load_entry_point(source: str) -> GraphBuilder:
    """The builder the installed entry point ``source`` declares.

    Raises:
        ConditionError: no such entry point, several, or loading it failed.
    """
    try:
        builder = CONDITION_REGISTRY.load_entry_point(source)
    except AmbiguousEntryPointError as error:
        raise ConditionError(
            f"condition {source!r} is registered by {len(error.values)} entry points "
            f"({', '.join(error.values)}); uninstall all but one"
        ) from None
    except EntryPointLoadError as error:
        cause = error.cause
        if isinstance(cause, SystemExit):
            raise ConditionError(
                f"loading entry point {source!r} ({error.values[0]}) called "
                f"sys.exit({cause.code!r})"
            ) from None
        if not isinstance(cause, Exception):
            raise cause from None
        raise ConditionError(
            f"loading entry point {source!r} ({error.values[0]}) failed: "
            f"{type(cause).__name__}: {cause}"
        ) from None
    if builder is None:
        installed = sorted(CONDITION_REGISTRY.entry_points())
        raise ConditionError(
            f"unknown condition {source!r}: not a bundled condition "
            f"({', '.join(CONDITIONS)}), not an entry point in group "
            f"{ENTRY_POINT_GROUP!r} ({', '.join(installed) or 'none installed'}), "
            "and not an import path 'module:function'"
        )
    return builder  # type: ignore[return-value]


def resolve_condition(source: str, import_path: Sequence[str | Path] = ()) -> ConditionSpec:
    """Resolve, compile and contract-check a condition source (cached per source and
    import path).

    Args:
        source: a bundled or registered name, an import path ``module:function`` or an
            entry-point name.
        import_path: directories searched first for the top-level module of an import
            path (a config's ``import_path``); ignored for the other sources.

    Raises:
        ConditionError: one line saying what is wrong with ``source``.
    """
    dirs = _search_dirs(import_path) if isinstance(source, str) and ":" in source else ()
    if (source, dirs) in _RESOLVED:
        return _RESOLVED[source, dirs]
    _load_bundled()
    if not isinstance(source, str) or not source:
        raise ConditionError(f"a condition must be a non-empty string, got {source!r}")
    if ":" in source:
        builder = _import_path(source, dirs)
        graph = _compile(source, builder)
        name = CONDITION_REGISTRY.name_of(builder) or graph.name
    elif source in CONDITION_REGISTRY.registered():
        builder, name = CONDITION_REGISTRY.registered()[source], source
        _compile(source, builder)
    else:
        builder = _load_entry_point(source)
        name = source
        _compile(source, builder)
    try:
        check_slug(name, "condition name")
    except ValueError as error:
        raise ConditionError(f"condition {source!r}: {error}") from None
    # Names need only be unique within one config (its own check); a bundled name
    # always means the bundled condition.
    if name in CONDITIONS and CONDITION_REGISTRY.registered()[name] is not builder:
        raise ConditionError(
            f"condition {source!r} is named {name!r}, the name of a bundled condition; "
            "give it its own name (graph.compile(name=...))"
        )
    spec = ConditionSpec(name, source, builder, name in CONDITIONS)  # type: ignore[arg-type]
    _RESOLVED[source, dirs] = spec
    return spec


def build_condition(
    source: str,
    checkpointer: BaseCheckpointSaver | None = None,
    import_path: Sequence[str | Path] = (),
) -> CompiledStateGraph:
    """Compile the graph of a condition (a registered name or any source that
    :func:`resolve_condition` accepts, with the config's ``import_path``).

    Raises:
        ConditionError: the source cannot be resolved, built or checked.
    """
    return resolve_condition(source, import_path).build(checkpointer)
