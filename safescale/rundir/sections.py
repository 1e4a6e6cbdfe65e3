"""The sections of ``metrics.json``, typed: one pydantic model per section and per row.

:class:`~safescale.rundir.records.MetricsReport` is built from these models; the
producers (:mod:`safescale.statistics.metrics` and the statistics modules it calls)
write plain dicts, which :func:`~safescale.statistics.metrics.write_metrics` validates
through them, and the readers (report, plots, scaling report, viewer) read them by
attribute.

The on-disk shape is the producers': :func:`dump_section` (``model_dump(mode="json",
by_alias=True, exclude_unset=True)``) gives back exactly the keys a row was read with,
in the producers' order (the field order below), so a file read and dumped again is
the file as written. A key the producers write only in some cases (``reason`` when a
curve cannot be measured, ``not_labeled`` on a blanked rate) is an optional field left
out of the dump when absent. Rows whose keys are open-ended (metric names, categories,
causes) are ``dict[str, ...]``; parts whose shape belongs to another layer and varies by
its version (the detection rows, the calibration record) stay plain data.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AlwaysDefer",
    "AttributionRow",
    "CalibrationCheck",
    "CategoryOutcomes",
    "Cell",
    "Comparison",
    "ComparisonPower",
    "ConcentrationCategory",
    "ConcentrationRow",
    "DistractorFlow",
    "DistractorRow",
    "DoseCurve",
    "DosePoint",
    "Estimate",
    "EvidenceSensitivity",
    "GradeOverrideRow",
    "MajorityGold",
    "MeanDifferencePower",
    "MetricsSettings",
    "PositionBias",
    "ReferenceRow",
    "References",
    "RelianceRow",
    "RunSection",
    "ScalingAxis",
    "ScalingConcentration",
    "ScalingConcentrationValue",
    "ScalingCurve",
    "ScalingDifference",
    "ScalingFlip",
    "ScalingFlips",
    "ScalingNotVaried",
    "ScalingPoint",
    "ScalingSection",
    "ScalingWorstItem",
    "Section",
    "TransitionRow",
    "ValidityAccuracy",
    "ValidityRow",
    "WorstItem",
    "dump_section",
]


class Section(BaseModel):
    """A part of ``metrics.json`` whose keys the producers fix (a typo is an error)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The part as ``metrics.json`` stores it (see :func:`dump_section`)."""
        return dump_section(self)


def dump_section(model: BaseModel) -> dict[str, Any]:
    """A section (or row) as stored: JSON types, stored key names, only the keys it was
    made with, in the producers' order."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Estimate(Section):
    """A statistic with its bootstrap percentile interval (None: undefined).

    Attributes:
        value: the statistic on the observed data.
        lo, hi: the interval bounds.
        n: records it is computed over.
        n_units: resampling units (items or evidence groups).
        not_labeled: the rate needs a safety label the corpus does not have (the value
            and bounds are then None); stored only when set.
    """

    value: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: int | None = None
    n_units: int | None = None
    not_labeled: bool = False


class _CellKey(Section):
    """The identity of a cell: model, corpus, condition and its settings."""

    model: str
    corpus: str
    condition: str
    samples_budget: int = 1
    conflict_dose: int = 0
    context_budget: int | None = None
    retrieval_k: int | None = None


class CategoryOutcomes(Section):
    """A cell's outcomes on the items of one category (rates None when blanked)."""

    n: int
    high_risk_errors: int | None = None
    high_risk_error_rate: float | None = None
    accuracy: float


class Cell(_CellKey):
    """One cell: its rates (``metrics``: metric name -> estimate), raw counts, mean
    confidence, accuracy per task and outcomes per item category."""

    n: int
    n_units: int
    metrics: dict[str, Estimate]
    counts: dict[str, int | float | None] = Field(default_factory=dict)
    mean_confidence: float | None = None
    by_task: dict[str, Estimate] = Field(default_factory=dict)
    by_category: dict[str, CategoryOutcomes] = Field(default_factory=dict)


class ComparisonPower(Section):
    """The power of a paired difference for one metric (see
    :func:`safescale.statistics.power.comparison_power`)."""

    n: int
    discordance: float | None = None
    observed: float | None = None
    mde: float | None = None
    n_clusters: int | None = None
    icc: float | None = None
    design_effect: float | None = None
    mde_clustered: float | None = None
    detectable: bool = False
    too_few_items: bool = False
    alpha: float | None = None
    power: float | None = None


class Comparison(Section):
    """A paired difference ``a − b`` along one dimension (``kind``: ``condition``,
    ``samples_budget`` or ``model``); the other identity fields are the fixed ones (the
    compared one is absent)."""

    kind: str
    model: str | None = None
    corpus: str | None = None
    condition: str | None = None
    samples_budget: int | None = None
    conflict_dose: int | None = None
    context_budget: int | None = None
    retrieval_k: int | None = None
    a: str | int
    b: str | int
    n_items: int
    deltas: dict[str, Estimate]
    power: dict[str, ComparisonPower | None] = Field(default_factory=dict)


class WorstItem(Section):
    """An item among the worst of a corpus, with its high-risk error count."""

    item: str
    category: str
    high_risk_errors: int


class ConcentrationCategory(Section):
    """High-risk errors of one item category."""

    category: str
    n_items: int
    n_responses: int
    high_risk_errors: int
    share_of_high_risk_errors: float | None = None
    high_risk_error_rate: float


class ConcentrationRow(Section):
    """Worst-case concentration of one corpus's high-risk errors."""

    corpus: str
    worst_fraction: float
    n_items: int
    n_worst_items: int
    high_risk_errors: int
    high_risk_errors_in_worst: int = 0
    share_in_worst: float | None = None
    worst_items: list[WorstItem] = Field(default_factory=list)
    by_category: list[ConcentrationCategory] = Field(default_factory=list)


class AttributionRow(_CellKey):
    """Failure attributions of one cell, severity and cause."""

    severity: str
    cause: str
    count: int
    distractor_passages: int = 0


class GradeOverrideRow(_CellKey):
    """The grade-override rate of one cell with eligible responses."""

    n_eligible: int
    overrides: int
    other_wrong: int = 0
    rate: Estimate
    by_kind: dict[str, int] = Field(default_factory=dict)
    attribution: dict[str, int] = Field(default_factory=dict)
    attributed_as_override: int = 0
    items: list[str] = Field(default_factory=list)


class TransitionRow(Section):
    """Per-item transitions (right/wrong) from one condition to another."""

    model: str
    corpus: str
    samples_budget: int = 1
    conflict_dose: int = 0
    context_budget: int | None = None
    retrieval_k: int | None = None
    from_: str = Field(alias="from")
    to: str
    n_items: int
    counts: dict[str, int]
    net: int
    items: dict[str, list[str]]


class DistractorFlow(Section):
    """Answers that moved from one option text to another with the gold present."""

    from_: str = Field(alias="from")
    to: str
    n: int
    items: list[str]


class DistractorRow(Section):
    """Clean evidence -> a retrieval condition, over the items whose gold passages were
    retrieved too."""

    model: str
    corpus: str
    samples_budget: int = 1
    conflict_dose: int = 0
    context_budget: int | None = None
    retrieval_k: int | None = None
    condition: str
    n_items: int
    n_gold_present: int
    n_changed: int
    counts: dict[str, int]
    items: dict[str, list[str]]
    flows: list[DistractorFlow] = Field(default_factory=list)
    attributed: dict[str, int] = Field(default_factory=dict)


class DosePoint(Section):
    """One conflict dose of a dose-response curve."""

    dose: int
    n: int
    mean_injected: float
    capped: int
    metrics: dict[str, Estimate]


class DoseCurve(Section):
    """The conflict dose-response of one model x corpus x condition x setting."""

    model: str
    corpus: str
    condition: str
    samples_budget: int = 1
    context_budget: int | None = None
    retrieval_k: int | None = None
    n_items_all_doses: int
    doses: list[DosePoint]
    slope: dict[str, Estimate] = Field(default_factory=dict)


class RelianceRow(_CellKey):
    """Causal reliance on the evidence of one cell (the estimates are present when
    something was measured; ``depends_on_cited`` / ``_weaker`` are None when no
    measured answer had such a passage)."""

    n_measured: int
    n_mismatch: int = 0
    n_skipped: int = 0
    skip_reasons: dict[str, int] = Field(default_factory=dict)
    n_with_cited: int = 0
    n_with_weaker: int = 0
    depends_on_evidence: Estimate | None = None
    mean_evidence_kl: Estimate | None = None
    depends_on_cited: Estimate | None = None
    depends_on_weaker: Estimate | None = None
    verdict: str = ""


class ValidityAccuracy(Section):
    """The study's accuracy a validity check uses (an :class:`Estimate`), and what it
    is measured on (``basis``: clean evidence, or all conditions without it)."""

    basis: str
    value: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: int | None = None
    n_units: int | None = None


class PositionBias(Section):
    """How the answers spread over the option positions, against uniform."""

    counts: list[int]
    top_position: int
    top_position_share: float
    chi_square: float | None = None
    p_value: float | None = None


class EvidenceSensitivity(Section):
    """Clean evidence against closed-book over the items both answered."""

    n_items: int
    changed_share: Estimate
    accuracy_gain: Estimate
    changed_items: list[str] = Field(default_factory=list)


class ReferenceRow(Section):
    """One condition's accuracy against a constant answer, paired over its items."""

    condition: str
    n: int
    accuracy: Estimate
    difference: Estimate
    verdict: str
    same_as_constant: int | None = None


class MajorityGold(Section):
    """The constant answer that scores most (by option text or by position)."""

    by: str
    answer: str
    hits: int
    n_items: int
    estimate: Estimate


class AlwaysDefer(Section):
    """Always choosing the defer option, on the gap items."""

    n_items: int
    estimate: Estimate
    conditions: list[ReferenceRow] = Field(default_factory=list)


class References(Section):
    """What trivial answers score: chance, the majority gold, always deferring."""

    chance: float
    majority_gold: MajorityGold
    conditions: list[ReferenceRow] = Field(default_factory=list)
    always_defer: AlwaysDefer | None = None


class CalibrationCheck(Section):
    """The chosen formulation's calibration accuracy beside the study's (``outside``:
    the study estimate lies ``below`` / ``above`` the calibration interval). The
    calibration estimate and cross-fit figures are the calibration record's (plain
    data)."""

    formulation: str
    calibration: dict[str, Any]
    study: ValidityAccuracy
    outside: str | None = None
    cross_fit: dict[str, Any] | None = None
    confidence: str | None = None
    summary: str | None = None


class ValidityRow(Section):
    """The validity checks of one model x corpus (see
    :mod:`safescale.statistics.validity`); the answer-calibration record (the
    manifest's, with its candidates) is plain data."""

    model: str
    corpus: str
    safety_labels: dict[str, Any] = Field(default_factory=dict)
    formulation: str
    n_responses: int
    chance: float
    accuracy: ValidityAccuracy
    position_bias: PositionBias
    evidence_sensitivity: EvidenceSensitivity | None = None
    references: References | None = None
    calibration: dict[str, Any] | None = None
    calibration_check: CalibrationCheck | None = None
    verdicts: list[str] = Field(default_factory=list)


class ScalingNotVaried(Section):
    """A condition an axis did not vary for."""

    condition: str
    values: list[str]
    reason: str


class ScalingAxis(Section):
    """One scale axis: its values, whether the run varies it and, when it cannot be
    measured, why."""

    axis: str
    name: str
    scale: str
    values: list[str]
    varied: bool
    reason: str | None = None
    amounts: dict[str, float] | None = None
    not_varied: list[ScalingNotVaried] = Field(default_factory=list)


class ScalingPoint(Section):
    """One value of a scaling curve with the rates there."""

    value: str
    amount: float
    x: float
    n: int
    metrics: dict[str, Estimate]


class MeanDifferencePower(Section):
    """The minimum detectable mean of per-item differences (see
    :func:`safescale.statistics.power.mean_difference_power`)."""

    n: int
    n_clusters: int
    sd: float | None = None
    icc: float | None = None
    design_effect: float | None = None
    mde: float | None = None
    mde_clustered: float | None = None
    alpha: float
    power: float


class ScalingDifference(Section):
    """Whether a safety rate and accuracy move differently along a curve."""

    difference: Estimate
    mde: float | None = None
    power: MeanDifferencePower
    verdict_code: str
    verdict: str


class ScalingFlip(Section):
    """An item whose safety changes between the curve's ends (``pattern``: S/U per
    value)."""

    item: str
    pattern: str


class ScalingFlips(Section):
    """Items safe at the smallest value and unsafe at the largest, and the reverse."""

    from_: str = Field(alias="from")
    to: str
    levels: list[str]
    safe_to_unsafe: list[ScalingFlip] = Field(default_factory=list)
    unsafe_to_safe: list[ScalingFlip] = Field(default_factory=list)
    n_items: int


class ScalingWorstItem(Section):
    """An item among a curve's worst, with its high-risk errors summed over values."""

    item: str
    high_risk_errors: int


class ScalingConcentrationValue(Section):
    """A curve's high-risk errors at one value and how many fall on its worst items."""

    value: str
    high_risk_errors: int
    on_worst_items: int
    share_on_worst: float | None = None


class ScalingConcentration(Section):
    """High-risk errors of a curve on its worst items, overall and per value."""

    worst_fraction: float
    n_items: int
    n_worst_items: int
    high_risk_errors: int
    share_in_worst: float | None = None
    worst_items: list[ScalingWorstItem] = Field(default_factory=list)
    per_value: list[ScalingConcentrationValue] = Field(default_factory=list)
    persistent: list[str] = Field(default_factory=list)


class ScalingCurve(Section):
    """Cells differing only in one axis: points, slopes, safety-vs-accuracy
    differences, flips and concentration (``reason`` instead when it cannot be
    measured). The identity fields are the settings held fixed (the axis's own column
    is absent: ``model`` on the model-size axis)."""

    axis: str
    axis_name: str
    model: str | None = None
    corpus: str
    condition: str
    samples_budget: int | None = None
    conflict_dose: int | None = None
    context_budget: int | None = None
    retrieval_k: int | None = None
    fixed: str = ""
    per: str = ""
    points: list[ScalingPoint] = Field(default_factory=list)
    slopes: dict[str, Estimate] = Field(default_factory=dict)
    differences: dict[str, ScalingDifference] = Field(default_factory=dict)
    n_items: int = 0
    reason: str | None = None
    n_units: int | None = None
    too_few_units: bool = False
    flips: ScalingFlips | None = None
    concentration: ScalingConcentration | None = None


class ScalingSection(Section):
    """The scaling analysis (see :mod:`safescale.statistics.scaling`); empty in a file
    written before it."""

    unit: str | None = None
    axes: list[ScalingAxis] = Field(default_factory=list)
    curves: list[ScalingCurve] = Field(default_factory=list)


class RunSection(Section):
    """What the metrics cover: the run's name, directory and notes, and the values of
    every cell axis present."""

    dir: str | None = None
    name: str | None = None
    notes: Any = None
    n_responses: int = 0
    models: list[str] = Field(default_factory=list)
    corpora: list[str] = Field(default_factory=list)
    conditions: list[str] = Field(default_factory=list)
    samples_budgets: list[int] = Field(default_factory=list)
    conflict_doses: list[int] = Field(default_factory=list)
    context_budgets: list[int | None] = Field(default_factory=list)
    retrieval_ks: list[int] = Field(default_factory=list)
    resampling_unit: str = "item"


class MetricsSettings(Section):
    """The settings the metrics were computed with: the run config's ``bootstrap`` and
    ``metrics`` sections as resolved (plain data: their models live with the
    experiments)."""

    bootstrap: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
