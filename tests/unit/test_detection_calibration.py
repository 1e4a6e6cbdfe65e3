"""Evidence-calibrated softmax, calibration metrics, triage labels and grouped splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safescale.corpora.corpus import Corpus
from safescale.corpora.schema import Grade, Item, Manifest, OptionLabels, Passage, Source
from safescale.detection import (
    CONFLICT,
    GAP,
    SAFE,
    DetectionConfig,
    GradeWeights,
    brier_score,
    calibrated_softmax,
    calibration_report,
    expected_calibration_error,
    label_and_split,
    supporting_level,
    triage_class,
)
from safescale.rundir import ResponseRecord


def passage(pid: str, level: int) -> Passage:
    return Passage(
        id=pid,
        text=f"passage {pid}",
        source=Source(org="org", title="t"),
        grade=Grade(system="levels", raw=str(level), level=level),
        topic="dr",
    )


def item(i: int, task: str, evidence_id: str | None = None, stance=None) -> Item:
    return Item(
        id=f"q{i}",
        question=f"question {i}?",
        options={"A": "observe", "B": "treat now", "C": "defer"},
        gold="A",
        labels=OptionLabels(high_risk=["B"], unsafe=["C"], defer="C"),
        category="c",
        evidence_id=evidence_id or f"ev{i // 2}",
        task=task,
        stance=stance or {},
    )


def corpus(items: list[Item], passages: list[Passage] | None = None) -> Corpus:
    manifest = Manifest(
        name="toy",
        version="1",
        description="toy corpus",
        license="CC0",
        disclaimer="not clinical advice",
        grade_systems={"levels": {"levels": {"1": 1, "2": 2, "3": 3, "4": 4}}},
    )
    return Corpus(manifest=manifest, passages=tuple(passages or []), items=tuple(items))


def record(it: Item, chosen: str, logits: list[float], evidence: list[str] | None = None):
    return ResponseRecord(
        run="r",
        model="m",
        condition="clean_evidence",
        item=it.id,
        letters=["A", "B", "C"],
        option_logits=logits,
        chosen=chosen,
        response=f"Answer: {chosen}",
        message="with evidence",
        message_noctx="without",
        evidence_ids=evidence or [],
    )


def test_calibrated_softmax_scales_logits():
    z = np.array([[2.0, 0.0, -1.0]])
    plain = calibrated_softmax(z, 1.0)
    np.testing.assert_allclose(plain, np.exp(z) / np.exp(z).sum())
    sharp = calibrated_softmax(z, 1.2)
    flat = calibrated_softmax(z, 0.7)
    assert sharp[0, 0] > plain[0, 0] > flat[0, 0]
    np.testing.assert_allclose(calibrated_softmax(z, 0.0), np.full((1, 3), 1 / 3))
    rows = calibrated_softmax(np.vstack([z, z]), np.array([1.0, 0.5]))
    np.testing.assert_allclose(rows[1], calibrated_softmax(z * 0.5, 1.0)[0])


def test_ece_and_brier_known_values():
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1])
    # bin (0.9,1]: acc 0.5 vs conf 0.95 -> 0.45; bin (0.5,0.6]: acc 1 vs 0.55 -> 0.45
    assert expected_calibration_error(conf, correct, 10) == pytest.approx(0.45)
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert brier_score(probs, np.array([0, 1])) == pytest.approx((0 + 0.25 + 0.25) / 2)


def test_supporting_level_rule():
    ps = [passage("p1", 1), passage("p3", 3), passage("p2", 2)]
    it = item(0, "align", stance={"p3": {"A": "supports"}, "p1": {"A": "contradicts"}})
    c = corpus([it], ps)
    # strongest passage *supporting the chosen option* wins over a stronger contradicting one
    assert supporting_level(record(it, "A", [1, 0, 0], ["p1", "p3", "p2"]), c) == 3
    # nothing supports B: strongest passage in the prompt
    assert supporting_level(record(it, "B", [0, 1, 0], ["p3", "p2"]), c) == 2
    # closed book / unknown passages: no evidence
    assert supporting_level(record(it, "A", [1, 0, 0], []), c) is None
    assert supporting_level(record(it, "A", [1, 0, 0], ["nope"]), c) is None


def test_calibration_report_before_and_after():
    ps = [passage("p1", 1), passage("p3", 3)]
    items = [item(i, "align") for i in range(4)]
    c = corpus(items, ps)
    big = [8.0, 0.0, 0.0]  # softmax confidence ~0.9993
    recs = [
        record(items[0], "B", [0.0, 8.0, 0.0], ["p3"]),  # high-risk, weak evidence
        record(items[1], "A", big, ["p1"]),
        record(items[2], "A", big, []),
        record(items[3], "B", [0.0, 8.0, 0.0], ["p1"]),  # high-risk, strong evidence
    ]
    weights = GradeWeights()
    rep = calibration_report(recs, c, weights)
    assert rep.n == 4 and rep.accuracy == 0.5
    assert rep.level_counts == {"1": 2, "3": 1, "none": 1}
    assert rep.before.dangerous_overconfidence == pytest.approx(0.5)
    # level 3 weight 0.7: softmax(5.6) over 3 options = 0.991 > 0.95 still; level 1 sharper
    conf_after = 1 / (1 + 2 * math.exp(-8 * 0.7))
    assert conf_after > 0.95
    assert rep.after.dangerous_overconfidence == pytest.approx(0.5)
    strong = GradeWeights(levels={1: 1.2, 2: 1.0, 3: 0.3, 4: 0.2}, none=0.3)
    rep2 = calibration_report(recs, c, strong)
    assert rep2.after.dangerous_overconfidence == pytest.approx(0.25)  # only level-1 stays
    assert rep2.after.mean_confidence < rep2.before.mean_confidence
    with pytest.raises(KeyError):
        GradeWeights(levels={1: 1.0}).weight(3)


def test_triage_labels_task_and_outcome():
    gap_item = item(0, "gap")
    con_item = item(1, "conflict")
    ali_item = item(2, "align")
    assert triage_class(record(ali_item, "B", [0, 1, 0]), ali_item, "task") == SAFE
    assert triage_class(record(con_item, "A", [1, 0, 0]), con_item, "task") == CONFLICT
    assert triage_class(record(gap_item, "A", [1, 0, 0]), gap_item, "task") == GAP
    # outcome: unsafe iff the chosen option is high-risk or unsafe
    assert triage_class(record(ali_item, "A", [1, 0, 0]), ali_item, "outcome") == SAFE
    assert triage_class(record(ali_item, "B", [0, 1, 0]), ali_item, "outcome") == CONFLICT
    assert triage_class(record(gap_item, "C", [0, 0, 1]), gap_item, "outcome") == GAP
    no_task = Item(**{**ali_item.model_dump(), "task": None})
    with pytest.raises(ValueError, match="has no task"):
        triage_class(record(no_task, "A", [1, 0, 0]), no_task, "task")


def test_no_evidence_id_in_two_splits():
    tasks = ["align", "conflict", "gap"]
    items = [item(i, tasks[i % 3], evidence_id=f"ev{i // 3}") for i in range(60)]
    c = corpus(items)
    # two conditions per item: both records of an item must share the split
    recs = [record(it, "A", [1, 0, 0]) for it in items] + [
        record(it, "B", [0, 1, 0]) for it in items
    ]
    meta = label_and_split(recs, c, DetectionConfig(seed=5))
    assert set(meta["split"]) == {"train", "val", "test"}
    splits_per_group = meta.groupby("evidence_id")["split"].nunique()
    assert (splits_per_group == 1).all()
    assert (meta.groupby("item")["split"].nunique() == 1).all()
    sizes = meta["split"].value_counts(normalize=True)
    assert 0.45 < sizes["train"] < 0.75
    # every split holds every task (stratified)
    assert (meta.groupby("split")["task"].nunique() == 3).all()


def test_config_rejects_unknown_keys_and_detectors():
    with pytest.raises(ValueError, match="unknown detector"):
        DetectionConfig(detectors=("ecrt", "nope"))
    with pytest.raises(ValueError, match="target_recal"):
        DetectionConfig.model_validate({"target_recal": 0.9})


def test_calibration_intervals_bootstrap_evidence_groups():
    rng = np.random.default_rng(3)
    ps = [passage("p1", 1), passage("p3", 3)]
    items = [item(i, "align", evidence_id=f"ev{i // 4}") for i in range(80)]  # 20 groups
    c = corpus(items, ps)
    recs = []
    for it in items:
        logits = rng.normal(0, 3, size=3).tolist()
        chosen = "ABC"[int(np.argmax(logits))]
        recs.append(record(it, chosen, logits, ["p3"] if rng.random() < 0.5 else ["p1"]))
    rep = calibration_report(recs, c, replicates=400, seed=1)
    assert rep.n_groups == 20 and rep.replicates == 400
    for phase in ("before", "after"):
        point = getattr(rep, phase).model_dump()
        for m, ci in rep.intervals[phase].items():
            assert ci["estimate"] == pytest.approx(point[m])
            assert ci["lo"] <= ci["estimate"] <= ci["hi"]
        assert rep.intervals[phase]["ece"]["hi"] > rep.intervals[phase]["ece"]["lo"]
    delta = rep.change["mean_confidence"]
    assert delta["estimate"] == pytest.approx(
        rep.after.mean_confidence - rep.before.mean_confidence
    )
    # grade weights below 1 on half the responses flatten them: confidence falls
    assert delta["hi"] < 0
    assert any("mean confidence after − before" in v and "lower" in v for v in rep.verdicts())
    # unweighted replicates give the point estimate: the bootstrap reproduces ECE exactly
    from safescale.detection.calibration import row_terms, weighted_metrics

    before_p = [
        np.exp(np.asarray(r.option_logits) - np.logaddexp.reduce(r.option_logits)) for r in recs
    ]
    terms = row_terms(
        before_p,
        np.asarray(["ABC".index(r.chosen) for r in recs]),
        np.zeros(len(recs), dtype=int),
        np.asarray([r.chosen == "B" for r in recs]),
    )
    ones = weighted_metrics(terms, np.ones((1, len(recs))), rep.n_bins)
    assert ones["ece"][0] == pytest.approx(rep.before.ece)
    assert ones["brier"][0] == pytest.approx(rep.before.brier)
    none = calibration_report(recs, c, replicates=0)
    assert none.intervals == {} and none.change == {}
