"""``safescale models``: registered models, install and cache state; ``models warm``."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

models_app = typer.Typer(
    help="Registered language models and their conversion cache.", invoke_without_command=True
)


@models_app.callback()
def list_models(ctx: typer.Context) -> None:
    """List registered models, whether their package is installed and their cache warm."""
    if ctx.invoked_subcommand is not None:
        return
    from safescale.models import model_cache_status, registered_models

    table = Table(title="registered models")
    for col in ("name", "description", "installed", "cached", "install command"):
        table.add_column(col)
    for entry in registered_models():
        status = model_cache_status(entry)
        table.add_row(
            entry.name,
            entry.description,
            "[green]yes[/]" if status["installed"] else "[red]no[/]",
            "[green]yes[/]" if status["cached"] else "[yellow]no[/]",
            entry.install,
        )
    Console().print(table)


@models_app.command("warm")
def warm(name: str = typer.Argument(..., help="registered model name")) -> None:
    """Convert a registered GGUF once into the safetensors cache."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from safescale.models import warm_model

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        bar.add_task(f"converting {name} (dequantizing GGUF once)", total=None)
        directory = warm_model(name, progress=False)
    Console().print(f"[green]cached[/] {name} at {directory}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
