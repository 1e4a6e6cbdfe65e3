"""Command-line interface: ``safescale``.

The app is thin: every module in this package that defines ``register(app)`` adds its
commands (one module per command group), and each command parses its arguments, calls
one function of the library and renders the result with rich.

The CLI never puts the current directory on ``sys.path``: a condition given as an
import path in a config is looked up in that config's directory (or its
``import_path``, or ``safescale run --import-path DIR``), then among the installed
packages (see :mod:`safescale.agents.registry`). Under ``python -m safescale.cli``
Python itself puts the current directory first; ``__main__`` takes it off again before
any command runs.

Errors: a user error (a bad config, corpus, run directory, option, model name, a
directory it cannot write, ...) is one line per problem on stderr, ``error:
<file>[:line]: <field>: <message>``, and exit code 2 (click's own usage errors — a
bad option value, a missing argument — included); ``safescale --debug ...`` adds the
traceback. Anything else is a bug: its traceback is shown and the exit code is 1.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

__all__ = ["USER_ERRORS", "UserError", "app", "main", "user_error_types"]


class _OneLineErrors(TyperGroup):
    """The root command group: click's own errors (a bad option value, a missing
    argument, an unknown command) as one ``error:`` line on stderr, exit code 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except Exception as error:
            # click's classes (typer may vendor its own click): matched by name
            kinds = {cls.__name__ for cls in type(error).__mro__}
            if "ClickException" not in kinds and "Abort" not in kinds:
                raise
            if "Abort" in kinds:
                typer.echo("Aborted!", err=True)
                sys.exit(1)
            if type(error).__name__ != "NoArgsIsHelpError":  # its help is printed already
                message = " ".join(str(error.format_message()).split())  # type: ignore[attr-defined]
                ctx = getattr(error, "ctx", None)
                if "UsageError" in kinds and ctx is not None:
                    where = ctx.command_path
                    message = f"{where}: {message} (see {where} --help)"
                typer.echo(f"error: {message}", err=True)
            sys.exit(getattr(error, "exit_code", 2))
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
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
    ("safescale.rundir", "RunDirError"),
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
    ("safescale.presentation.export_inspect", "ExportError"),
    ("safescale.experiments.reliance", "RelianceError"),
    ("safescale.statistics.metric_families", "MetricFamilyError"),
    ("safescale.viewer.server", "ViewServerError"),
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
            if _unwritable(error):
                raise report_user_error(UserError(_unwritable_message(error))) from None
            raise

    return run


#: OS errors that say the user's file system refuses a write (not a bug of ours).
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def _unwritable(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _UNWRITABLE


def _unwritable_message(error: BaseException) -> str:
    assert isinstance(error, OSError)
    where = error.filename if error.filename is not None else "(a file of the run)"
    return f"{where}: {error.strerror or error}"


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
