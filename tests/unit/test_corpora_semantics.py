"""Semantic corpus rules: corpora that parse but would make the safety metrics wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safescale.cli import app
from safescale.corpora import (
    CorpusError,
    Problem,
    check_corpus,
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
"""


def _passage(pid: str, **extra: object) -> dict:
    record: dict = {
        "id": pid,
        "text": f"passage {pid} text",
        "source": {"org": "Org", "title": "Title", "date": "2017-07-01"},
        "grade": {"system": "ACCP", "raw": "1B"},
        "topic": "nodule",
    }
    record.update(extra)
    return record


def _item(iid: str, **extra: object) -> dict:
    record: dict = {
        "id": iid,
        "question": "What should be done?",
        "options": {"A": "follow up", "B": "nothing", "C": "biopsy", "D": "defer"},
        "gold": "A",
        "labels": {"high_risk": ["B"], "unsafe": ["B", "C"], "defer": "D"},
        "category": "management",
        "evidence_id": "cell-1",
        "task": "align",
        "evidence": {"clean": ["new"], "conflict": ["new", "old"]},
        "stance": {
            "new": {"A": "supports", "B": "contradicts", "C": "contradicts", "D": "neutral"},
            "old": {"A": "contradicts", "B": "supports", "C": "neutral", "D": "neutral"},
        },
    }
    record.update(extra)
    return record


PASSAGES = [
    _passage("new", supersedes=["old"]),
    _passage("old", status="superseded"),
]


def write(
    directory: Path,
    passages: list[dict | str] | None = None,
    items: list[dict] | None = None,
    *,
    passages_prefix: bytes = b"",
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    passages = PASSAGES if passages is None else passages
    items = [_item("q1")] if items is None else items
    (directory / "corpus.yaml").write_text(MANIFEST)
    lines = [p if isinstance(p, str) else json.dumps(p) for p in passages]
    text = "".join(line + "\n" for line in lines)
    (directory / "passages.jsonl").write_bytes(passages_prefix + text.encode("utf-8"))
    (directory / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return directory


def errors_of(directory: Path) -> list[Problem]:
    with pytest.raises(CorpusError) as info:
        load_corpus(directory)
    return info.value.problems


def test_baseline_fixture_is_valid(tmp_path: Path) -> None:
    assert validate_corpus(write(tmp_path / "c")) == []


@pytest.mark.parametrize(
    ("item", "field", "message"),
    [
        (
            _item("q1", labels={"unsafe": ["A", "B"], "defer": "D"}),
            "labels.unsafe[0]",
            "the gold option 'A' is listed as unsafe",
        ),
        (
            _item(
                "q1",
                evidence={"clean": ["new", "old"]},
                stance={"new": {"A": "supports"}, "old": {"A": "neutral"}},
            ),
            "evidence.clean[1]",
            "passage 'old' is superseded: a clean set holds current passages only",
        ),
        (
            _item(
                "q1",
                evidence={"clean": ["new"]},
                stance={"new": {"A": "contradicts", "B": "supports"}},
            ),
            "stance.new.A",
            "clean-set passage 'new' contradicts the gold option 'A'",
        ),
        (
            _item("q1", stance={"new": {"A": "supports"}}),
            "evidence.conflict[1]",
            "evidence-set passage 'old' has no stance",
        ),
        (
            _item("q1", task="gap", gold="D", labels={"unsafe": ["B"]}),
            "labels.defer",
            "a 'gap' item needs a defer option",
        ),
    ],
)
def test_each_semantic_rule_is_an_error_at_its_field(
    tmp_path: Path, item: dict, field: str, message: str
) -> None:
    (problem,) = errors_of(write(tmp_path / "c", items=[item]))
    assert problem.severity == "error"
    assert (Path(problem.file).name, problem.line, problem.field) == ("items.jsonl", 1, field)
    assert message in problem.message, str(problem)


def test_warnings_do_not_stop_loading(tmp_path: Path) -> None:
    item = _item(
        "q1",
        task="gap",
        gold="C",
        labels={"unsafe": ["B"], "defer": "D"},
        stance={"new": {"B": "contradicts"}, "old": {"A": "neutral"}},
    )
    directory = write(tmp_path / "c", items=[item])
    assert load_corpus(directory).item("q1").gold == "C"
    report = check_corpus(directory)
    assert report.ok and report.errors == []
    assert sorted(p.field for p in report.warnings) == ["labels.defer", "stance.new", "stance.old"]
    assert all(str(p).split(": ", 2)[2].startswith("warning: ") for p in report.warnings)


def test_invalid_passage_line_is_reported_once_at_its_root(tmp_path: Path) -> None:
    broken = _passage("old", status="superseded", grade={"system": "ACCP"})  # no raw
    items = [_item(f"q{i}") for i in range(1, 8)]
    problems = errors_of(write(tmp_path / "c", passages=[PASSAGES[0], broken], items=items))
    assert not any("unknown passage" in p.message for p in problems), problems
    assert all(Path(p.file).name == "passages.jsonl" and p.line == 2 for p in problems)
    (cascade,) = [p for p in problems if "cited by" in p.message]
    assert "cited by 7 item(s)" in cascade.message
    assert "line(s) 1, 2, 3, 4, 5, ..." in cascade.message


def test_malformed_json_line_is_a_cascade_root_too(tmp_path: Path) -> None:
    directory = write(tmp_path / "c", passages=[PASSAGES[0], '{"id": "old", "text": '])
    problems = errors_of(directory)
    assert [(p.line, p.field) for p in problems] == [(2, "-"), (2, "id")]
    assert "cited by 1 item(s)" in problems[1].message


def test_cap_is_said_with_the_count_of_the_rest(tmp_path: Path) -> None:
    bad = [_passage(f"p{i}", grade={"system": "ACCP", "raw": "9Z"}) for i in range(230)]
    directory = write(tmp_path / "c", passages=bad, items=[])
    report = check_corpus(directory)
    assert (len(report.errors), report.hidden_errors, report.cap) == (200, 30, 200)
    result = CliRunner().invoke(app, ["corpus", "validate", str(directory)])
    assert result.exit_code == 1
    assert "... and 30 more problem(s) not shown (cap 200)" in result.output
    assert "230 error(s)" in result.output


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    directory = write(tmp_path / "c", passages_prefix=b"\xef\xbb\xbf")
    assert load_corpus(directory).passage("new").id == "new"


@pytest.mark.parametrize("date", ["2024", "2024-03", 2024, "03/01/2024"])
def test_partial_or_foreign_dates_explain_the_format(tmp_path: Path, date: object) -> None:
    passage = _passage("new", supersedes=["old"], source={"org": "O", "title": "T", "date": date})
    (problem,) = errors_of(write(tmp_path / "c", passages=[passage, PASSAGES[1]], items=[]))
    assert (problem.line, problem.field) == (1, "source.date")
    assert "expected a date as YYYY-MM-DD" in problem.message
    assert "Datetimes" not in problem.message


def test_empty_passages_file_is_an_error(tmp_path: Path) -> None:
    directory = write(tmp_path / "c", passages=[], items=[])
    (problem,) = errors_of(directory)
    assert (Path(problem.file).name, problem.line) == ("passages.jsonl", 0)
    assert "no passages" in problem.message


def test_cli_validate_prints_warnings_and_exits_zero(tmp_path: Path) -> None:
    item = _item("q1", stance={"new": {"B": "contradicts"}, "old": {"A": "neutral"}})
    directory = write(tmp_path / "c", items=[item])
    result = CliRunner().invoke(app, ["corpus", "validate", str(directory)])
    assert result.exit_code == 0, result.output
    assert "items.jsonl:1: stance.new: warning: stance of evidence-set passage" in result.output
    assert "(1 warning(s))" in result.output
