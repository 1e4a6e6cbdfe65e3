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

    @corpus_app.command("import")
    def import_(
        fmt: Annotated[str, typer.Argument(help="pubmedqa, medqa, medmcqa, mirage or hf")],
        src: Annotated[Path, typer.Argument(help="the file or save_to_disk directory to read")],
        out: Annotated[Path, typer.Argument(help="corpus directory to write")],
        name: Annotated[str | None, typer.Option(help="corpus name (default: OUT's name)")] = None,
        label_rule: Annotated[
            str | None,
            typer.Option(help="derive safety labels: yesno-opposite, yesno-strict, any-wrong"),
        ] = None,
        rule_labels: Annotated[
            str, typer.Option(help="labels the rule writes: unsafe, high_risk (comma list)")
        ] = "unsafe",
        passages_from: Annotated[
            str | None,
            typer.Option(help="answer the items over this corpus's passages (name or dir)"),
        ] = None,
        split: Annotated[str | None, typer.Option(help="split of a DatasetDict")] = None,
        ids: Annotated[
            Path | None, typer.Option(help="pubmedqa: JSON whose keys are the PMIDs to keep")
        ] = None,
        grade_level: Annotated[
            int, typer.Option(min=1, max=4, help="pubmedqa: level of the passages' one grade")
        ] = 3,
        cop_base: Annotated[
            str, typer.Option(help="medmcqa: cop numbering, 1 (release), 0 (HF) or auto")
        ] = "auto",
        subset: Annotated[
            list[str] | None, typer.Option(help="mirage: subset(s) to import (default all)")
        ] = None,
        mapping: Annotated[Path | None, typer.Option(help="hf: YAML column mapping")] = None,
        map_: Annotated[
            list[str] | None,
            typer.Option("--map", help="hf: KEY=COLUMN (repeatable; options=a,b,c,d)"),
        ] = None,
        license_: Annotated[
            str | None,
            typer.Option("--license", help="the corpus license (default: the dataset's)"),
        ] = None,
        overwrite: Annotated[bool, typer.Option(help="replace an existing corpus")] = False,
    ) -> None:
        """Import a public benchmark (PubMedQA, MedQA, MedMCQA, MIRAGE, any HF dataset)."""
        from safescale.cli import UserError
        from safescale.corpora.importers import FORMATS, import_corpus, load_mapping

        if fmt not in FORMATS:
            raise UserError(f"FORMAT: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
        if cop_base not in ("auto", "0", "1"):
            raise UserError(f"--cop-base: expected 0, 1 or auto, got {cop_base!r}")
        options: dict[str, object] = {}
        if fmt == "pubmedqa":
            options.update(ids=ids, grade_level=grade_level)
        elif fmt == "medmcqa":
            options["cop_base"] = cop_base
        elif fmt == "mirage":
            wanted = [s.strip() for entry in subset or [] for s in entry.split(",") if s.strip()]
            options["subsets"] = wanted or None
        elif fmt == "hf":
            pairs = {}
            for entry in map_ or []:
                key, sep, column = entry.partition("=")
                if not sep or not key.strip() or not column.strip():
                    raise UserError(f"--map: expected KEY=COLUMN, got {entry!r}")
                pairs[key.strip()] = column.strip()
            if mapping is None and not pairs:
                raise UserError("--mapping / --map: the hf format needs a column mapping")
            options["mapping"] = load_mapping(mapping, pairs)
        labels = [s.strip() for s in rule_labels.split(",") if s.strip()]
        console = Console()
        try:
            with console.status(f"importing {src}"):
                result = import_corpus(
                    fmt,
                    src,
                    out,
                    name=name,
                    label_rule=label_rule,
                    rule_labels=labels,
                    passages_from=passages_from,
                    split=split,
                    overwrite=overwrite,
                    license_text=license_,
                    **options,
                )
        except ValueError as error:
            if type(error) is not ValueError:
                raise
            raise UserError(str(error)) from None
        for problem in result.skipped[:20]:
            typer.echo(f"warning: {problem}", err=True)
        if len(result.skipped) > 20:
            typer.echo(f"warning: ... and {len(result.skipped) - 20} more skipped", err=True)
        safety = result.safety_labels
        rule = f" (rule {safety.rule})" if safety.rule else ""
        where = (
            f"{result.passages} passages"
            if result.passages
            else (f"passages of {passages_from}" if passages_from else "no passages")
        )
        console.print(
            f"wrote {result.items} items ({where}) to {result.path} from {result.records} "
            f"records, {len(result.skipped)} skipped; safety labels: high_risk "
            f"{safety.high_risk}, unsafe {safety.unsafe}{rule}",
            soft_wrap=True,
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
