"""Triage endpoints with intervals: coverage on simulated studies, the permutation and
input-only controls, and the verdicts in words.

The simulations give every response a score ``d · unsafe + u_g + e`` (``u_g`` shared by
the responses of an evidence group, ``e`` noise) read by an unsupervised detector, so the
population BA at the target-recall threshold is known in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from safescale.detection.evaluation import (
    MIN_MINORITY,
    cluster_weights,
    cross_validate,
    interval_rows,
)
from safescale.detection.registry import CONFLICT, GAP, SAFE
from safescale.detection.triage_report import CONTROL_INPUT, TriageRow, report_verdicts


def simulated_frame(
    rng: np.random.Generator,
    *,
    n_groups: int = 100,
    per_group: int = 3,
    safe_share: float = 0.3,
    d: float = 1.5,
    group_sd: float = 0.5,
) -> pd.DataFrame:
    n = n_groups * per_group
    groups = np.repeat(np.arange(n_groups), per_group)
    safe = rng.random(n) < safe_share
    labels = np.where(safe, SAFE, np.where(rng.random(n) < 0.5, GAP, CONFLICT))
    score = d * (labels != SAFE) + rng.normal(0, group_sd, n_groups)[groups] + rng.normal(0, 1, n)
    return pd.DataFrame(
        {"evidence_id": [f"g{g}" for g in groups], "label": labels, "nll_mean": score}
    )


def true_ba(d: float, group_sd: float, recall: float = 0.95) -> float:
    s = math.sqrt(1.0 + group_sd**2)
    threshold = d - norm.ppf(recall) * s  # the recall quantile of the unsafe scores
    return 0.5 * (recall + norm.cdf(threshold / s))


def test_cluster_weights_resample_whole_groups():
    W = cluster_weights(["a", "a", "b", "c", "c", "c"], replicates=50, seed=0)
    assert W.shape == (50, 6)
    assert (W[:, 0] == W[:, 1]).all() and (W[:, 3] == W[:, 5]).all()
    assert np.allclose(W[:, [0, 2, 3]].sum(1), 3)  # three groups drawn per replicate


def test_intervals_cover_the_true_ba_at_the_nominal_rate():
    """200 simulated studies, 95 % intervals: at least 90 % cover the population BA."""
    d, group_sd = 1.5, 0.5
    truth = true_ba(d, group_sd)
    covered, estimates = 0, []
    for study in range(200):
        rng = np.random.default_rng(1000 + study)
        frame = simulated_frame(rng, d=d, group_sd=group_sd)
        oof = cross_validate(frame, ["perplexity"], folds=5, repeats=2, seed=study)
        rows = interval_rows(
            oof, frame["label"].to_numpy(), frame["evidence_id"], replicates=200, seed=study
        )
        ba = rows["perplexity"].stage1.s1_ba
        estimates.append(ba.estimate)
        covered += ba.lo <= truth <= ba.hi
    assert abs(np.mean(estimates) - truth) < 0.02  # the pooled estimate is not biased
    assert covered / 200 >= 0.90, f"coverage {covered / 200:.3f} of the true BA {truth:.3f}"


def test_the_split_protocol_scores_only_its_test_split_with_intervals():
    rng = np.random.default_rng(3)
    frame = simulated_frame(rng, n_groups=150)
    oof = cross_validate(frame, ["perplexity"], protocol="split", seed=1)["perplexity"]
    assert oof.scored.shape[0] == 1
    assert 0.15 < oof.scored.mean() < 0.25  # the test fifth
    rows = interval_rows({"perplexity": oof}, frame["label"].to_numpy(), frame["evidence_id"])
    ba = rows["perplexity"].stage1.s1_ba
    assert ba.lo < ba.estimate < ba.hi and ba.hi - ba.lo > 0.05


def _ecrt_frame(rng: np.random.Generator, n_groups: int = 80) -> pd.DataFrame:
    frame = simulated_frame(rng, n_groups=n_groups, d=2.0)
    informative = frame["nll_mean"].to_numpy()
    for k in range(4):
        frame[f"ecrt.f{k}"] = informative + rng.normal(0, 1.0, len(frame))
    return frame


def test_permutation_control_lands_at_chance_and_the_real_labels_do_not():
    rng = np.random.default_rng(5)
    frame = _ecrt_frame(rng)
    labels = frame["label"].to_numpy()
    shuffled = np.random.default_rng(9).permutation(labels)
    common = {"folds": 5, "repeats": 2, "seed": 4, "n_estimators": 20}
    real = cross_validate(frame, ["ecrt"], **common)
    perm = cross_validate(frame, ["ecrt"], labels=shuffled, **common)
    ba_real = interval_rows(real, labels, frame["evidence_id"], replicates=300)["ecrt"]
    ba_perm = interval_rows(perm, shuffled, frame["evidence_id"], replicates=300)["ecrt"]
    assert ba_perm.stage1.s1_ba.lo <= 0.5 <= ba_perm.stage1.s1_ba.hi
    assert ba_real.stage1.s1_ba.lo > 0.5


def _row(name: str, result, kind: str = "detector") -> TriageRow:
    return TriageRow(
        method=name,
        kind=kind,
        status="ok",
        stage1_ci=result.stage1,
        stage2_ci=result.stage2,
        delta_ba=dict(result.delta_ba),
    )


def test_input_only_control_wins_when_the_text_gives_the_label_away():
    rng = np.random.default_rng(11)
    frame = simulated_frame(rng, n_groups=80, d=0.0)  # the internal score is pure noise
    labels = frame["label"].to_numpy()
    cue = np.where(labels == SAFE, "the record is complete", "the outside letter disagrees")
    frame["prompt_text"] = [
        f"Evidence: grading record {i}. {c}. Question: how urgent?" for i, c in enumerate(cue)
    ]
    frame["ecrt.f0"] = rng.normal(size=len(frame))
    frame["ecrt.f1"] = rng.normal(size=len(frame))
    oof = cross_validate(
        frame, ["ecrt", "perplexity", CONTROL_INPUT], folds=5, repeats=2, n_estimators=20
    )
    rows = interval_rows(
        oof, labels, frame["evidence_id"], replicates=300, references=("ecrt", CONTROL_INPUT)
    )
    assert rows[CONTROL_INPUT].stage1.s1_ba.lo > 0.8
    assert rows["ecrt"].stage1.s1_ba.lo <= 0.5 <= rows["ecrt"].stage1.s1_ba.hi
    assert rows["ecrt"].delta_ba[CONTROL_INPUT].hi < 0  # ECRT is below the text control
    table = [
        _row("ecrt", rows["ecrt"]),
        _row("perplexity", rows["perplexity"]),
        _row(CONTROL_INPUT, rows[CONTROL_INPUT], kind="control"),
    ]
    n_safe = int((labels == SAFE).sum())
    words = " ".join(report_verdicts(table, n_safe, len(labels) - n_safe, 0.95))
    assert "ECRT Stage-1 BA" in words and "at chance" in words
    assert "the input text alone gives part of the label away" in words
    assert "no detector adds anything measurable over the text it was fed" in words


def test_too_few_safe_responses_are_said_to_measure_nothing():
    rng = np.random.default_rng(2)
    frame = simulated_frame(rng, n_groups=40, safe_share=0.05)
    labels = frame["label"].to_numpy()
    n_safe = int((labels == SAFE).sum())
    assert n_safe < MIN_MINORITY
    oof = cross_validate(frame, ["perplexity"], folds=5, repeats=1)
    rows = interval_rows(oof, labels, frame["evidence_id"], replicates=200)
    words = report_verdicts([_row("perplexity", rows["perplexity"])], n_safe, 120 - n_safe, 0.95)
    assert words[0].startswith(f"Only {n_safe} safe responses were scored")
    assert "specificity cannot be measured" in words[0]


@pytest.mark.parametrize("protocol", ["cv", "split"])
def test_no_evidence_group_is_scored_by_a_detector_trained_on_it(protocol):
    from safescale.detection.evaluation import evaluation_splits

    rng = np.random.default_rng(0)
    frame = simulated_frame(rng, n_groups=60)
    groups = frame["evidence_id"].to_numpy()
    for folds in evaluation_splits(frame, protocol, 5, 3, 7, (0.6, 0.2, 0.2)):
        tested = np.zeros(len(frame), dtype=int)
        for train, val, test in folds:
            assert not set(groups[train]) & set(groups[test])
            assert not set(groups[val]) & set(groups[test])
            assert not set(groups[train]) & set(groups[val])
            tested[test] += 1
        if protocol == "cv":
            assert (tested == 1).all()  # every response tested exactly once per repeat


# ------------------------------------------------------------------------------ power


def test_triage_plan_matches_its_closed_form_and_inverts():
    from safescale.detection.power import ba_variance, minimum_detectable_ba, triage_plan

    z = norm.ppf(0.975)
    # widest interval at recall 0.95: specificity 0.5, BA 0.725
    v = (0.95 * 0.05 / 0.908 + 0.25 / 0.092) / 4
    assert ba_variance(0.725, 0.092, 0.95) == pytest.approx(v)
    plan = triage_plan(safe_share=0.092, half_width=0.05)
    assert plan.responses == math.ceil(z**2 * v / 0.05**2) == 1064
    clustered = triage_plan(safe_share=0.092, half_width=0.05, cluster_size=3, icc=0.5)
    assert clustered.design_effect == 2.0 and clustered.responses_clustered == 2128
    n = triage_plan(safe_share=0.2, ba1=0.65).responses
    mde = minimum_detectable_ba(n, safe_share=0.2)
    assert abs(mde - 0.15) < 0.005 and minimum_detectable_ba(n // 2, safe_share=0.2) > mde
    with pytest.raises(ValueError, match="exactly one goal"):
        triage_plan(safe_share=0.1)
    with pytest.raises(ValueError, match="specificity"):
        triage_plan(safe_share=0.1, ba1=0.99)  # impossible at recall 0.95


def test_a_study_of_the_planned_size_reaches_the_planned_half_width():
    """Simulated studies of the size the plan gives for ±0.08: their intervals are about
    that wide (the plan ignores the operating point's own noise, so a little wider)."""
    from safescale.detection.power import triage_plan

    d, group_sd = 1.5, 0.0
    ba = true_ba(d, group_sd)
    plan = triage_plan(safe_share=0.3, half_width=0.08, ba1=ba)
    widths = []
    for study in range(10):
        rng = np.random.default_rng(500 + study)
        groups = math.ceil(plan.responses / 3)
        frame = simulated_frame(rng, n_groups=groups, d=d, group_sd=group_sd)
        oof = cross_validate(frame, ["perplexity"], folds=5, repeats=1, seed=study)
        rows = interval_rows(oof, frame["label"].to_numpy(), frame["evidence_id"], replicates=200)
        e = rows["perplexity"].stage1.s1_ba
        widths.append((e.hi - e.lo) / 2)
    assert 0.06 < float(np.median(widths)) < 0.12


def test_plan_triage_cli_prints_responses_and_refuses_bad_numbers():
    from typer.testing import CliRunner

    from safescale.cli import app

    result = CliRunner().invoke(
        app,
        ["plan", "--triage", "--safe-share", "0.092", "--half-width", "0.05",
         "--cluster-size", "3", "--icc", "0.5"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1064 responses (2128 with design effect 2.00" in result.output
    for bad in (["--safe-share", "nan"], ["--safe-share", "0.1", "--half-width", "inf"],
                ["--safe-share", "1.5"]):  # fmt: skip
        out = CliRunner().invoke(app, ["plan", "--triage", *bad])
        assert out.exit_code == 2, out.output
