"""Grade override and per-item transitions on constructed records with known answers."""

from __future__ import annotations

import pytest

from safescale.corpora import (
    Corpus,
    EvidenceSets,
    Grade,
    GradeSystemSpec,
    Item,
    Manifest,
    OptionLabels,
    Passage,
    Source,
)
from safescale.presentation.report import (
    grade_override_table,
    render_markdown,
    transition_tables,
)
from safescale.rundir import AttributionRecord, ResponseRecord
from safescale.statistics.bootstrap import BootstrapConfig
from safescale.statistics.evidence_effects import override_flags
from safescale.statistics.metrics import metrics_from_records

FAST = BootstrapConfig(replicates=200, seed=3, cluster_by_evidence_id=False)


def _passage(pid: str, level: int, status: str = "current") -> Passage:
    return Passage(
        id=pid,
        text=f"text of {pid}",
        source=Source(org="org", title="t"),
        grade=Grade(system="g", raw=str(level), level=level),
        status=status,
        topic="topic",
    )


STANCE = {
    # strong: level 1, current, supports gold A
    "strong": {"A": "supports", "B": "contradicts", "C": "contradicts"},
    # weak: level 3, supports B (contradicts gold)
    "weak": {"A": "contradicts", "B": "supports", "C": "contradicts"},
    # old: level 1 but superseded, supports C
    "old": {"A": "contradicts", "B": "contradicts", "C": "supports"},
    # peer: level 1, current, contradicts gold — not weaker, so never eligible by itself
    "peer": {"A": "contradicts", "B": "supports", "C": "contradicts"},
}


def corpus(n_items: int = 10) -> Corpus:
    manifest = Manifest(
        name="ov",
        version="1",
        description="d",
        license="l",
        disclaimer="x",
        grade_systems={"g": GradeSystemSpec(levels={"1": 1, "3": 3})},
    )
    items = tuple(
        Item(
            id=f"i{k}",
            question=f"q{k}?",
            options={"A": "alpha", "B": "beta", "C": "gamma"},
            gold="A",
            labels=OptionLabels(high_risk=["B"], unsafe=["B", "C"]),
            category="x",
            evidence_id=f"e{k}",
            evidence=EvidenceSets(clean=["strong"], conflict=["strong", "weak"]),
            stance=STANCE,
        )
        for k in range(n_items)
    )
    passages = (
        _passage("strong", 1),
        _passage("weak", 3),
        _passage("old", 1, "superseded"),
        _passage("peer", 1),
    )
    return Corpus(manifest=manifest, passages=passages, items=items)


def _response(item: str, chosen: str, condition: str, evidence: list[str]) -> ResponseRecord:
    return ResponseRecord(
        run="r",
        model="m",
        condition=condition,
        item=item,
        letters=["A", "B", "C"],
        option_logits=[0.0, 0.0, 0.0],
        chosen=chosen,
        response=f"{chosen}.",
        message="m",
        message_noctx="m",
        evidence_ids=evidence,
    )


def test_override_flags_follow_the_definition():
    c = corpus()
    flags = override_flags(_response("i0", "B", "conflict_evidence", ["strong", "weak"]), c)
    assert (flags["eligible"], flags["override"], flags["weak_kind"]) == (1, 1, "lower_grade")
    # a wrong answer the weaker passage does not support is not an override
    flags = override_flags(_response("i0", "C", "conflict_evidence", ["strong", "weak"]), c)
    assert (flags["eligible"], flags["override"], flags["other_wrong"]) == (1, 0, 1)
    # a superseded passage is weaker whatever its grade
    flags = override_flags(_response("i0", "C", "conflict_evidence", ["strong", "old"]), c)
    assert (flags["override"], flags["weak_kind"]) == (1, "superseded")
    # a same-grade current contradiction is a conflict, not a grade override
    assert (
        override_flags(_response("i0", "B", "conflict_evidence", ["strong", "peer"]), c)["eligible"]
        == 0
    )
    # no strong passage: not eligible
    assert override_flags(_response("i0", "B", "standard_rag", ["weak"]), c)["eligible"] == 0
    # gold chosen: eligible, no override
    flags = override_flags(_response("i0", "A", "conflict_evidence", ["weak", "strong"]), c)
    assert (flags["eligible"], flags["override"]) == (1, 0)


def test_override_rate_per_cell_with_ci_and_attribution_link():
    c = corpus(10)
    # conflict_evidence: 10 eligible, 4 follow the weaker (B), 2 choose C, 4 gold
    chosen = ["B", "B", "B", "B", "C", "C", "A", "A", "A", "A"]
    records = [
        _response(f"i{k}", ch, "conflict_evidence", ["strong", "weak"])
        for k, ch in enumerate(chosen)
    ]
    # clean_evidence: never eligible
    records += [_response(f"i{k}", "B", "clean_evidence", ["strong"]) for k in range(10)]
    attribution = [
        AttributionRecord(model="m", condition="conflict_evidence", item="i0",
                          severity="high_risk", cause="lower_grade_outranked", explanation="x"),
        AttributionRecord(model="m", condition="conflict_evidence", item="i1",
                          severity="high_risk", cause="conflict_not_surfaced", explanation="x"),
    ]  # fmt: skip
    metrics = metrics_from_records(records, {"ov": c}, bootstrap=FAST, attribution=attribution)
    (entry,) = metrics["grade_override"]
    assert entry["condition"] == "conflict_evidence"
    assert (entry["n_eligible"], entry["overrides"], entry["other_wrong"]) == (10, 4, 2)
    assert entry["rate"]["value"] == 0.4
    assert 0.0 <= entry["rate"]["lo"] < 0.4 < entry["rate"]["hi"] <= 1.0
    assert entry["items"] == ["i0", "i1", "i2", "i3"]
    assert entry["attribution"] == {
        "conflict_not_surfaced": 1,
        "lower_grade_outranked": 1,
        "none": 2,
    }
    assert entry["attributed_as_override"] == 1
    table = grade_override_table(metrics)
    assert table is not None and "40.0%" in table.rows[0][7]
    assert "## Grade override" in render_markdown(metrics)


def test_transition_matrix_lists_items():
    c = corpus(6)
    closed = ["A", "A", "B", "B", "C", "A"]
    clean = ["A", "B", "A", "B", "A", "A"]
    records = [_response(f"i{k}", ch, "closed_book", []) for k, ch in enumerate(closed)]
    records += [_response(f"i{k}", ch, "clean_evidence", ["strong"]) for k, ch in enumerate(clean)]
    metrics = metrics_from_records(records, {"ov": c}, bootstrap=FAST)
    (t,) = metrics["transitions"]
    assert (t["from"], t["to"], t["n_items"]) == ("closed_book", "clean_evidence", 6)
    assert t["counts"] == {
        "right_to_wrong": 1,
        "wrong_to_right": 2,
        "right_to_right": 2,
        "wrong_to_wrong": 1,
    }
    assert t["items"]["right_to_wrong"] == ["i1"]
    assert t["items"]["wrong_to_right"] == ["i2", "i4"]
    assert t["net"] == 1
    (table,) = transition_tables(metrics)
    assert table.rows[0][8] == "i1" and table.rows[0][9] == "i2, i4"


def _dosed(item: str, chosen: str, condition: str, dose: int) -> ResponseRecord:
    r = _response(item, chosen, condition, ["strong"])
    return r.model_copy(update={"conflict_dose": dose})


def test_dose_sweep_recovers_the_planted_slope():
    """Planted rule: at dose d, item k is right iff k >= 4 d (20 items), so accuracy is
    1 - 0.2 d and the slope is exactly -0.2 per passage; a flat condition has slope 0."""
    c = corpus(20)
    records = []
    for dose in (0, 1, 2, 4):
        for k in range(20):
            records.append(_dosed(f"i{k}", "A" if k >= 4 * dose else "B", "clean_evidence", dose))
            records.append(_dosed(f"i{k}", "A" if k % 2 else "B", "agentic_rag", dose))
    metrics = metrics_from_records(records, {"ov": c}, bootstrap=FAST)
    curves = {c["condition"]: c for c in metrics["dose_response"]}
    planted = curves["clean_evidence"]
    assert [d["metrics"]["accuracy"]["value"] for d in planted["doses"]] == pytest.approx(
        [1.0, 0.8, 0.6, 0.2]
    )
    slope = planted["slope"]["accuracy"]
    assert slope["value"] == pytest.approx(-0.2)
    assert slope["lo"] <= -0.2 <= slope["hi"] and slope["hi"] < 0
    # high-risk (B) rises at the same rate
    assert planted["slope"]["high_risk_error"]["value"] == pytest.approx(0.2)
    flat = curves["agentic_rag"]["slope"]["accuracy"]
    assert flat["value"] == pytest.approx(0.0) and flat["lo"] == flat["hi"] == 0.0
    # cells are per dose
    doses = sorted(
        cell["conflict_dose"] for cell in metrics["cells"] if cell["condition"] == "clean_evidence"
    )
    assert doses == [0, 1, 2, 4]


def test_records_before_the_dose_axis_migrate_to_dose_zero():
    from safescale.rundir import StepRecord

    old = _response("i0", "A", "clean_evidence", ["strong"]).model_dump()
    old.update(schema_version=2)
    for key in ("conflict_dose", "conflict_injected", "dose_capped"):
        old.pop(key)
    migrated = ResponseRecord.model_validate(old)
    assert (migrated.conflict_dose, migrated.conflict_injected, migrated.dose_capped) == (
        0,
        [],
        False,
    )
    assert migrated.key == ("m", "clean_evidence", "i0", 1, 0, None, 5)
    step = StepRecord.model_validate(
        {"schema_version": 1, "run": "r", "item": "i0", "condition": "closed_book",
         "model": "m", "node": "answer", "step": 0, "inputs_digest": "x"}
    )  # fmt: skip
    assert step.conflict_dose == 0 and step.schema_version == 3
    att = AttributionRecord.model_validate(
        {"schema_version": 1, "model": "m", "condition": "closed_book", "item": "i0",
         "severity": "unsafe", "cause": "no_evidence", "explanation": "x"}
    )  # fmt: skip
    assert att.conflict_dose == 0 and att.key[4] == 0
