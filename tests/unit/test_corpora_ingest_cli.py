"""Bring-your-own ingestion and the ``safescale corpus`` commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from safescale.cli import app
from safescale.corpora import CorpusError, Status, load_corpus
from safescale.corpora.ingest import ingest_documents

FRONT = """\
---
org: Fleischner Society
title: Incidental pulmonary nodules
version: "2017"
date: 2017-07-01
grade: {system: ACCP, raw: 1B}
supersedes: [old-guideline]
topic: pulmonary-nodule
scope: incidental
---
Solid nodules 6-8 mm in high-risk patients: CT at 6-12 months, then CT at 18-24 months.
"""


def _docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fleischner.md").write_text(FRONT + " ".join(["More guideline text."] * 120))
    (docs / "old-guideline.txt").write_text("Nodules larger than 4 mm need CT at 12 months.\n")
    (docs / "old-guideline.txt.yaml").write_text(
        "org: Fleischner Society\ntitle: Old\nstatus: superseded\n"
        "grade: {system: LEVEL, raw: Level IV}\n"
    )
    return docs


def test_ingest_chunks_and_carries_metadata(tmp_path: Path) -> None:
    result = ingest_documents(_docs(tmp_path), tmp_path / "out", chunk_size=80, chunk_overlap=10)
    corpus = load_corpus(tmp_path / "out")
    assert result.documents == 2 and result.passages == len(corpus.passages)
    new = [p for p in corpus.passages if p.id.startswith("fleischner-")]
    assert len(new) >= 3  # 360+ words at 80 words per chunk
    assert new[0].text.startswith("Solid nodules 6-8 mm")  # front matter stripped
    assert new[0].grade.level == 2 and new[0].scope == "incidental"
    assert new[0].supersedes == ["old-guideline-001"]
    assert corpus.passage("old-guideline-001").status is Status.SUPERSEDED
    assert corpus.passage("old-guideline-001").grade.level == 4


def test_missing_grade_is_an_error_unless_defaulted(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.txt").write_text("Some evidence without metadata.\n")
    with pytest.raises(CorpusError) as info:
        ingest_documents(docs, tmp_path / "out")
    (problem,) = info.value.problems
    assert problem.file.endswith("note.txt") and problem.field == "grade"
    assert not (tmp_path / "out").exists()
    ingest_documents(docs, tmp_path / "out", default_grade=("GRADE", "low"))
    assert load_corpus(tmp_path / "out").passage("note-001").grade.level == 3


def test_unknown_grade_label_in_metadata_is_named(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("---\ngrade: {system: ADA, raw: Z}\n---\ntext\n")
    with pytest.raises(CorpusError, match="unknown grade label 'Z'"):
        ingest_documents(docs, tmp_path / "out")


runner = CliRunner()


def test_cli_generate_stats_and_validate(tmp_path: Path) -> None:
    out = tmp_path / "retina"
    result = runner.invoke(app, ["corpus", "generate", "retina-rules", "--n", "90", str(out)])
    assert result.exit_code == 0, result.output
    assert "items by task and category" in result.output
    assert len(load_corpus(out).items) == 90
    assert runner.invoke(app, ["corpus", "validate", str(out)]).exit_code == 0
    stats = runner.invoke(app, ["corpus", "stats", "radiology-guidelines"])
    assert stats.exit_code == 0 and "drug-interaction" in stats.output
    (out / "items.jsonl").write_text('{"id": 1}\n')
    bad = runner.invoke(app, ["corpus", "validate", str(out)])
    assert bad.exit_code == 1
    assert "items.jsonl:1: id:" in bad.output


def test_cli_ingest_reports_problems(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.txt").write_text("evidence\n")
    failed = runner.invoke(app, ["corpus", "ingest", str(docs), str(tmp_path / "out")])
    assert failed.exit_code == 1 and "no grade given" in failed.output
    ok = runner.invoke(
        app,
        [
            "corpus",
            "ingest",
            str(docs),
            str(tmp_path / "out"),
            "--default-grade-system",
            "ADA",
            "--default-grade",
            "E",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert load_corpus(tmp_path / "out").passage("note-001").grade.level == 4
