"""The triage report: rows with intervals, counts, and verdicts in words.

:class:`TriageReport` is what ``detection/<model>__<corpus>/triage.json`` holds (the
stored :class:`~safescale.rundir.TriageReportRecord` with typed rows); its markdown
(:meth:`TriageReport.to_markdown`) is ``triage.md`` and the report's triage section.
Every figure is printed with its 95 % interval, next to the number of safe and unsafe
responses it was measured on, and the report says in words when a figure is at chance,
when two methods cannot be told apart, when the recall target was not reached, and when
too few responses of the minority class were scored to measure specificity at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from safescale.detection.calibration import METRIC_LABELS, CalibrationReport
from safescale.detection.evaluation import MIN_MINORITY, Estimate, Stage1Intervals, Stage2Intervals
from safescale.detection.metrics import Stage1Metrics, Stage2Metrics
from safescale.detection.transfer import TransferCell
from safescale.rundir import TriageReportRecord

__all__ = [
    "CONTROL_INPUT",
    "CONTROL_PERMUTED",
    "TriageReport",
    "TriageRow",
    "comparison_table",
    "report_verdicts",
    "row_verdict",
    "transfer_markdown",
]

#: Names of the two controls' rows.
CONTROL_INPUT = "input_only"
CONTROL_PERMUTED = "ecrt_permuted_labels"


class TriageRow(BaseModel):
    """One method's result (or why it could not run).

    Attributes:
        method: detector name (or a control's).
        kind: ``detector`` or ``control``.
        status: ``ok`` or ``unavailable`` (``reason`` says why).
        threshold: the frozen threshold (the mean over folds under ``cv``).
        val_recall: unsafe recall the thresholds reached on validation (mean).
        stage1 / stage2: point estimates (kept for readers of the earlier format).
        stage1_ci / stage2_ci: the same endpoints with 95 % intervals.
        delta_ba_vs_ecrt: ECRT's paired ΔBA point estimate (method − ECRT).
        delta_ba: paired ΔBA with its interval vs each reference (``ecrt``,
            ``input_only``).
        verdict: the row's verdict in words.
    """

    model_config = ConfigDict(extra="forbid")

    method: str
    kind: str = "detector"
    status: str
    reason: str | None = None
    threshold: float | None = None
    val_recall: float | None = None
    stage1: Stage1Metrics | None = None
    stage2: Stage2Metrics | None = None
    stage1_ci: Stage1Intervals | None = None
    stage2_ci: Stage2Intervals | None = None
    delta_ba_vs_ecrt: float | None = None
    delta_ba: dict[str, Estimate] = {}
    verdict: str | None = None


class TriageReport(TriageReportRecord):
    """Triage results of one backbone on one run's frozen responses."""

    rows: list[TriageRow]  # type: ignore[assignment]
    calibration: CalibrationReport | None = None  # type: ignore[assignment]
    transfer: list[TransferCell] = Field(default_factory=list)  # type: ignore[assignment]

    def row(self, method: str) -> TriageRow:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(f"no detector {method!r} in the report")

    def counts_line(self) -> str:
        """What was scored, in one sentence."""
        c = self.scored_counts or {}
        safe, unsafe = c.get("safe", 0), c.get("gap", 0) + c.get("conflict", 0)
        if self.protocol == "cv":
            how = (
                f"{self.repeats} repeat(s) of {self.folds}-fold grouped cross-validation "
                f"over {self.n_groups} evidence groups; every response tested once per repeat"
            )
        else:
            how = f"the test split of one seeded grouped split ({self.n_groups} evidence groups)"
        return (
            f"Scored: {safe + unsafe} responses — {safe} safe, {unsafe} unsafe "
            f"({c.get('gap', 0)} gap, {c.get('conflict', 0)} conflict) — {how}. Intervals: "
            f"95 % cluster bootstrap over evidence groups ({self.replicates} replicates)."
        )

    def to_markdown(self) -> str:
        """The per-backbone triage table (Stage 1 and Stage 2) with its verdicts."""
        head = (
            f"### Triage — {self.backbone}"
            + (f" — {self.corpus}" if self.corpus else "")
            + f" (labels: {self.label_source}, target recall {self.target_recall:.2f}, "
            f"protocol: {self.protocol})\n\n" + self.counts_line() + "\n\n"
        )
        table = (
            "| method | U-recall | flag rate | S1 BA | AUROC | ΔBA vs ECRT | gap recall "
            "| contra. recall | S2 BA | verdict |\n|---|---|---|---|---|---|---|---|---|---|\n"
        )
        lines = []
        for r in self.rows:
            name = r.method if r.kind == "detector" else f"{r.method} (control)"
            if r.status != "ok" or r.stage1_ci is None:
                lines.append(f"| {name} | unavailable: {r.reason} ||||||||| ")
                continue
            s1, s2 = r.stage1_ci, r.stage2_ci
            delta = r.delta_ba.get("ecrt")
            lines.append(
                f"| {name} | {s1.u_recall.text()} | {s1.flag_rate.text()} | {s1.s1_ba.text()} "
                f"| {s1.auroc.text()} | {'–' if delta is None else delta.text(signed=True)} "
                f"| {s2.gap_recall.text() if s2 else '–'} "
                f"| {s2.contradiction_recall.text() if s2 else '–'} "
                f"| {s2.s2_ba.text() if s2 else '–'} "
                f"| {'; '.join(x for x in (r.verdict, r.reason) if x)} |"
            )
        text = head + table + "\n".join(lines) + "\n"
        if self.verdicts:
            text += "\n" + "\n".join(f"- {v}" for v in self.verdicts) + "\n"
        if self.transfer:
            text += "\n" + transfer_markdown(self.transfer)
        if self.calibration is not None:
            text += calibration_markdown(self.calibration)
        return text


def calibration_markdown(c: CalibrationReport) -> str:
    """The evidence-calibrated softmax table: each metric before and after with its
    interval (when the report has them), and the paired change in words."""
    n_groups = f", {c.n_groups} evidence groups" if c.n_groups else ""
    head = (
        "\nEvidence-calibrated softmax "
        f"(n = {c.n}{n_groups}, accuracy {c.accuracy:.3f}, {c.n_bins} ECE bins"
        + (", 95 % cluster-bootstrap intervals" if c.intervals else "")
        + "):\n\n| | "
        + " | ".join(METRIC_LABELS.values())
        + " |\n|---|---|---|---|---|\n"
    )
    rows = []
    for phase in ("before", "after"):
        point = getattr(c, phase).model_dump()
        cells = []
        for m in METRIC_LABELS:
            ci = c.intervals.get(phase, {}).get(m)
            if ci and math.isfinite(ci["lo"]):
                cells.append(f"{ci['estimate']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]")
            else:
                cells.append(f"{point[m]:.3f}")
        rows.append(f"| {phase} | " + " | ".join(cells) + " |")
    text = head + "\n".join(rows) + "\n"
    verdicts = c.verdicts()
    if verdicts:
        text += "\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"
    return text


def _chance(e: Estimate) -> str:
    if not math.isfinite(e.lo):
        return "no interval"
    if e.lo > 0.5:
        return "above chance"
    if e.hi < 0.5:
        return "below chance"
    return "at chance"


def row_verdict(row: TriageRow, n_safe: int, n_unsafe: int) -> str:
    """A row's verdict: whether its Stage-1 BA is measurable and at chance."""
    if row.stage1_ci is None:
        return ""
    if min(n_safe, n_unsafe) < MIN_MINORITY:
        return f"not measurable (minority class {min(n_safe, n_unsafe)} < {MIN_MINORITY})"
    return _chance(row.stage1_ci.s1_ba)


def _best(rows: Sequence[TriageRow], exclude: set[str]) -> TriageRow | None:
    ok = [
        r
        for r in rows
        if r.stage1_ci is not None and r.kind == "detector" and r.method not in exclude
    ]
    return max(ok, key=lambda r: r.stage1_ci.s1_ba.estimate, default=None)


def report_verdicts(
    rows: Sequence[TriageRow], n_safe: int, n_unsafe: int, target_recall: float
) -> list[str]:
    """The report's sentences: minority count, ECRT vs chance, target recall, ECRT vs
    the strongest baseline, the controls, Stage 2."""
    out: list[str] = []
    if min(n_safe, n_unsafe) < MIN_MINORITY:
        minority = "safe" if n_safe <= n_unsafe else "unsafe"
        out.append(
            f"Only {min(n_safe, n_unsafe)} {minority} responses were scored: fewer than "
            f"{MIN_MINORITY}, so {'specificity' if minority == 'safe' else 'recall'} cannot "
            "be measured and no Stage-1 BA in this table says anything about the detectors."
        )
    by = {r.method: r for r in rows}
    ecrt = by.get("ecrt")
    if ecrt is not None and ecrt.stage1_ci is not None:
        s1 = ecrt.stage1_ci
        out.append(f"ECRT Stage-1 BA {s1.s1_ba.text()}: {_chance(s1.s1_ba)}.")
        rec = s1.u_recall
        if math.isfinite(rec.hi) and rec.hi < target_recall:
            out.append(f"Recall target {target_recall:.2f} not reached on test ({rec.text()}).")
        elif rec.estimate < target_recall:
            out.append(
                f"Recall {rec.text()}: below the {target_recall:.2f} target, within noise of it."
            )
        best = _best(rows, {"ecrt", "ecrt_1stage"})
        delta = best.delta_ba.get("ecrt") if best is not None else None
        if best is not None and delta is not None:
            if delta.excludes(0.0):
                side = "above" if delta.estimate < 0 else "below"
                out.append(
                    f"ECRT is {side} the strongest baseline, {best.method} "
                    f"(its ΔBA vs ECRT {delta.text(signed=True)})."
                )
            else:
                out.append(
                    f"ECRT is not distinguishable from the strongest baseline, {best.method} "
                    f"(its ΔBA vs ECRT {delta.text(signed=True)} includes 0)."
                )
        if ecrt.stage2_ci is not None:
            s2 = ecrt.stage2_ci.s2_ba
            out.append(f"ECRT Stage-2 BA (gap vs contradiction) {s2.text()}: {_chance(s2)}.")
    control = by.get(CONTROL_INPUT)
    if control is not None and control.stage1_ci is not None:
        ba = control.stage1_ci.s1_ba
        if _chance(ba) == "above chance":
            beaten = [
                r.method
                for r in rows
                if r.kind == "detector"
                and CONTROL_INPUT in r.delta_ba
                and r.delta_ba[CONTROL_INPUT].lo > 0
            ]
            out.append(
                f"Input-only control (prompt text, no model internals) BA {ba.text()}: "
                "the input text alone gives part of the label away; "
                + (
                    f"only {', '.join(beaten)} add(s) measurably over it."
                    if beaten
                    else "no detector adds anything measurable over the text it was fed."
                )
            )
        else:
            out.append(
                f"Input-only control BA {ba.text()}: {_chance(ba)} — there is no shortcut "
                "to the label in the prompt text at this size."
            )
    permuted = by.get(CONTROL_PERMUTED)
    if permuted is not None and permuted.stage1_ci is not None:
        ba = permuted.stage1_ci.s1_ba
        if _chance(ba) == "at chance":
            out.append(
                f"Label-permutation control (ECRT's whole pipeline on shuffled labels): BA "
                f"{ba.text()}, at 0.5 as it must be."
            )
        else:
            out.append(
                f"Label-permutation control BA {ba.text()} is NOT at 0.5: the pipeline "
                "leaks label information; no figure in this table can be trusted."
            )
    return out


def _cell(e: Estimate | None, signed: bool = False) -> str:
    return "–" if e is None else e.text(signed=signed)


def comparison_table(reports: Sequence[TriageReport]) -> str:
    """Method × backbone table in the form of the ECRT paper's Table 5 (Rec., F.R.,
    S1 BA and ΔBA vs ECRT per backbone, each with its 95 % interval), then Table 6
    (Stage 2) for the methods that attribute a subtype."""
    methods: list[str] = []
    for rep in reports:
        for r in rep.rows:
            if r.method not in methods:
                methods.append(r.method)
    header = "| Method | " + " | ".join(
        f"{rep.backbone}{f' ({rep.corpus})' if rep.corpus else ''} Rec. | F.R. | S1 BA | ΔBA"
        for rep in reports
    )
    lines = [header + " |", "|---|" + "---|---|---|---|" * len(reports)]
    stage2: list[str] = []
    for method in methods:
        cells, cells2 = [], []
        for rep in reports:
            try:
                r = rep.row(method)
            except KeyError:
                cells.append("– | – | – | –")
                cells2.append("– | – | –")
                continue
            if r.stage1_ci is None:
                cells.append("n/a | n/a | n/a | n/a")
                cells2.append("n/a | n/a | n/a")
                continue
            s1 = r.stage1_ci
            delta = "–" if method == "ecrt" else _cell(r.delta_ba.get("ecrt"), signed=True)
            cells.append(
                f"{s1.u_recall.text()} | {s1.flag_rate.text()} | {s1.s1_ba.text()} | {delta}"
            )
            s2 = r.stage2_ci
            cells2.append(
                "– | – | –"
                if s2 is None
                else " | ".join(
                    e.text() for e in (s2.gap_recall, s2.contradiction_recall, s2.s2_ba)
                )
            )
        control = method in (CONTROL_INPUT, CONTROL_PERMUTED)
        label = f"{method} (control)" if control else method
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if any(c != "– | – | –" and c != "n/a | n/a | n/a" for c in cells2):
            stage2.append(f"| {label} | " + " | ".join(cells2) + " |")
    text = "\n".join(lines) + "\n"
    counts = "; ".join(
        f"{rep.backbone}: {rep.counts_line()}" for rep in reports if rep.scored_counts
    )
    if counts:
        text += "\n" + counts + "\n"
    if stage2:
        head2 = "| Method | " + " | ".join(
            f"{rep.backbone} gap recall | contra. recall | S2 BA" for rep in reports
        )
        text += (
            "\nStage 2 (gap vs contradiction, over ground-truth unsafe responses):\n\n"
            + head2
            + " |\n|---|"
            + "---|---|---|" * len(reports)
            + "\n"
            + "\n".join(stage2)
            + "\n"
        )
    return text


def transfer_markdown(cells: Sequence[TransferCell]) -> str:
    """Transfer matrices (one per method): rows trained on, columns tested on, cells
    Stage-1 BA with its 95 % interval and the number of test responses (safe)."""
    out = []
    for method in dict.fromkeys(c.method for c in cells):
        mine = [c for c in cells if c.method == method]
        trains = list(dict.fromkeys(c.train for c in mine))
        tests = list(dict.fromkeys(c.test for c in mine))
        by = {(c.train, c.test): c for c in mine}
        lines = [
            f"Transfer of {method} (rows: trained on; columns: tested on; Stage-1 BA "
            "[95 % interval], n test responses (safe); the diagonal is the set's own "
            "out-of-fold estimate; off the diagonal only evidence groups the detector never "
            "saw are scored):",
            "",
            "| trained on \\ tested on | " + " | ".join(tests) + " |",
            "|---|" + "---|" * len(tests),
        ]
        for train in trains:
            cells_row = []
            for test in tests:
                c = by.get((train, test))
                if c is None:
                    cells_row.append("–")
                elif c.s1_ba is None:
                    cells_row.append(f"n/a: {c.reason}")
                else:
                    ba = c.s1_ba.text()
                    if not math.isfinite(c.s1_ba.lo):
                        ba += " (no interval: too few responses)"
                    cells_row.append(f"{ba}, n {c.n_test} ({c.n_safe})")
            lines.append(f"| {train} | " + " | ".join(cells_row) + " |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)
