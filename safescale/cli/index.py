"""``safescale index``: build and query evidence stores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from safescale.corpora.schema import Status

if TYPE_CHECKING:
    from safescale.corpora.corpus import Corpus

__all__ = ["register"]

index_app = typer.Typer(
    no_args_is_help=True, help="Build and query FAISS evidence stores over a corpus."
)
_console = Console()
_errors = Console(stderr=True)

_GRADE_STYLES = {
    1: "bold white on green",
    2: "black on cyan",
    3: "black on yellow",
    4: "white on red",
}
_STATUS_STYLES = {
    Status.CURRENT: "bold green",
    Status.SUPERSEDED: "bold yellow",
    Status.WITHDRAWN: "bold red",
}


def register(app: typer.Typer) -> None:
    """Add the ``index`` command group to the main app."""
    app.add_typer(index_app, name="index")


def _parse_params(values: list[str] | None) -> dict[str, int]:
    params: dict[str, int] = {}
    for value in values or []:
        key, sep, number = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint="--param")
        try:
            params[key.strip().replace("-", "_")] = int(number)
        except ValueError:
            raise typer.BadParameter(
                f"{key} must be an integer, got {number!r}", param_hint="--param"
            ) from None
    return params


def _fail(message: str) -> typer.Exit:
    """A user error: ``error: ...`` lines on stderr, exit code 2."""
    for line in message.splitlines() or [message]:
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(code=2)


def _load(corpus_ref: str) -> Corpus:
    from safescale.corpora import load_corpus

    try:
        return load_corpus(corpus_ref)
    except Exception as exc:  # CorpusError lists every problem with file and line
        raise _fail(f"cannot load corpus {corpus_ref!r}:\n{exc}") from exc


IndexTypeOption = Annotated[
    str, typer.Option("--index-type", "-t", help="flat (exact), ivf, hnsw or ivfpq_disk.")
]
EmbedderOption = Annotated[
    str | None,
    typer.Option(help="Embedder: a sentence-transformers directory (default: bundled MiniLM)."),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="Index parameter KEY=VALUE (e.g. nlist=256, m=32)."),
]


@index_app.command("build")
def build(
    corpus: Annotated[str, typer.Argument(help="Bundled corpus name or corpus directory.")],
    index_type: IndexTypeOption = "flat",
    out: Annotated[
        Path | None,
        typer.Option(help="Store directory (default: the safescale cache)."),
    ] = None,
    embedder: EmbedderOption = None,
    param: ParamOption = None,
) -> None:
    """Embed a corpus and build its evidence store (cached embeddings are reused)."""
    from safescale.models.embedder import load_embedder
    from safescale.retrieval import EvidenceStore, store_dir
    from safescale.retrieval.faiss_index import INDEX_TYPES

    if index_type not in INDEX_TYPES:
        raise typer.BadParameter(f"choose one of {INDEX_TYPES}", param_hint="--index-type")
    params = _parse_params(param)
    loaded = _load(corpus)
    try:
        model = load_embedder(embedder)
        store = EvidenceStore.build(loaded, model, index_type, **params)  # type: ignore[arg-type]
        target = store.save(out if out is not None else store_dir(loaded, model, index_type))
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    stats = store.build_stats
    _console.print(
        f"[bold]{loaded.name}[/]: {len(store)} passages, index [cyan]{index_type}[/] "
        f"{store.params or ''}, d={store.dimension}, embedder {model.name}"
    )
    if stats is not None:
        _console.print(
            f"embedded {stats.embedded}, reused {stats.reused} from cache "
            f"({stats.embed_seconds:.1f}s embedding, {stats.index_seconds:.1f}s indexing)"
        )
    _console.print(f"saved to {target}")


@index_app.command("search")
def search(
    corpus: Annotated[str, typer.Argument(help="Bundled corpus name or corpus directory.")],
    query: Annotated[str, typer.Argument(help="The query text.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of hits.")] = 5,
    min_grade: Annotated[
        int | None,
        typer.Option(min=1, max=4, help="Keep grade levels <= this (1 = strongest)."),
    ] = None,
    include_superseded: Annotated[
        bool, typer.Option(help="Also return superseded passages (default: current only).")
    ] = False,
    include_withdrawn: Annotated[
        bool, typer.Option(help="Also return withdrawn passages.")
    ] = False,
    topic: Annotated[list[str] | None, typer.Option(help="Restrict to these topics.")] = None,
    rerank: Annotated[
        bool, typer.Option("--rerank", help="Grade- and recency-aware reranking.")
    ] = False,
    index_type: IndexTypeOption = "flat",
    store: Annotated[
        Path | None,
        typer.Option(help="Search this saved store instead of the cached one."),
    ] = None,
    embedder: EmbedderOption = None,
) -> None:
    """Search a corpus' evidence store (built and cached on first use)."""
    from safescale.models.embedder import load_embedder
    from safescale.retrieval import (
        CorruptIndexError,
        EvidenceStore,
        SearchFilters,
        StaleIndexError,
        open_store,
    )
    from safescale.retrieval.filters import allowed_statuses

    statuses = allowed_statuses(include_superseded, include_withdrawn)
    filters = SearchFilters(min_grade_level=min_grade, topics=topic or None)
    loaded = _load(corpus)
    try:
        model = load_embedder(embedder)
        if store is not None:
            evidence = EvidenceStore.load(store, loaded, model)
        else:
            evidence = open_store(loaded, model, index_type)  # type: ignore[arg-type]
    except (StaleIndexError, CorruptIndexError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    hits = evidence.search(
        query,
        k=k,
        filters=filters,
        rerank=rerank,
        include_superseded=include_superseded,
        include_withdrawn=include_withdrawn,
    )

    table = Table(
        title=f"{loaded.name}: {query!r}",
        caption=f"{len(hits)} of k={k} · statuses: {', '.join(sorted(s.value for s in statuses))}"
        + (f" · grade level <= {min_grade}" if min_grade else "")
        + (" · reranked" if rerank else ""),
        show_lines=True,
    )
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("passage · source", overflow="fold", ratio=2)
    table.add_column("grade", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("text", ratio=5)
    for hit in hits:
        passage = hit.passage
        level = passage.grade.level
        grade = Text(f" L{level} ", style=_GRADE_STYLES.get(level, ""))
        grade.append(f"\n{passage.grade.raw}")
        status = Text(passage.status.value, style=_STATUS_STYLES[passage.status])
        date = str(passage.source.date.year) if passage.source.date else "undated"
        text = passage.text if len(passage.text) <= 240 else passage.text[:237] + "..."
        score = f"{hit.score:.3f}" + (f"\n(cos {hit.similarity:.3f})" if rerank else "")
        table.add_row(
            str(hit.rank),
            score,
            Text(passage.id, style="bold") + Text(f"\n{passage.source.org}, {date}"),
            grade,
            status,
            text,
        )
    if not hits:
        _console.print("[yellow]no passage passes the filters[/]")
        return
    _console.print(table)
