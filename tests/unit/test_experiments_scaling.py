"""The scaling analysis on constructed records: slopes per doubling with cluster
bootstrap CIs, the disentanglement verdict, single-point axes, flips and concentration,
and how the report and the figure show it (all through the metrics producer)."""

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
from safescale.presentation.report import render_markdown
from safescale.presentation.scaling_report import scaling_figure, scaling_tables, scaling_verdicts
from safescale.rundir import ResponseRecord
from safescale.statistics.bootstrap import BootstrapConfig
from safescale.statistics.metrics import metrics_from_records

BOOT = BootstrapConfig(replicates=400, seed=3, cluster_by_evidence_id=True)
N_ITEMS = 40
NEUTRAL = {"p1": {"A": "neutral", "B": "neutral", "C": "neutral"}}


def _corpus(n: int = N_ITEMS) -> Corpus:
    """``n`` items in evidence groups of two: A is gold, B high-risk (and unsafe), C a
    harmless wrong answer."""
    manifest = Manifest(
        name="scal",
        version="1",
        description="d",
        license="l",
        disclaimer="x",
        grade_systems={"g": GradeSystemSpec(levels={"A": 1})},
    )
    passage = Passage(
        id="p1",
        text="text",
        source=Source(org="org", title="t"),
        grade=Grade(system="g", raw="A", level=1),
        topic="topic",
    )
    items = tuple(
        Item(
            id=f"i{i:02d}",
            question=f"question {i}?",
            options={"A": "alpha", "B": "beta", "C": "gamma"},
            gold="A",
            labels=OptionLabels(high_risk=["B"], unsafe=["B"]),
            category="x",
            evidence_id=f"e{i // 2:02d}",
            evidence=EvidenceSets(clean=["p1"]),
            stance=NEUTRAL,
        )
        for i in range(n)
    )
    return Corpus(manifest=manifest, passages=(passage,), items=items)


def _response(
    item: str,
    chosen: str,
    *,
    condition: str = "standard_rag",
    k: int = 4,
    model: str = "m",
    budget: int = 1,
    context: int | None = None,
) -> ResponseRecord:
    return ResponseRecord(
        run="r",
        model=model,
        condition=condition,
        item=item,
        samples_budget=budget,
        context_budget=context,
        retrieval_k=k,
        letters=["A", "B", "C"],
        option_logits=[0.0, 0.0, 0.0],
        chosen=chosen,
        response=f"{chosen}.",
        message="m",
        message_noctx="m",
    )


KS = (1, 2, 4, 8)


def _k_sweep(harmless: bool) -> list[ResponseRecord]:
    """Items 0-7 answer B (high-risk) at every k; item i >= 8 turns right from level
    ``(i - 8) // 8`` on, wrong before: with C (``harmless``) or with B. Accuracy then
    rises 20, 40, 60, 80 % over k = 1, 2, 4, 8 (20 pp per doubling)."""
    out = []
    for j, k in enumerate(KS):
        for i in range(N_ITEMS):
            wrong = "C" if harmless else "B"
            chosen = "B" if i < 8 else ("A" if j >= (i - 8) // 8 else wrong)
            out.append(_response(f"i{i:02d}", chosen, k=k))
    return out


def _metrics(records, **kwargs):
    return metrics_from_records(records, {"scal": _corpus()}, bootstrap=BOOT, **kwargs)


def _curves(metrics, axis):
    return [c for c in metrics["scaling"]["curves"] if c["axis"] == axis]


def test_flat_safety_and_rising_accuracy_scale_differently():
    closed = [_response(f"i{i:02d}", "C", condition="closed_book", k=1) for i in range(N_ITEMS)]
    metrics = _metrics(_k_sweep(harmless=True) + closed)
    (curve,) = _curves(metrics, "retrieval_k")
    assert curve["condition"] == "standard_rag"
    assert [p["value"] for p in curve["points"]] == ["1", "2", "4", "8"]
    assert [p["x"] for p in curve["points"]] == [0.0, 1.0, 2.0, 3.0]
    assert curve["n_items"] == N_ITEMS and curve["n_units"] == N_ITEMS // 2
    accuracy = curve["slopes"]["accuracy"]
    assert accuracy["value"] == pytest.approx(0.2)
    assert 0 < accuracy["lo"] <= 0.2 <= accuracy["hi"]
    high_risk = curve["slopes"]["high_risk_error"]
    assert high_risk["value"] == pytest.approx(0.0) and high_risk["lo"] == high_risk["hi"] == 0.0
    test = curve["differences"]["high_risk_error"]
    assert test["verdict_code"] == "differ"
    assert test["difference"]["value"] == pytest.approx(0.2)
    assert test["difference"]["lo"] > 0  # the CI excludes 0
    assert "accuracy rises +20.0 pp" in test["verdict"]
    assert "high-risk error does not change (+0.0 pp [+0.0, +0.0])" in test["verdict"]
    assert "they scale differently" in test["verdict"]
    # the same items are high-risk at every depth: 8 of 40 items hold every such error
    concentration = curve["concentration"]
    assert concentration["persistent"] == [f"i{i:02d}" for i in range(8)]
    assert concentration["n_worst_items"] == 8 and concentration["share_in_worst"] == 1.0
    assert [v["high_risk_errors"] for v in concentration["per_value"]] == [8, 8, 8, 8]
    assert curve["flips"]["safe_to_unsafe"] == []
    # each point is its cell: same estimate, same interval (the same resample)
    cell = next(c for c in metrics["cells"] if c["condition"] == "standard_rag"
                and c["retrieval_k"] == 8)  # fmt: skip
    assert curve["points"][-1]["metrics"]["accuracy"] == cell["metrics"]["accuracy"]
    # closed-book ran at k = 1 only: no slope, and the reason
    axis = next(a for a in metrics["scaling"]["axes"] if a["axis"] == "retrieval_k")
    assert axis["varied"] is True
    (note,) = axis["not_varied"]
    assert note["condition"] == "closed_book" and "one retrieval depth only (1)" in note["reason"]


def test_accuracy_and_safety_moving_together_do_not_scale_differently():
    metrics = _metrics(_k_sweep(harmless=False))
    (curve,) = _curves(metrics, "retrieval_k")
    assert curve["slopes"]["accuracy"]["value"] == pytest.approx(0.2)
    assert curve["slopes"]["high_risk_error"]["value"] == pytest.approx(-0.2)
    test = curve["differences"]["high_risk_error"]
    # every item that turns right leaves a high-risk answer: D is 0 in every replicate
    assert test["difference"]["value"] == pytest.approx(0.0)
    assert test["difference"]["lo"] == pytest.approx(0.0) == test["difference"]["hi"]
    assert test["verdict_code"] == "together"
    assert "they scale together" in test["verdict"]
    assert "scale differently" not in test["verdict"]
    assert "high-risk error falls -20.0 pp" in test["verdict"]
    # unsafe answers follow high-risk error here (B is both)
    assert curve["differences"]["unsafe_answer"]["verdict_code"] == "together"


def test_a_single_point_axis_has_no_slope_and_says_why():
    metrics = _metrics([_response(f"i{i:02d}", "A", k=4) for i in range(N_ITEMS)])
    axes = {a["axis"]: a for a in metrics["scaling"]["axes"]}
    assert axes["retrieval_k"]["varied"] is False
    assert axes["retrieval_k"]["reason"] == "the run has one retrieval depth (4): no slope"
    assert axes["model_size"]["reason"] == "the run has one model (m): no slope"
    assert metrics["scaling"]["curves"] == []
    verdicts = scaling_verdicts(metrics)
    assert "Retrieval depth: the run has one retrieval depth (4): no slope." in verdicts
    assert scaling_tables(metrics) == [] and scaling_figure(metrics) is None


def test_an_undecided_difference_reports_the_minimum_detectable_difference():
    records = []
    for j, k in enumerate((1, 8)):
        for i in range(N_ITEMS):
            # two items get better, two worse: no net change, much noise
            chosen = "A"
            if i in (0, 1):
                chosen = "C" if j == 0 else "A"
            elif i in (2, 3):
                chosen = "A" if j == 0 else "C"
            records.append(_response(f"i{i:02d}", chosen, k=k))
    (curve,) = _curves(_metrics(records), "retrieval_k")
    test = curve["differences"]["high_risk_error"]
    assert test["verdict_code"] == "indistinguishable"
    assert test["difference"]["lo"] < 0 < test["difference"]["hi"]
    assert test["mde"] > 0 and test["power"]["n"] == N_ITEMS
    assert test["power"]["n_clusters"] == N_ITEMS // 2
    assert f"not distinguishable with {N_ITEMS} items" in test["verdict"]
    assert "minimum detectable difference" in test["verdict"]
    assert "scale differently" not in test["verdict"]


def test_a_curve_over_too_few_evidence_groups_gives_no_interval_and_no_verdict():
    # 8 items in 4 groups: accuracy jumps from 0 to 100 % while nothing is high-risk
    records = [
        _response(f"i{i:02d}", "C" if k == 1 else "A", k=k) for k in (1, 8) for i in range(8)
    ]
    metrics = metrics_from_records(records, {"scal": _corpus(8)}, bootstrap=BOOT)
    (curve,) = _curves(metrics, "retrieval_k")
    assert curve["n_units"] == 4 and curve["too_few_units"] is True
    slope = curve["slopes"]["accuracy"]
    assert slope["value"] == pytest.approx(1 / 3) and slope["lo"] is None is slope["hi"]
    test = curve["differences"]["high_risk_error"]
    assert test["verdict_code"] == "too_few" and test["difference"]["lo"] is None
    assert (
        "too few to measure" in test["verdict"]
        and "8 items in 4 evidence groups" in test["verdict"]
    )
    assert "scale differently" not in test["verdict"]
    text = render_markdown(metrics)
    row = next(line for line in text.splitlines() if line.startswith("| m · scal · standard_rag"))
    assert "| +33.3 pp |" in row and "| too few to measure |" in row


def test_model_size_uses_the_recorded_parameter_counts_and_flips_are_listed():
    records = []
    for model, right in (("small", 8), ("large", 24)):
        for i in range(N_ITEMS):
            chosen = "A" if i < right else "C"
            if model == "large" and i in (30, 31):
                chosen = "B"  # safe (C) with the small model, high-risk with the large one
            records.append(_response(f"i{i:02d}", chosen, model=model))
    info = {"small": {"parameters": 100_000_000}, "large": {"parameters": 400_000_000}}
    metrics = _metrics(records, model_info=info, model_order=["small", "large"])
    (curve,) = _curves(metrics, "model_size")
    assert "model" not in curve and curve["condition"] == "standard_rag"
    assert [p["value"] for p in curve["points"]] == ["small", "large"]
    assert [p["amount"] for p in curve["points"]] == [1e8, 4e8]
    # 20 % -> 60 % accuracy over two doublings
    assert curve["slopes"]["accuracy"]["value"] == pytest.approx(0.2)
    assert curve["slopes"]["high_risk_error"]["value"] == pytest.approx(0.025)
    flips = curve["flips"]
    assert [f["item"] for f in flips["safe_to_unsafe"]] == ["i30", "i31"]
    assert flips["safe_to_unsafe"][0]["pattern"] == "SU"
    assert (flips["from"], flips["to"]) == ("small", "large")
    sentences = scaling_verdicts(metrics)
    assert any("Safe at small but unsafe at large: i30, i31." in s for s in sentences)
    # without parameter counts the axis cannot be measured, and says so
    unknown = _metrics(records)
    axis = next(a for a in unknown["scaling"]["axes"] if a["axis"] == "model_size")
    assert axis["varied"] is True and "no parameter count for small, large" in axis["reason"]
    assert _curves(unknown, "model_size") == []


def test_the_model_maximum_is_the_recorded_context_length():
    records = []
    for j, budget in enumerate((512, 1024, None)):
        for i in range(N_ITEMS):
            chosen = "A" if i < 10 * (j + 1) else "C"
            records.append(_response(f"i{i:02d}", chosen, condition="max_context",
                                     context=budget))  # fmt: skip
    metrics = _metrics(records, model_info={"m": {"context_length": 2048}})
    (curve,) = _curves(metrics, "context_budget")
    assert [(p["value"], p["amount"], p["x"]) for p in curve["points"]] == [
        ("512", 512.0, 9.0),
        ("1024", 1024.0, 10.0),
        ("max", 2048.0, 11.0),
    ]
    assert curve["slopes"]["accuracy"]["value"] == pytest.approx(0.25)
    # cells and the run section name the budgets (the maximum as None)
    assert metrics["run"]["context_budgets"] == [512, 1024, None]
    assert {c["context_budget"] for c in metrics["cells"]} == {512, 1024, None}


def test_report_and_figure_show_the_scaling_section():
    closed = [_response(f"i{i:02d}", "C", condition="closed_book", k=1) for i in range(N_ITEMS)]
    metrics = _metrics(_k_sweep(harmless=True) + closed)
    text = render_markdown(metrics)
    assert "## Scaling: do safety and accuracy scale differently?" in text
    assert "### Scaling — retrieval depth (per doubling)" in text
    row = next(line for line in text.splitlines() if line.startswith("| m · scal · standard_rag"))
    assert "| 1 / 2 / 4 / 8 | 40 | +20.0 pp [" in row and "| scale differently |" in row
    assert "closed_book ran at one retrieval depth only (1)" in text
    # the condition tables of a k sweep say which k they are
    assert "### m — scal — compute 1x — k 8" in text
    fig = scaling_figure(metrics)
    (panel,) = [ax for ax in fig.axes if ax.get_visible()]
    assert panel.get_xscale() == "log"
    assert [t.get_text() for t in panel.get_xticklabels()] == ["1", "2", "4", "8"]
    assert len(panel.lines) == 2  # accuracy and high-risk error of standard RAG


def test_a_bound_that_is_zero_up_to_rounding_does_not_exclude_zero():
    """Two items (one evidence group) turn right at k = 8, all else is fixed: every
    bootstrap replicate that misses their group has a difference of 0 (up to the
    closed-form slope's rounding). The lower bound is 0, so the verdict is not 'scale
    differently'. (Here the rounding happens to fall below 0; the rule for a bound that
    lands just above it is checked on its own in the next test.)"""
    records = [
        _response(f"i{i:02d}", "A" if (i < 2 and k == 8) else ("C" if i < 2 else "A"), k=k)
        for k in (1, 8)
        for i in range(N_ITEMS)
    ]
    (curve,) = _curves(_metrics(records), "retrieval_k")
    test = curve["differences"]["high_risk_error"]
    assert test["difference"]["value"] > 0
    assert abs(test["difference"]["lo"]) < 1e-9
    assert test["verdict_code"] == "indistinguishable"
    assert "scale differently" not in test["verdict"]


def test_the_direction_of_an_interval_ignores_rounding_noise():
    from safescale.statistics.bootstrap import Estimate
    from safescale.statistics.scaling import verdict_code

    noise = Estimate(value=0.1, lo=5.6e-15, hi=0.4, n=16, n_units=8)
    flat = Estimate(value=0.0, lo=-1.6e-15, hi=3.6e-15, n=16, n_units=8)
    clear = Estimate(value=0.1, lo=0.01, hi=0.4, n=16, n_units=8)
    assert verdict_code(noise, flat, noise) == "indistinguishable"
    assert verdict_code(clear, flat, clear) == "differ"


def test_a_difference_that_is_zero_on_every_item_says_they_move_in_step():
    """Two items go from right to high-risk as k grows: accuracy falls exactly as the
    high-risk-free rate does, item by item, so D is 0 on every replicate. The verdict says
    so instead of quoting a minimum detectable difference of 0."""
    records = [
        _response(f"i{i:02d}", "B" if (i < 2 and k == 8) else "A", k=k)
        for k in (1, 8)
        for i in range(N_ITEMS)
    ]
    metrics = _metrics(records)
    (curve,) = _curves(metrics, "retrieval_k")
    test = curve["differences"]["high_risk_error"]
    assert test["verdict_code"] == "in_step"
    assert test["mde"] is None or test["mde"] != test["mde"]  # no MDE (None or NaN)
    assert "move in step" in test["verdict"] and "minimum detectable" not in test["verdict"]
    # the unsafe-answer rate moves with it here too (B is also unsafe)
    assert curve["differences"]["unsafe_answer"]["verdict_code"] == "in_step"
    assert "in step" in str(scaling_tables(metrics))
