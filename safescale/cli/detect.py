"""``safescale detect``: train and evaluate risk detectors on a run's frozen responses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["register"]


def _render(reports) -> None:
    from safescale.detection import comparison_table

    console = Console()
    for rep in reports:
        title = f"Triage — {rep.backbone}" + (f" · {rep.corpus}" if rep.corpus else "")
        table = Table(title=f"{title} (test, n={rep.split_sizes['test']})")
        for col in ("method", "U-recall", "flag rate", "S1 BA", "AUROC", "ΔBA", "S2 BA"):
            table.add_column(col)
        for row in rep.rows:
            if row.stage1 is None:
                table.add_row(row.method, f"unavailable: {row.reason}", *[""] * 5)
                continue
            s1 = row.stage1
            delta = row.delta_ba_vs_ecrt
            table.add_row(
                row.method,
                f"{s1.u_recall:.3f}",
                f"{s1.flag_rate:.3f}",
                f"{s1.s1_ba:.3f}",
                f"{s1.auroc:.3f}",
                "" if delta is None else f"{delta:+.3f}",
                "" if row.stage2 is None else f"{row.stage2.s2_ba:.3f}",
            )
        console.print(table)
    if len(reports) > 1:
        console.print(comparison_table(reports))


def detection_config(
    detectors: list[str] | None, target_recall: float, label_source: str, seed: int
):
    """The DetectionConfig of the command-line options (UserError naming the option)."""
    from pydantic import ValidationError

    from safescale.cli import UserError
    from safescale.detection import DEFAULT_DETECTORS, DetectionConfig

    names = [n.strip() for d in (detectors or []) for n in d.split(",") if n.strip()]
    options = {
        "detectors": "--detectors",
        "target_recall": "--target-recall",
        "label_source": "--label-source",
        "seed": "--seed",
    }
    try:
        return DetectionConfig(
            detectors=tuple(names) or DEFAULT_DETECTORS,
            target_recall=target_recall,
            label_source=label_source,
            seed=seed,
        )
    except ValidationError as error:
        problems = []
        for e in error.errors(include_url=False):
            field = str(e["loc"][0]) if e["loc"] else "-"
            message = str(e["msg"]).removeprefix("Value error, ")
            problems.append(f"command line: {options.get(field, field)}: {message}")
        exc = UserError("\n".join(problems))
        raise exc from None


def register(app: typer.Typer) -> None:
    """Add the ``detect`` command group to the CLI."""
    detect_app = typer.Typer(
        no_args_is_help=True,
        help="Risk detectors (ECRT and baselines) on a run's frozen responses.",
    )

    @detect_app.command("train")
    def train(
        run_dir: Annotated[
            Path, typer.Argument(help="run directory (manifest.json, responses.jsonl)")
        ],
        detectors: Annotated[
            list[str] | None,
            typer.Option("--detectors", "-d", help="detector names (repeat or comma-separate)"),
        ] = None,
        target_recall: Annotated[float, typer.Option(help="unsafe recall on validation")] = 0.95,
        label_source: Annotated[str, typer.Option(help="'task' or 'outcome'")] = "task",
        seed: Annotated[int, typer.Option(help="split and classifier seed")] = 13,
    ) -> None:
        """Extract features (teacher-forced, never generated), train, evaluate on test."""
        from safescale.cli import UserError
        from safescale.experiments.rundir import RunDir

        config = detection_config(detectors, target_recall, label_source, seed)
        reader = RunDir(run_dir)  # user errors surface before any model loads
        reader.manifest()
        reader.responses()
        from safescale.experiments.runner import detect_run

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns) as bar:
            tasks: dict[str, int] = {}

            def progress(model: str, done: int, total: int) -> None:
                if model not in tasks:
                    tasks[model] = bar.add_task(f"features {model}", total=total)
                bar.update(tasks[model], completed=done)

            reports, notes = detect_run(run_dir, config, progress=progress)
        if not reports:
            raise UserError(
                f"{run_dir}: detection: no (model, corpus) of the run could be used: "
                + "; ".join(notes or ["no responses"])
            )
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        _render(reports)
        typer.echo(f"wrote {run_dir / 'detection'}")

    @detect_app.command("eval")
    def evaluate(
        run_dir: Annotated[Path, typer.Argument(help="run directory with detection/ trained")],
    ) -> None:
        """Re-score the test split from saved features and models (no model call)."""
        from safescale.experiments.runner import evaluate_run

        _render(evaluate_run(run_dir))
        typer.echo(f"wrote {run_dir / 'detection' / 'triage.md'}")

    app.add_typer(detect_app, name="detect")
