"""Bring-your-own evidence: chunk a folder of documents into a passage corpus.

Documents (``.txt``, ``.md``, and ``.pdf`` when ``pypdf`` is importable) are read with
llama-index's ``SimpleDirectoryReader`` and chunked with its ``SentenceSplitter``
(word-counted, so no tokenizer download is needed). Each document's metadata comes from
a sidecar YAML file (``guideline.md.yaml`` or ``guideline.yaml`` next to
``guideline.md``) or from YAML front matter at the top of a ``.md``/``.txt`` file::

    ---
    org: Fleischner Society
    title: Incidental pulmonary nodules
    version: "2017"
    date: 2017-07-01
    grade: {system: ACCP, raw: 1B}
    status: current            # current / superseded / withdrawn
    supersedes: [fleischner-2005]   # other documents (by file stem)
    topic: pulmonary-nodule
    scope: incidental
    ---

A document without a grade is an error unless a default grade is given. Passage ids are
``<file stem>-<chunk number>``; a document that supersedes another makes each of its
chunks supersede every chunk of the other. The result is validated by loading it before
it is moved into place.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safescale.corpora.errors import CorpusError, Problem
from safescale.corpora.grades import UnknownGradeError, UnknownGradeSystemError, normalize_grade
from safescale.corpora.loader import load_corpus, write_corpus
from safescale.corpora.schema import (
    Grade,
    GradeSystemSpec,
    Manifest,
    Passage,
    Source,
    Status,
)

__all__ = ["IngestResult", "ingest_documents", "pdf_reader_available"]

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)---[ \t]*\n", re.DOTALL)
_META_KEYS = {
    "org",
    "title",
    "version",
    "date",
    "url",
    "grade",
    "status",
    "supersedes",
    "topic",
    "scope",
}
_ID_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class IngestResult:
    """What :func:`ingest_documents` did.

    Attributes:
        path: the corpus directory written.
        documents: documents ingested.
        passages: passages written.
        skipped: files skipped, with the reason.
    """

    path: Path
    documents: int
    passages: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def pdf_reader_available() -> bool:
    """Whether ``.pdf`` files can be read (``pypdf`` is importable)."""
    return importlib.util.find_spec("pypdf") is not None


def _pdf_reader() -> Any:
    from llama_index.core.readers.base import BaseReader
    from llama_index.core.schema import Document

    class PdfReader(BaseReader):
        """Plain-text extraction of every page with pypdf."""

        def load_data(self, file: Path, extra_info: dict | None = None, **_: Any) -> list:
            import pypdf

            reader = pypdf.PdfReader(str(file))
            text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
            return [Document(text=text, metadata=dict(extra_info or {}))]

    return PdfReader()


def _sidecar(path: Path) -> Path | None:
    for candidate in (path.with_name(path.name + ".yaml"), path.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    return None


def _split_front_matter(text: str) -> tuple[str | None, str]:
    match = _FRONT_MATTER.match(text)
    if not match:
        return None, text
    return match.group(1), text[match.end() :]


def ingest_documents(
    docs_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    default_grade: tuple[str, str] | None = None,
    default_org: str | None = None,
    default_topic: str = "general",
    chunk_size: int = 200,
    chunk_overlap: int = 20,
    overwrite: bool = False,
    license: str = "user-provided",
) -> IngestResult:
    """Chunk a folder of documents into a corpus directory.

    Args:
        docs_dir: folder of ``.txt``/``.md``/``.pdf`` documents (searched recursively).
        out_dir: corpus directory to write.
        name: corpus name (default: the folder name).
        default_grade: (system, raw label) for documents without a grade; without it a
            missing grade is an error.
        default_org: organization for documents that name none (default: file stem).
        default_topic: topic for documents that name none.
        chunk_size: words per chunk.
        chunk_overlap: words shared by consecutive chunks.
        overwrite: replace an existing corpus in ``out_dir``.
        license: license recorded in the manifest.

    Returns:
        What was written and what was skipped.

    Raises:
        CorpusError: missing or invalid metadata (each problem names the file and field),
            or no documents.
    """
    from llama_index.core import SimpleDirectoryReader
    from llama_index.core.node_parser import SentenceSplitter

    source_dir = Path(docs_dir)
    if not source_dir.is_dir():
        raise CorpusError([Problem(str(source_dir), 0, "-", "documents folder does not exist")])
    skipped: list[tuple[str, str]] = []
    files = sorted(
        p
        for p in source_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source_dir).parts)
    )
    documents = [p for p in files if p.suffix.lower() in {".txt", ".md"}]
    pdfs = [p for p in files if p.suffix.lower() == ".pdf"]
    if pdfs and not pdf_reader_available():
        skipped += [(str(p), "no PDF reader installed (pip install pypdf)") for p in pdfs]
    else:
        documents += pdfs
    documents.sort()
    if not documents:
        raise CorpusError(
            [Problem(str(source_dir), 0, "-", "no .txt, .md or .pdf documents found")]
        )

    problems: list[Problem] = []
    metadata: dict[Path, dict[str, Any]] = {}
    bodies: dict[Path, str | None] = {}
    for path in documents:
        meta, body = _read_metadata(path, problems)
        metadata[path] = meta
        bodies[path] = body

    reader = SimpleDirectoryReader(
        input_files=[str(p) for p in documents],
        file_extractor={".pdf": _pdf_reader()} if pdfs and pdf_reader_available() else None,
        raise_on_error=True,
    )
    splitter = SentenceSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, tokenizer=str.split
    )
    texts: dict[Path, list[str]] = defaultdict(list)
    for document in reader.load_data():
        path = Path(document.metadata.get("file_path", ""))
        text = bodies.get(path) if bodies.get(path) is not None else document.text
        texts[path].append(text or "")
    stems = _unique_stems(documents, source_dir)
    systems: dict[str, GradeSystemSpec] = {}
    passages: list[Passage] = []
    chunk_ids: dict[str, list[str]] = {}
    pending_supersedes: list[tuple[int, list[str], Path]] = []
    for path in documents:
        meta = metadata[path]
        stem = stems[path]
        grade = _grade(path, meta, default_grade, systems, problems)
        status, date = _status(path, meta, problems), _date(path, meta, problems)
        full_text = "\n\n".join(texts.get(path, []))
        chunks = [c.strip() for c in splitter.split_text(full_text) if c.strip()]
        if not chunks:
            problems.append(Problem(str(path), 0, "text", "document has no text"))
            continue
        if grade is None or status is None:
            continue
        ids = []
        for number, chunk in enumerate(chunks, start=1):
            pid = f"{stem}-{number:03d}"
            ids.append(pid)
            pending_supersedes.append((len(passages), _as_list(meta.get("supersedes")), path))
            passages.append(
                Passage(
                    id=pid,
                    text=chunk,
                    source=Source(
                        org=str(meta.get("org") or default_org or stem),
                        title=str(meta.get("title") or path.stem),
                        version=None if meta.get("version") is None else str(meta["version"]),
                        date=date,
                        url=meta.get("url"),
                    ),
                    grade=grade,
                    status=status,
                    topic=str(meta.get("topic") or default_topic),
                    scope=None if meta.get("scope") is None else str(meta["scope"]),
                )
            )
        chunk_ids[stem] = ids
    for index, targets, path in pending_supersedes:
        resolved: list[str] = []
        for target in targets:
            if target not in chunk_ids:
                problems.append(
                    Problem(str(path), 0, "supersedes", f"supersedes unknown document {target!r}")
                )
                continue
            resolved += chunk_ids[target]
        if resolved:
            passages[index] = passages[index].model_copy(update={"supersedes": resolved})
    if problems:
        raise CorpusError(problems)

    manifest = Manifest(
        name=name or source_dir.resolve().name,
        version="1",
        description=f"Passages ingested from {len(documents)} document(s) in {source_dir.name}.",
        license=license,
        disclaimer="User-provided evidence, chunked for retrieval research; not medical advice.",
        grade_systems=systems,
    )
    out = Path(out_dir)
    staging = out.with_name(f".{out.name}.ingest")
    write_corpus(staging, manifest, passages, overwrite=True)
    try:
        load_corpus(staging)
        write_corpus(out, manifest, passages, overwrite=overwrite)
    finally:
        for child in staging.glob("*"):
            child.unlink()
        staging.rmdir()
    return IngestResult(out, len(chunk_ids), len(passages), skipped)


def _read_metadata(path: Path, problems: list[Problem]) -> tuple[dict[str, Any], str | None]:
    meta: dict[str, Any] = {}
    body: str | None = None
    sources: list[tuple[Path, str]] = []
    sidecar = _sidecar(path)
    if sidecar is not None:
        sources.append((sidecar, sidecar.read_text(encoding="utf-8", errors="replace")))
    if path.suffix.lower() in {".md", ".txt"}:
        text = path.read_text(encoding="utf-8", errors="replace")
        front, rest = _split_front_matter(text)
        if front is not None:
            sources.append((path, front))
            body = rest
    for origin, text in sources:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 0
            problems.append(Problem(str(origin), line, "-", f"malformed YAML metadata: {error}"))
            continue
        if not isinstance(data, dict):
            problems.append(Problem(str(origin), 1, "-", "metadata must be a mapping"))
            continue
        for key in data:
            if key not in _META_KEYS:
                problems.append(
                    Problem(
                        str(origin),
                        0,
                        str(key),
                        f"unknown metadata key (known: {sorted(_META_KEYS)})",
                    )
                )
        meta.update(data)
    return meta, body


def _grade(
    path: Path,
    meta: dict[str, Any],
    default: tuple[str, str] | None,
    systems: dict[str, GradeSystemSpec],
    problems: list[Problem],
) -> Grade | None:
    grade = meta.get("grade")
    if grade is None:
        if default is None:
            problems.append(
                Problem(str(path), 0, "grade", "no grade given and no default grade set")
            )
            return None
        system, raw = default
    elif isinstance(grade, dict) and {"system", "raw"} <= set(grade):
        system, raw = str(grade["system"]), str(grade["raw"])
    else:
        problems.append(Problem(str(path), 0, "grade", "grade must be {system: ..., raw: ...}"))
        return None
    try:
        level = normalize_grade(system, raw)
    except UnknownGradeSystemError as error:
        problems.append(Problem(str(path), 0, "grade.system", str(error)))
        return None
    except UnknownGradeError as error:
        problems.append(Problem(str(path), 0, "grade.raw", str(error)))
        return None
    spec = systems.setdefault(system, GradeSystemSpec(builtin=system))
    if raw not in spec.levels:
        systems[system] = GradeSystemSpec(builtin=system, levels={**spec.levels, raw: level})
    return Grade(system=system, raw=raw, level=level)


def _status(path: Path, meta: dict[str, Any], problems: list[Problem]) -> Status | None:
    value = meta.get("status", "current")
    try:
        return Status(str(value))
    except ValueError:
        problems.append(
            Problem(str(path), 0, "status", f"status must be one of {[s.value for s in Status]}")
        )
        return None


def _date(path: Path, meta: dict[str, Any], problems: list[Problem]) -> dt.date | None:
    value = meta.get("date")
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        problems.append(Problem(str(path), 0, "date", f"not an ISO date: {value!r}"))
        return None


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _unique_stems(paths: list[Path], root: Path) -> dict[Path, str]:
    counts: dict[str, int] = defaultdict(int)
    for path in paths:
        counts[_ID_SAFE.sub("-", path.stem)] += 1
    stems = {}
    for path in paths:
        stem = _ID_SAFE.sub("-", path.stem)
        if counts[stem] > 1:
            stem = _ID_SAFE.sub("-", str(path.relative_to(root).with_suffix("")))
        stems[path] = stem
    return stems
