"""``safescale export``: a run directory in the formats other tools open."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``export`` command group to the CLI."""
    export_app = typer.Typer(
        no_args_is_help=True,
        help="Export a run: Inspect AI .eval logs, MLflow.",
    )

    @export_app.command("inspect")
    def inspect(
        run_dir: Annotated[Path, typer.Argument(help="the run directory")],
        out: Annotated[Path, typer.Argument(help="directory to write the .eval logs into")],
        bundle: Annotated[
            bool, typer.Option("--bundle/--no-bundle", help="also write Inspect's viewer")
        ] = True,
        overwrite: Annotated[bool, typer.Option(help="replace logs already in OUT")] = False,
    ) -> None:
        """Write Inspect .eval logs: one per model x corpus x condition, a sample per item,
        the steps as events, scores and detector outputs in score metadata."""
        from safescale.presentation.export_inspect import export_inspect

        console = Console()
        with console.status(f"exporting {run_dir}"):
            result = export_inspect(run_dir, out, bundle=bundle, overwrite=overwrite)
        console.print(
            f"wrote {len(result.logs)} .eval logs ({result.samples} samples) to {out}",
            soft_wrap=True,
        )
        if result.viewer is not None:
            console.print(
                f"Inspect viewer: {result.viewer} (serve it, e.g. python -m http.server "
                f"--directory {result.viewer}; or: inspect view --log-dir {out})",
                soft_wrap=True,
            )

    @export_app.command("mlflow")
    def mlflow(
        run_dir: Annotated[Path, typer.Argument(help="the run directory")],
        uri: Annotated[
            str | None, typer.Option(help="tracking URI (default: the run's tracking.mlflow)")
        ] = None,
        experiment: Annotated[str | None, typer.Option(help="MLflow experiment")] = None,
    ) -> None:
        """Log a run's config, metrics (with CI bounds), plots and report to MLflow."""
        from safescale.cli import UserError
        from safescale.experiments.tracking import log_to_mlflow, track_run

        if uri is None:
            lines = track_run(run_dir)
            if not lines:
                raise UserError(f"{run_dir / 'config.yaml'}: tracking: no tracker; pass --uri")
            for line in lines:
                typer.echo(line)
            return
        run_id = log_to_mlflow(run_dir, uri, experiment)
        typer.echo(f"mlflow: run {run_id} at {uri}")

    app.add_typer(export_app, name="export")
