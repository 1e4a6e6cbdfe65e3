"""Property tests: a mutated corpus either loads or fails with located problems, cleanly."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safescale.corpora import Corpus, CorpusError, load_corpus, validate_corpus

MANIFEST = """\
name: tiny
version: "1"
description: property-test corpus
license: CC0
disclaimer: research fixture, not medical advice
grade_systems:
  ACCP: {builtin: ACCP}
  local:
    levels: {record: 1, hearsay: 4}
"""
PASSAGES = [
    {
        "id": "new",
        "text": "Solid nodule 6-8 mm: CT at 6-12 months.",
        "source": {"org": "F", "title": "T", "date": "2017-07-01"},
        "grade": {"system": "ACCP", "raw": "1B"},
        "topic": "nodule",
        "supersedes": ["old"],
    },
    {
        "id": "old",
        "text": "Nodule over 4 mm: CT at 12 months.",
        "source": {"org": "F", "title": "T"},
        "grade": {"system": "local", "raw": "hearsay"},
        "topic": "nodule",
        "status": "superseded",
    },
    {
        "id": "rec",
        "text": "Record R1.",
        "source": {"org": "R", "title": "R1"},
        "grade": {"system": "local", "raw": "record", "level": 1},
        "topic": "record",
    },
]
ITEMS = [
    {
        "id": "q1",
        "question": "7 mm solid nodule?",
        "options": {"A": "CT 6-12 mo", "B": "none", "C": "biopsy", "D": "defer"},
        "gold": "A",
        "labels": {"high_risk": ["B"], "defer": "D"},
        "category": "management",
        "evidence_id": "cell",
        "task": "align",
        "evidence": {"clean": ["new"], "conflict": ["new", "old"]},
        "stance": {"new": {"A": "supports"}, "old": {"A": "contradicts"}},
    },
    {
        "id": "q2",
        "question": "Record R1?",
        "options": {"A": "x", "B": "y"},
        "gold": "B",
        "category": "grading",
        "evidence_id": "R1",
        "evidence": {"clean": ["rec"]},
        "stance": {"rec": {"A": "contradicts", "B": "supports"}},
    },
]
FILES = {
    "corpus.yaml": MANIFEST,
    "passages.jsonl": "".join(json.dumps(p) + "\n" for p in PASSAGES),
    "items.jsonl": "".join(json.dumps(i) + "\n" for i in ITEMS),
}

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, bytes]:
    files = {name: text.encode() for name, text in FILES.items()}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(files)))
        data = files[name]
        kind = draw(
            st.sampled_from(
                [
                    "delete",
                    "insert",
                    "replace",
                    "truncate",
                    "drop-line",
                    "dup-line",
                    "field",
                    "bytes",
                ]
            )
        )
        lines = data.split(b"\n")
        if kind == "delete" and data:
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + data[at + draw(st.integers(1, 8)) :]
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            text = draw(st.text(alphabet='{}[]":,\n -#abc01\\', max_size=5)).encode()
            data = data[:at] + text + data[at:]
        elif kind == "replace" and data:
            at = draw(st.integers(0, len(data) - 1))
            data = (
                data[:at] + draw(st.sampled_from([b"x", b'"', b"}", b"9", b" "])) + data[at + 1 :]
            )
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "drop-line" and lines:
            del lines[draw(st.integers(0, len(lines) - 1))]
            data = b"\n".join(lines)
        elif kind == "dup-line" and lines:
            at = draw(st.integers(0, len(lines) - 1))
            lines.insert(at, lines[at])
            data = b"\n".join(lines)
        elif kind == "bytes":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at:]
        elif kind == "field" and name.endswith(".jsonl"):
            try:
                records = [json.loads(line) for line in lines if line.strip()]
            except ValueError:
                records = []
            targets = [r for r in records if isinstance(r, dict)]
            if targets:
                record = targets[draw(st.integers(0, len(targets) - 1))]
                key = draw(st.sampled_from([*sorted(record), "extra"]))
                if draw(st.booleans()):
                    record.pop(key, None)
                else:
                    record[key] = draw(JSON_VALUES)
                data = "".join(json.dumps(r) + "\n" for r in records).encode()
        files[name] = data
    return files


def _write(directory: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (directory / name).write_bytes(data)


def test_unmutated_corpus_loads() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), {k: v.encode() for k, v in FILES.items()})
        assert len(load_corpus(Path(tmp)).items) == 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_corpus_loads_or_fails_with_located_problems(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        _write(directory, files)
        before = {p.name: p.read_bytes() for p in directory.iterdir()}
        try:
            corpus = load_corpus(directory)
        except CorpusError as error:
            assert error.problems
            line_counts = {name: data.count(b"\n") + 1 for name, data in files.items()}
            for problem in error.problems:
                name = Path(problem.file).name
                assert name in files, problem
                assert 0 <= problem.line <= line_counts[name], problem
                assert problem.field and problem.message, problem
                assert str(problem).startswith(f"{problem.file}:{problem.line}: ")
            assert validate_corpus(directory) == error.problems
        else:
            assert isinstance(corpus, Corpus)
            assert validate_corpus(directory) == []
            # a corpus that loads is complete: every evidence id resolves
            for item in corpus.items:
                for pid in item.evidence_ids:
                    corpus.passage(pid)
        # loading never writes: the directory is untouched either way
        assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def test_failed_load_leaves_no_state_behind() -> None:
    with tempfile.TemporaryDirectory() as good, tempfile.TemporaryDirectory() as bad:
        _write(Path(good), {k: v.encode() for k, v in FILES.items()})
        reference = load_corpus(Path(good)).content_hash
        broken = {k: v.encode() for k, v in FILES.items()}
        broken["items.jsonl"] += b'{"id": "q3"}\n'
        _write(Path(bad), broken)
        for _ in range(2):
            try:
                load_corpus(Path(bad))
            except CorpusError as error:
                assert any(p.line == 3 for p in error.problems)
            else:
                raise AssertionError("broken corpus loaded")
        assert load_corpus(Path(good)).content_hash == reference
