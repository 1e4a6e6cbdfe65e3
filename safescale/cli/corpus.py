"""``safescale corpus``: generate, ingest, validate and summarize evidence corpora."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["register"]


def _problems_table(title: str, problems: list) -> Table:
    table = Table(title=title)
    for column in ("file", "line", "field", "message"):
        table.add_column(column, overflow="fold")
    for problem in problems:
        table.add_row(problem.file, str(problem.line), problem.field, problem.message)
    return table


def register(app: typer.Typer) -> None:
    """Add the ``corpus`` command group to the CLI."""
    corpus_app = typer.Typer(
        no_args_is_help=True,
        help="Evidence corpora: bundled generators, ingestion of your documents, validation.",
    )

    @corpus_app.command("generate")
    def generate(
        name: Annotated[str, typer.Argument(help="generator: radiology-guidelines, retina-rules")],
        out: Annotated[Path, typer.Argument(help="corpus directory to write")],
        n: Annotated[
            int | None,
            typer.Option(
                "--n", help="number of items (retina-rules; default 12522)", min=1, max=1_000_000
            ),
        ] = None,
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        overwrite: Annotated[bool, typer.Option(help="replace an existing corpus")] = False,
    ) -> None:
        """Generate a corpus with a seeded rule generator."""
        from safescale.corpora.generators import GENERATORS, generate_corpus

        if name not in GENERATORS:
            raise typer.BadParameter(
                f"unknown generator {name!r} (known: {', '.join(sorted(GENERATORS))})",
                param_hint="NAME",
            )
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, transient=True) as progress:
            task = progress.add_task(f"generating {name}", total=None)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            try:
                path = generate_corpus(
                    name, out, n=n, seed=seed, overwrite=overwrite, progress=report
                )
            except (ValueError, FileExistsError) as error:
                raise typer.BadParameter(str(error)) from None
        _print_stats(path)

    @corpus_app.command("ingest")
    def ingest(
        docs_dir: Annotated[Path, typer.Argument(help="folder of .txt/.md (.pdf) documents")],
        out: Annotated[Path, typer.Argument(help="corpus directory to write")],
        name: Annotated[str | None, typer.Option(help="corpus name (default: folder)")] = None,
        default_grade_system: Annotated[
            str | None, typer.Option(help="grade system for documents without a grade")
        ] = None,
        default_grade: Annotated[
            str | None, typer.Option(help="raw grade label for documents without a grade")
        ] = None,
        default_org: Annotated[str | None, typer.Option(help="organization if none given")] = None,
        chunk_size: Annotated[int, typer.Option(help="words per passage")] = 200,
        chunk_overlap: Annotated[int, typer.Option(help="words shared by neighbours")] = 20,
        overwrite: Annotated[bool, typer.Option(help="replace an existing corpus")] = False,
    ) -> None:
        """Chunk documents into graded passages (metadata from sidecar YAML or front matter)."""
        from safescale.corpora import CorpusError
        from safescale.corpora.ingest import ingest_documents

        if (default_grade_system is None) != (default_grade is None):
            raise typer.BadParameter(
                "give both --default-grade-system and --default-grade, or neither"
            )
        default = (
            (default_grade_system, default_grade)
            if default_grade_system is not None and default_grade is not None
            else None
        )
        console = Console()
        try:
            with console.status(f"ingesting {docs_dir}"):
                result = ingest_documents(
                    docs_dir,
                    out,
                    name=name,
                    default_grade=default,
                    default_org=default_org,
                    chunk_size=chunk_size,
                    chunk_overlap=chunk_overlap,
                    overwrite=overwrite,
                )
        except CorpusError as error:
            console.print(_problems_table("ingestion failed", error.problems))
            raise typer.Exit(1) from None
        except FileExistsError as error:
            raise typer.BadParameter(str(error)) from None
        for file, reason in result.skipped:
            console.print(f"[yellow]skipped[/] {file}: {reason}")
        console.print(
            f"wrote {result.passages} passages from {result.documents} documents to {result.path}"
        )

    @corpus_app.command("validate")
    def validate(
        path: Annotated[str, typer.Argument(help="corpus directory or bundled name")],
    ) -> None:
        """Check a corpus; print every problem as file:line: field: message.

        Errors stop the corpus loading (exit 1); warnings are printed and the exit code
        is 0. At most 200 errors and 200 warnings are listed; the rest are counted.
        """
        from safescale.corpora import check_corpus
        from safescale.corpora.errors import hidden_note

        report = check_corpus(path)
        console = Console()
        for problem in [*report.errors, *report.warnings]:
            typer.echo(str(problem))  # plain, unwrapped: editors jump to file:line
        if report.hidden_errors:
            typer.echo(hidden_note(report.hidden_errors, report.cap))
        if report.hidden_warnings:
            typer.echo(hidden_note(report.hidden_warnings, report.cap, "warning"))
        n_errors = len(report.errors) + report.hidden_errors
        n_warnings = len(report.warnings) + report.hidden_warnings
        if n_errors:
            console.print(f"[red]{n_errors} error(s)[/], {n_warnings} warning(s)", soft_wrap=True)
            raise typer.Exit(1)
        suffix = f" ({n_warnings} warning(s))" if n_warnings else ""
        console.print(f"[green]ok[/] {path}{suffix}", soft_wrap=True)

    @corpus_app.command("stats")
    def stats(
        path: Annotated[str, typer.Argument(help="corpus directory or bundled name")],
    ) -> None:
        """Passages by grade level and status; items by task and category."""
        _print_stats(path)

    app.add_typer(corpus_app, name="corpus")


def _print_stats(path: str | Path) -> None:
    from safescale.corpora import CorpusError, corpus_stats, load_corpus

    console = Console()
    try:
        corpus = load_corpus(path)
    except CorpusError as error:
        console.print(_problems_table("corpus does not load", error.problems))
        raise typer.Exit(1) from None
    summary = corpus_stats(corpus)
    console.print(
        f"[bold]{summary.name}[/] {corpus.manifest.version}: {summary.passages} passages, "
        f"{summary.items} items, {summary.evidence_groups} evidence groups"
    )
    passages = Table(title="passages by grade level and status")
    statuses = sorted({status for _, status in summary.passages_by_level_status})
    passages.add_column("level")
    for status in statuses:
        passages.add_column(status, justify="right")
    for level in sorted({level for level, _ in summary.passages_by_level_status}):
        passages.add_row(
            str(level),
            *(str(summary.passages_by_level_status.get((level, s), 0)) for s in statuses),
        )
    console.print(passages)
    if summary.items:
        items = Table(title="items by task and category")
        tasks = sorted({task for task, _ in summary.items_by_task_category})
        items.add_column("category")
        for task in tasks:
            items.add_column(task, justify="right")
        items.add_column("total", justify="right")
        for category in sorted({c for _, c in summary.items_by_task_category}):
            counts = [summary.items_by_task_category.get((t, category), 0) for t in tasks]
            items.add_row(category, *(str(c) for c in counts), str(sum(counts)))
        console.print(items)
