"""Command-line interface: ``safescale``.

The app is thin: every module in this package that defines ``register(app)`` adds its
commands (one module per command group), and each command parses its arguments, calls
one function of the library and renders the result with rich.

Conditions given as import paths in a config resolve against ``sys.path`` with the
current directory put first (as under ``python -m``).

Errors: a user error (a bad config, corpus, run directory, option, model name, ...) is
one line per problem on stderr, ``error: <file>[:line]: <field>: <message>``, and exit
code 2; ``safescale --debug ...`` adds the traceback. Anything else is a bug: its
traceback is shown and the exit code is 1.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import typer

__all__ = ["USER_ERRORS", "UserError", "app", "main", "user_error_types"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="safescale: measure, trace and detect unsafe answers of clinical RAG systems.",
    pretty_exceptions_show_locals=False,
)


class UserError(Exception):
    """A user error raised by a command itself (message: ``where: field: message``)."""


#: (module, class) of the exceptions that are the user's to fix. Looked up only in
#: modules already imported, so handling an error never imports torch.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("safescale.cli", "UserError"),
    ("safescale.experiments.config", "ConfigError"),
    ("safescale.experiments.rundir", "RunDirError"),
    ("safescale.experiments.runner", "RunConflictError"),
    ("safescale.corpora.errors", "CorpusError"),
    ("safescale.models.registry", "UnknownModelError"),
    ("safescale.models.registry", "MissingModelPackageError"),
    ("safescale.models.served.errors", "ServedModelError"),
    ("safescale.retrieval.errors", "StaleIndexError"),
    ("safescale.retrieval.errors", "CorruptIndexError"),
    ("safescale.agents.replay", "ReplayError"),
    ("safescale.agents.registry", "ConditionError"),
    ("safescale.experiments.tracking", "TrackingError"),
    ("safescale.experiments.export_inspect", "ExportError"),
)

_state = {"debug": bool(os.environ.get("SAFESCALE_DEBUG"))}


def user_error_types() -> tuple[type[BaseException], ...]:
    """The user-error classes among the modules imported so far."""
    found = []
    for module_name, name in USER_ERRORS:
        module = sys.modules.get(module_name)
        cls = getattr(module, name, None) if module is not None else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def _lines(error: BaseException) -> list[str]:
    problems = getattr(error, "problems", None)
    if problems:
        return [str(p) for p in problems]
    text = str(error).strip() or type(error).__name__
    return text.splitlines() or [text]


def report_user_error(error: BaseException) -> typer.Exit:
    """Print a user error as ``error: ...`` lines (and the traceback with ``--debug``)."""
    if _state["debug"]:
        traceback.print_exception(error, file=sys.stderr)
    for line in _lines(error):
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(code=2)


def _guard(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as error:
            if isinstance(error, user_error_types()):
                raise report_user_error(error) from None
            raise

    return run


def _guard_all(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.callback is not None and not getattr(command.callback, "_guarded", False):
            command.callback = _guard(command.callback)
            command.callback._guarded = True  # type: ignore[attr-defined]
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _guard_all(group.typer_instance)
            callback = group.typer_instance.registered_callback
            if (
                callback is not None
                and callback.callback is not None
                and not getattr(callback.callback, "_guarded", False)
            ):
                callback.callback = _guard(callback.callback)
                callback.callback._guarded = True  # type: ignore[attr-defined]


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the traceback of user errors too")
    ] = False,
) -> None:
    """safescale: measure, trace and detect unsafe answers of clinical RAG systems."""
    _state["debug"] = debug or bool(os.environ.get("SAFESCALE_DEBUG"))
    # Conditions named by import path (``examples.hyde:build_graph``) resolve against
    # the current directory, as under ``python -m``.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)
    _guard_all(app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    app()
