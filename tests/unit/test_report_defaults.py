"""Without a model: the default comparisons are per run (external conditions too) and
keep the config hash of older runs; a calibration record made before calibration
intervals still gets one (Wilson) and a study estimate outside it is flagged."""

from __future__ import annotations

import pytest
import yaml

from safescale.experiments.config import parse_config
from safescale.statistics.metrics import (
    LEGACY_DEFAULT_COMPARISONS,
    MetricsConfig,
    default_comparisons,
    run_settings,
)
from safescale.statistics.validity import calibration_check

BASE = "name: x\nmodels: [smollm2-135m-instruct]\ncorpora: [radiology-guidelines]\n"


def test_every_condition_is_compared_with_closed_book_and_clean_with_each_retrieval():
    six = default_comparisons(
        ["max_context", "agentic_rag", "standard_rag", "conflict_evidence", "clean_evidence",
         "closed_book"]
    )  # fmt: skip
    assert six[:5] == tuple(
        (c, "closed_book")
        for c in ("clean_evidence", "conflict_evidence", "standard_rag", "agentic_rag",
                  "max_context")
    )  # fmt: skip
    assert {("clean_evidence", c) for c in ("standard_rag", "agentic_rag", "max_context")} <= set(
        six
    )
    assert ("conflict_evidence", "clean_evidence") in six
    assert len(set(six)) == len(six)
    # external conditions count as retrieval conditions
    mine = default_comparisons(["closed_book", "clean_evidence", "hyde"])
    assert mine == (
        ("clean_evidence", "closed_book"),
        ("hyde", "closed_book"),
        ("clean_evidence", "hyde"),
    )
    assert default_comparisons(["standard_rag"]) == ()


def test_unset_comparisons_hash_like_the_old_default_list():
    unset = parse_config(BASE)
    assert unset.metrics.comparisons is None
    legacy = "metrics:\n  comparisons:\n" + "".join(
        f"    - [{a}, {b}]\n" for a, b in LEGACY_DEFAULT_COMPARISONS
    )
    explicit = parse_config(BASE + legacy)
    assert explicit.metrics.comparisons == LEGACY_DEFAULT_COMPARISONS
    assert unset.config_hash() == explicit.config_hash()
    other = parse_config(BASE + "metrics:\n  comparisons: [[clean_evidence, closed_book]]\n")
    assert other.config_hash() != unset.config_hash()


def test_a_run_that_recorded_the_old_default_list_reads_as_unset(tmp_path):
    legacy = [list(p) for p in LEGACY_DEFAULT_COMPARISONS]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"metrics": {"comparisons": legacy}}))
    assert run_settings(tmp_path)[1] == MetricsConfig()
    mine = [["clean_evidence", "closed_book"]]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"metrics": {"comparisons": mine}}))
    assert run_settings(tmp_path)[1].comparisons == (("clean_evidence", "closed_book"),)


@pytest.mark.parametrize(("study", "outside"), [(0.533, "below"), (0.75, None), (0.99, "above")])
def test_a_study_estimate_outside_the_calibration_interval_is_flagged(study, outside):
    # the record shape of a manifest written before calibration intervals
    record = {
        "chosen": "letter_pride",
        "candidates": {"letter_pride": {"accuracy_clean_evidence": 13 / 16, "n": 16}},
    }
    estimate = {"basis": "clean_evidence", "value": study, "lo": None, "hi": None, "n": 60}
    check = calibration_check(record, "letter_pride", estimate)
    cal = check["calibration"]
    # Wilson 95 % interval of 13/16
    assert cal["value"] == pytest.approx(0.8125)
    assert cal["lo"] == pytest.approx(0.570, abs=1e-3)
    assert cal["hi"] == pytest.approx(0.934, abs=1e-3)
    assert check["outside"] == outside
    assert calibration_check(record, "cloze_pmi", estimate) is None  # not what was used
