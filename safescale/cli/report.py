"""``safescale report RUN_DIR``: metrics, tables and plots from a run directory (no LM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to the CLI."""

    @app.command("report")
    def report(
        run_dir: Annotated[
            Path,
            typer.Argument(help="run directory (manifest.json, responses.jsonl)", exists=True),
        ],
        replicates: Annotated[
            int | None,
            typer.Option(
                help="bootstrap replicates (default: the run config's)", min=10, max=1_000_000
            ),
        ] = None,
        seed: Annotated[
            int | None, typer.Option(help="bootstrap seed (default: the run config's)")
        ] = None,
        plots: Annotated[bool, typer.Option(help="write plots/*.png")] = True,
    ) -> None:
        """Recompute metrics with bootstrap CIs; print the condition and triage tables;
        write metrics.json, report.md, CSV files and plots."""
        print_report(run_dir, replicates=replicates, seed=seed, plots=plots)


def _up_to_date(run_dir: Path) -> bool:
    """metrics.json and report.md are newer than every input they are computed from."""
    from safescale.rundir import (
        ATTRIBUTION_FILE,
        CONFIG_FILE,
        METRICS_FILE,
        RELIANCE_FILE,
        RESPONSES_FILE,
        TRIAGE_FILE,
    )

    outputs = [run_dir / METRICS_FILE, run_dir / "report.md"]
    if not all(p.is_file() for p in outputs):
        return False
    names = (RESPONSES_FILE, ATTRIBUTION_FILE, RELIANCE_FILE, CONFIG_FILE, TRIAGE_FILE)
    inputs = [run_dir / n for n in names]
    newest_input = max((p.stat().st_mtime for p in inputs if p.is_file()), default=0.0)
    return min(p.stat().st_mtime for p in outputs) >= newest_input


def print_report(
    run_dir: Path,
    *,
    replicates: int | None = None,
    seed: int | None = None,
    plots: bool = True,
    reuse: bool = False,
) -> None:
    """Recompute metrics with bootstrap CIs; print the condition and triage tables;
    write metrics.json, report.md, CSV files and plots. With ``reuse``, a report that
    is newer than all of its inputs is printed as it is instead of recomputed."""
    if reuse and replicates is None and seed is None and _up_to_date(Path(run_dir)):
        from safescale.presentation.report import (
            condition_tables,
            print_validity,
            reliance_table,
            rich_table,
            triage_tables,
        )
        from safescale.presentation.scaling_report import print_scaling
        from safescale.rundir import RunDir

        console = Console()
        metrics = RunDir(run_dir).metrics()
        print_validity(console, metrics)
        for table in condition_tables(metrics):
            console.print(rich_table(table))
        print_scaling(console, metrics)
        for table in triage_tables(metrics):
            console.print(rich_table(table))
        reliance = reliance_table(metrics)
        if reliance is not None:
            console.print(rich_table(reliance))
        console.print(f"report is up to date: {Path(run_dir) / 'report.md'}")
        return
    from safescale.presentation.report import (
        condition_tables,
        print_validity,
        reliance_table,
        rich_table,
        triage_tables,
        write_report,
    )
    from safescale.rundir import MetricsReport, RunDirError
    from safescale.statistics.metrics import run_settings

    console = Console()
    try:
        bootstrap, _ = run_settings(run_dir)
        changes = {
            k: v for k, v in {"replicates": replicates, "seed": seed}.items() if v is not None
        }
        bootstrap = bootstrap.model_copy(update=changes) if changes else None
        with console.status("computing metrics…"):
            files = write_report(run_dir, bootstrap=bootstrap, plots=plots)
    except (RunDirError, FileNotFoundError, ValueError) as error:
        from safescale.cli import report_user_error

        raise report_user_error(error) from None
    metrics = MetricsReport.coerce(files.metrics)
    for note in metrics.run.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    from safescale.presentation.scaling_report import print_scaling

    print_validity(console, metrics)
    for table in condition_tables(metrics):
        console.print(rich_table(table))
    print_scaling(console, metrics)
    for table in triage_tables(metrics):
        console.print(rich_table(table))
    reliance = reliance_table(metrics)
    if reliance is not None:
        console.print(rich_table(reliance))
    written = [files.metrics_json, files.report_md, files.conditions_csv, files.comparisons_csv]
    written += [files.triage_csv] if files.triage_csv else []
    written += files.plots
    console.print("wrote " + ", ".join(str(p) for p in written))
