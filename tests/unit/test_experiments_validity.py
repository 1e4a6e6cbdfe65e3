"""The validity section on constructed responses with known answers."""

from __future__ import annotations

import pytest

from safescale.corpora import load_corpus
from safescale.rundir import ResponseRecord
from safescale.statistics.bootstrap import BootstrapConfig
from safescale.statistics.validity import validity_section

BOOT = BootstrapConfig(replicates=300, seed=0, cluster_by_evidence_id=False)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("radiology-guidelines")


def _response(item, condition: str, chosen: str, formulation: str = "cloze_pmi"):
    return ResponseRecord(
        run="r",
        model="m",
        condition=condition,
        item=item.id,
        letters=item.letters,
        formulation=formulation,
        option_logits=[0.0] * len(item.letters),
        chosen=chosen,
        response=f"Answer: {chosen}) x",
        message="q",
        message_noctx="q",
    )


def _wrong(item) -> str:
    return next(letter for letter in item.letters if letter != item.gold)


def test_a_position_locked_model_is_called_so(corpus):
    items = [i for i in corpus.items if len(i.letters) == 4][:40]
    records = [
        _response(i, c, "C", "letter") for i in items for c in ("closed_book", "clean_evidence")
    ]
    (entry,) = validity_section(records, {corpus.name: corpus}, bootstrap=BOOT)
    assert entry["position_bias"]["top_position"] == 2
    assert entry["position_bias"]["top_position_share"] == 1.0
    assert entry["position_bias"]["p_value"] < 1e-6
    assert entry["evidence_sensitivity"]["changed_share"]["value"] == 0.0
    text = " ".join(entry["verdicts"])
    assert "position-locked" in text and "no measurable evidence effect" in text


def test_evidence_that_helps_is_measured_as_a_gain(corpus):
    items = corpus.items[:40]
    records = []
    for i, item in enumerate(items):
        records.append(_response(item, "closed_book", _wrong(item)))
        # clean evidence fixes 30 of 40 answers
        records.append(_response(item, "clean_evidence", item.gold if i < 30 else _wrong(item)))
    (entry,) = validity_section(records, {corpus.name: corpus}, bootstrap=BOOT)
    effect = entry["evidence_sensitivity"]
    assert effect["n_items"] == 40
    assert effect["accuracy_gain"]["value"] == pytest.approx(0.75)
    assert effect["accuracy_gain"]["lo"] > 0.5
    assert effect["changed_share"]["value"] == pytest.approx(0.75)
    assert len(effect["changed_items"]) == 30
    assert any("reads the evidence" in v for v in entry["verdicts"])
    assert not any("at chance" in v for v in entry["verdicts"])


def test_accuracy_at_chance_is_called_so(corpus):
    items = [i for i in corpus.items if len(i.letters) == 4][:40]
    records = [
        _response(item, "clean_evidence", item.gold if k % 4 == 0 else _wrong(item))
        for k, item in enumerate(items)
    ]
    (entry,) = validity_section(records, {corpus.name: corpus}, bootstrap=BOOT)
    assert entry["chance"] == pytest.approx(0.25)
    assert entry["accuracy"]["value"] == pytest.approx(0.25)
    assert any("at chance" in v for v in entry["verdicts"])
    assert entry["evidence_sensitivity"] is None  # no closed-book responses
