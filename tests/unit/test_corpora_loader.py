"""Loading and validating corpus directories: every problem named by file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safescale.corpora import (
    CorpusError,
    Problem,
    list_bundled_corpora,
    load_corpus,
    validate_corpus,
)

MANIFEST = """\
name: tiny
version: "1"
description: a hand-written test corpus
license: CC0
disclaimer: research fixture, not medical advice
grade_systems:
  ACCP:
    builtin: ACCP
  local:
    levels:
      record: 1
      hearsay: 4
categories: [management]
"""


def _passage(pid: str, **extra: object) -> dict:
    record = {
        "id": pid,
        "text": f"passage {pid} text",
        "source": {"org": "Org", "title": "Title", "date": "2017-07-01"},
        "grade": {"system": "ACCP", "raw": "1B"},
        "topic": "nodule",
    }
    record.update(extra)
    return record


def _item(iid: str, **extra: object) -> dict:
    record = {
        "id": iid,
        "question": "What should be done?",
        "options": {"A": "follow up", "B": "nothing", "C": "biopsy", "D": "defer"},
        "gold": "A",
        "labels": {"high_risk": ["B"], "unsafe": ["B"], "defer": "D"},
        "category": "management",
        "evidence_id": "cell-1",
        "task": "align",
        "evidence": {"clean": ["new"], "conflict": ["new", "old"]},
        "stance": {
            "new": {"A": "supports", "B": "contradicts"},
            "old": {"A": "contradicts", "B": "supports"},
        },
    }
    record.update(extra)
    return record


def write(
    directory: Path,
    passages: list[dict] | None = None,
    items: list[dict] | None = None,
    manifest: str = MANIFEST,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if passages is None:
        passages = [
            _passage("new", supersedes=["old"]),
            _passage("old", status="superseded", grade={"system": "local", "raw": "hearsay"}),
        ]
    if items is None:
        items = [_item("q1")]
    (directory / "corpus.yaml").write_text(manifest)
    (directory / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    (directory / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return directory


def problems_of(directory: Path) -> list[Problem]:
    with pytest.raises(CorpusError) as info:
        load_corpus(directory)
    assert validate_corpus(directory) == info.value.problems
    return info.value.problems


def test_valid_corpus_loads_with_derived_levels(tmp_path: Path) -> None:
    corpus = load_corpus(write(tmp_path / "c"))
    assert corpus.name == "tiny"
    assert corpus.passage("new").grade.level == 2  # ACCP 1B
    assert corpus.passage("old").grade.level == 4  # manifest table
    assert corpus.item("q1").labels.defer == "D"
    assert validate_corpus(tmp_path / "c") == []


def test_items_file_is_optional(tmp_path: Path) -> None:
    directory = write(tmp_path / "c")
    (directory / "items.jsonl").unlink()
    assert load_corpus(directory).items == ()


def test_error_lists_file_line_field_message(tmp_path: Path) -> None:
    directory = write(tmp_path / "c", items=[_item("q1"), _item("q2", gold="E")])
    (problem,) = problems_of(directory)
    assert problem.file.endswith("items.jsonl")
    assert (problem.line, problem.field) == (2, "gold")
    assert "'E'" in problem.message
    assert str(problem) == f"{problem.file}:2: gold: {problem.message}"


@pytest.mark.parametrize(
    ("passages", "items", "expected"),
    [
        ([_passage("new"), "{not json"], None, ("passages.jsonl", 2, "-", "malformed JSON")),
        ([_passage("new", colour="red")], [], ("passages.jsonl", 1, "colour", "Extra inputs")),
        (
            [{k: v for k, v in _passage("new").items() if k != "topic"}],
            [],
            ("passages.jsonl", 1, "topic", "Field required"),
        ),
        ([_passage("new"), _passage("new")], [], ("passages.jsonl", 2, "id", "duplicate id")),
        (
            [_passage("new", grade={"system": "ACCP", "raw": "3Z"})],
            [],
            ("passages.jsonl", 1, "grade.raw", "unknown grade label '3Z'"),
        ),
        (
            [_passage("new", grade={"system": "NICE", "raw": "1"})],
            [],
            ("passages.jsonl", 1, "grade.system", "not declared"),
        ),
        (
            [_passage("new", grade={"system": "ACCP", "raw": "1B", "level": 1})],
            [],
            ("passages.jsonl", 1, "grade.level", "disagrees"),
        ),
        ([_passage("new", text="   ")], [], ("passages.jsonl", 1, "text", "")),
        (
            [_passage("new", supersedes=["ghost"])],
            [],
            ("passages.jsonl", 1, "supersedes[0]", "unknown passage 'ghost'"),
        ),
        (
            [
                _passage("a", supersedes=["b"], status="superseded"),
                _passage("b", supersedes=["a"], status="superseded"),
            ],
            [],
            ("passages.jsonl", 1, "supersedes", "cycle: a -> b -> a"),
        ),
        (
            [_passage("new", supersedes=["old"]), _passage("old")],
            [],
            ("passages.jsonl", 2, "status", "superseded by 'new'"),
        ),
        (
            None,
            [_item("q1", evidence={"clean": ["nowhere"]})],
            ("items.jsonl", 1, "evidence.clean[0]", "unknown passage 'nowhere'"),
        ),
        (
            None,
            [_item("q1", labels={"unsafe": ["Z"]})],
            ("items.jsonl", 1, "labels", "unknown option"),
        ),
        (
            None,
            [_item("q1", stance={"new": {"Q": "supports"}})],
            ("items.jsonl", 1, "stance", "unknown option"),
        ),
        (
            None,
            [_item("q1", stance={"ghost": {"A": "supports"}})],
            ("items.jsonl", 1, "stance.ghost", "unknown passage"),
        ),
        (
            None,
            [_item("q1", options={"A": "same", "B": "Same "}, gold="A", labels={})],
            ("items.jsonl", 1, "options", "not distinct"),
        ),
        (None, [_item("q1", category="elsewhere")], ("items.jsonl", 1, "category", "not declared")),
        (None, [_item("q1", task="maybe")], ("items.jsonl", 1, "task", "")),
    ],
)
def test_each_kind_of_problem_is_reported(
    tmp_path: Path, passages: list | None, items: list | None, expected: tuple
) -> None:
    directory = write(tmp_path / "c", passages=[], items=[])
    if passages is not None:
        lines = [p if isinstance(p, str) else json.dumps(p) for p in passages]
        (directory / "passages.jsonl").write_text("\n".join(lines) + "\n")
    else:
        write(directory, items=[])
    if items is not None:
        (directory / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    problems = problems_of(directory)
    file, line, field, message = expected
    assert any(
        p.file.endswith(file) and p.line == line and p.field == field and message in p.message
        for p in problems
    ), [str(p) for p in problems]


def test_manifest_problems_point_at_yaml_lines(tmp_path: Path) -> None:
    manifest = MANIFEST.replace("builtin: ACCP", "builtin: NOPE").replace("license: CC0\n", "")
    problems = problems_of(write(tmp_path / "c", manifest=manifest))
    fields = {(p.field, p.line) for p in problems if p.file.endswith("corpus.yaml")}
    assert ("license", 1) in fields
    assert ("grade_systems.ACCP.builtin", 7) in fields


def test_malformed_yaml_and_missing_files(tmp_path: Path) -> None:
    directory = write(tmp_path / "c", manifest="name: [unclosed\n")
    (directory / "passages.jsonl").unlink()
    problems = problems_of(directory)
    assert any(p.file.endswith("corpus.yaml") and "malformed YAML" in p.message for p in problems)
    assert any(p.file.endswith("passages.jsonl") and p.line == 0 for p in problems)


def test_all_problems_are_collected_up_to_the_cap(tmp_path: Path) -> None:
    bad = [_passage(f"p{i}", grade={"system": "ACCP", "raw": "9Z"}) for i in range(30)]
    directory = write(tmp_path / "c", passages=bad, items=[])
    assert len(problems_of(directory)) == 30
    with pytest.raises(CorpusError) as info:
        load_corpus(directory, max_problems=5)
    assert len(info.value.problems) == 5 and info.value.truncated
    assert info.value.hidden == 25
    assert str(info.value).endswith("... and 25 more problem(s) not shown (cap 5)")


def test_unknown_name_lists_bundled(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="retina-rules"):
        load_corpus("no-such-corpus")


def test_bundled_corpora_load() -> None:
    # (how fast they load is a benchmark's question, not a test's)
    assert {"radiology-guidelines", "retina-rules"} <= set(list_bundled_corpora())
    for name in ("radiology-guidelines", "retina-rules"):
        corpus = load_corpus(name)
        assert corpus.items and corpus.passages


def test_content_hash_tracks_content(tmp_path: Path) -> None:
    first = load_corpus(write(tmp_path / "a"))
    same = load_corpus(write(tmp_path / "b"))
    changed = load_corpus(write(tmp_path / "c", items=[_item("q1", question="Other?")]))
    assert first.content_hash == same.content_hash
    assert first.passages_hash == changed.passages_hash
    assert first.content_hash != changed.content_hash
