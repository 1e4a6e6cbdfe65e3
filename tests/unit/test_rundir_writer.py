"""The run directory's writers, read back through its one reader: committing an item,
repairing a torn last line and dropping the records of uncommitted items on resume."""

from __future__ import annotations

from safescale.rundir import (
    RESPONSES_FILE,
    STEPS_FILE,
    AttributionRecord,
    ResponseRecord,
    RunDir,
    StepRecord,
    append_lines,
    commit_item,
    drop_orphans,
    read_jsonl,
    repair_run_files,
)


def _records(item: str) -> tuple[list[str], str, str]:
    common = {"model": "m", "condition": "closed_book", "item": item}
    steps = [
        StepRecord(run="r", node=node, step=i, inputs_digest="d", **common).model_dump_json()
        for i, node in enumerate(("retrieve", "answer"))
    ]
    attribution = AttributionRecord(
        severity="unsafe", cause="no_evidence", explanation="x", **common
    ).model_dump_json()
    response = ResponseRecord(
        run="r",
        letters=["A", "B"],
        option_logits=[0.0, -1.0],
        chosen="A",
        response="A",
        message="q",
        message_noctx="q",
        **common,
    ).model_dump_json()
    return steps, attribution, response


def test_a_committed_item_reads_back_and_a_torn_line_is_repaired(tmp_path):
    steps, attribution, response = _records("i1")
    commit_item(tmp_path, steps, attribution, response)
    with (tmp_path / RESPONSES_FILE).open("a") as handle:
        handle.write('{"run": "r", "model": "m", "cond')  # a crash mid-write
    reader = RunDir(tmp_path)
    assert read_jsonl(tmp_path / RESPONSES_FILE).truncated_line == 2
    repair_run_files(tmp_path)
    assert read_jsonl(tmp_path / RESPONSES_FILE).truncated_line is None
    steps2, _, response2 = _records("i2")
    commit_item(tmp_path, steps2, None, response2)
    assert [r.item for r in reader.responses()] == ["i1", "i2"]
    assert [(s.item, s.node) for s in reader.steps()] == [
        ("i1", "retrieve"),
        ("i1", "answer"),
        ("i2", "retrieve"),
        ("i2", "answer"),
    ]
    assert [a.item for a in reader.attribution()] == ["i1"]


def test_records_of_an_uncommitted_item_are_dropped_on_resume(tmp_path):
    steps, attribution, response = _records("done")
    commit_item(tmp_path, steps, attribution, response)
    orphan_steps, orphan_attribution, _ = _records("killed")
    append_lines(tmp_path / STEPS_FILE, orphan_steps)  # its response never landed
    append_lines(tmp_path / "attribution.jsonl", [orphan_attribution])
    reader = RunDir(tmp_path)
    drop_orphans(tmp_path, reader.response_keys(), reader.legacy_axes())
    assert {s.item for s in reader.steps()} == {"done"}
    assert {a.item for a in reader.attribution()} == {"done"}
    assert len(reader.steps()) == 2
