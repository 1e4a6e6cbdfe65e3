"""Command-line interface: ``safescale``.

The app is thin: every module in this package that defines ``register(app)`` adds its
commands (one module per command group), and each command parses its arguments, calls
one function of the library and renders the result with rich.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="safescale: measure, trace and detect unsafe answers of clinical RAG systems.",
    pretty_exceptions_show_locals=False,
)


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    app()
