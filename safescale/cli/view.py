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
            Path, typer.Argument(help="run directory (manifest.json, responses.jsonl)")
        ],
        serve: Annotated[
            bool,
            typer.Option(
                "--serve",
                help="serve on 127.0.0.1 (a free port) and load item details on demand",
            ),
        ] = False,
        port: Annotated[
            int, typer.Option(help="port for --serve (0: a free one)", min=0, max=65535)
        ] = 0,
    ) -> None:
        """Write RUN_DIR/view/index.html (self-contained) and print its path; with
        --serve, serve the viewer on 127.0.0.1 instead and print its address (under
        an unguessable token path; only requests naming 127.0.0.1 or localhost with
        the port are answered)."""
        from safescale.cli import UserError
        from safescale.rundir import RunDir, RunDirError
        from safescale.viewer import ViewServer, ViewServerError, load_view_data, write_view

        console = Console(stderr=True)
        RunDir(run_dir).require()  # a RunDirError is one line (the CLI's error rule)
        try:
            with console.status("reading the run…"):
                data = load_view_data(run_dir)
        except RunDirError:
            raise
        except (FileNotFoundError, ValueError) as error:
            raise UserError(f"{run_dir}: {error}") from None
        if not serve:
            print(write_view(run_dir, data))
            return
        try:
            server = ViewServer(data, port=port)
        except ViewServerError as error:
            raise UserError(str(error)) from None
        print(server.url, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
