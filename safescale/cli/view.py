"""``safescale view RUN_DIR``: a browser page over a run directory (no LM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``view`` command to the CLI."""

    @app.command("view")
    def view(
        run_dir: Annotated[
            Path,
            typer.Argument(help="run directory (manifest.json, responses.jsonl)", exists=True),
        ],
        serve: Annotated[
            bool,
            typer.Option(
                "--serve",
                help="serve on 127.0.0.1 (a free port) and load item details on demand",
            ),
        ] = False,
        port: Annotated[int, typer.Option(help="port for --serve (0: a free one)")] = 0,
    ) -> None:
        """Write RUN_DIR/view/index.html (self-contained) and print its path; with
        --serve, serve the viewer on 127.0.0.1 instead and print its address."""
        from safescale.experiments.rundir import RunDirError
        from safescale.viewer import ViewServer, load_view_data, write_view

        console = Console()
        try:
            with console.status("reading the run…"):
                data = load_view_data(run_dir)
        except (RunDirError, FileNotFoundError, ValueError) as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(1) from None
        if not serve:
            print(write_view(run_dir, data))
            return
        server = ViewServer(data, port=port)
        print(server.url, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
