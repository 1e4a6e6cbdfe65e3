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
        table = Table(title=f"{title} ({rep.protocol}, 95 % intervals)", caption=rep.counts_line())
        for col in ("method", "U-recall", "flag rate", "S1 BA", "AUROC", "ΔBA vs ECRT", "S2 BA",
                    "verdict"):  # fmt: skip
            table.add_column(col)
        for row in rep.rows:
            name = row.method if row.kind == "detector" else f"{row.method} (control)"
            if row.stage1_ci is None:
                table.add_row(name, f"unavailable: {row.reason}", *[""] * 6)
                continue
            s1 = row.stage1_ci
            delta = row.delta_ba.get("ecrt")
            table.add_row(
                name,
                s1.u_recall.text(),
                s1.flag_rate.text(),
                s1.s1_ba.text(),
                s1.auroc.text(),
                "" if delta is None else delta.text(signed=True),
                "" if row.stage2_ci is None else row.stage2_ci.s2_ba.text(),
                row.verdict or "",
            )
        console.print(table)
        for verdict in rep.verdicts:
            console.print(f"- {verdict}", soft_wrap=True)
    if len(reports) > 1:
        console.print(comparison_table(reports))


def _sets(spec: str, model: str | None):
    """The transfer sets a ``RUN_DIR[:CONDITION]`` names (every model x corpus of the
    run with detection features, or only ``model``)."""
    from safescale.cli import UserError
    from safescale.detection.pipeline import transfer_sets
    from safescale.rundir import DETECTION_DIR

    path, _, condition = spec.partition(":")
    root = Path(path) / DETECTION_DIR
    dirs = sorted(p.parent for p in root.glob("*/features.parquet")) if root.is_dir() else []
    if not dirs:
        raise UserError(f"{path}: no detection features (run `safescale detect train {path}`)")
    sets = [
        s
        for s in transfer_sets(dirs)
        if (not condition or s.condition == condition) and (model is None or s.model == model)
    ]
    if not sets:
        raise UserError(
            f"{spec}: no responses of condition {condition!r}"
            + (f" and model {model!r}" if model else "")
            + f" in {root}"
        )
    return sets


def _render_transfer(cells) -> None:
    from safescale.detection.triage_report import transfer_markdown

    Console().print(transfer_markdown(cells), soft_wrap=True)


def detection_config(
    detectors: list[str] | None,
    target_recall: float,
    label_source: str,
    seed: int,
    protocol: str = "cv",
    folds: int = 5,
    repeats: int = 5,
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
        "protocol": "--protocol",
        "folds": "--folds",
        "repeats": "--repeats",
    }
    try:
        return DetectionConfig(
            detectors=tuple(names) or DEFAULT_DETECTORS,
            target_recall=target_recall,
            label_source=label_source,
            seed=seed,
            protocol=protocol,
            folds=folds,
            repeats=repeats,
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
        protocol: Annotated[
            str, typer.Option(help="'cv' (repeated grouped K-fold) or 'split' (one split)")
        ] = "cv",
        folds: Annotated[int, typer.Option(help="K of the cross-validation")] = 5,
        repeats: Annotated[int, typer.Option(help="repeats of the cross-validation")] = 5,
    ) -> None:
        """Extract features (teacher-forced, never generated), train, evaluate out of fold."""
        from safescale.cli import UserError
        from safescale.rundir import RunDir

        config = detection_config(
            detectors, target_recall, label_source, seed, protocol, folds, repeats
        )
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
        run_dir: Annotated[
            Path | None, typer.Argument(help="run directory with detection/ trained")
        ] = None,
        train_on: Annotated[
            str | None,
            typer.Option(help="transfer: train on RUN_DIR[:CONDITION] (its detection features)"),
        ] = None,
        test_on: Annotated[
            str | None, typer.Option(help="transfer: test on RUN_DIR[:CONDITION]")
        ] = None,
        method: Annotated[str, typer.Option(help="detector of the transfer")] = "ecrt",
        model: Annotated[
            str | None, typer.Option(help="transfer: only this model's responses")
        ] = None,
    ) -> None:
        """Re-evaluate from saved features and predictions (no model call); with
        --train-on / --test-on, a transfer matrix between two sets of responses."""
        from safescale.cli import UserError

        if (train_on is None) != (test_on is None):
            raise UserError("detect eval: give both --train-on and --test-on")
        if train_on is not None:
            from safescale.detection.registry import available_detectors
            from safescale.detection.transfer import transfer_matrix

            if method not in available_detectors():
                raise UserError(f"--method: unknown detector {method!r}")
            trains, tests = _sets(train_on, model), _sets(test_on, model)
            cells = [
                c
                for c in transfer_matrix([*trains, *tests], [method])
                if c.train in {s.key for s in trains} and c.test in {s.key for s in tests}
            ]
            _render_transfer(cells)
            return
        if run_dir is None:
            raise UserError("detect eval: give RUN_DIR (or --train-on and --test-on)")
        from safescale.detection.pipeline import evaluate_run_dir

        _render(evaluate_run_dir(run_dir))
        typer.echo(f"wrote {run_dir / 'detection' / 'triage.md'}")

    app.add_typer(detect_app, name="detect")
