"""Reports of a run: condition tables (the SaFE-Scale results-table shape), paired
differences, per-task accuracy, worst-case concentration, failure attribution and the
triage table — as rich tables, ``report.md``, CSV files and plots.

Everything is rendered from the ``metrics.json`` structure
(:func:`safescale.statistics.metrics.compute_metrics`), so :func:`write_report`
regenerates the whole report from a run directory without any language model.

Files written into the run directory:

* ``metrics.json`` — the full metrics structure;
* ``report.md`` — every table below plus links to the plots;
* ``conditions.csv`` — one row per cell (model, corpus, samples_budget, conflict_dose,
  context_budget, retrieval_k, condition) with each metric's value and CI bounds
  (``<metric>``, ``<metric>_lo``, ``<metric>_hi``; rates as fractions);
* ``comparisons.csv`` — one row per paired difference and metric;
* ``triage.csv`` — one row per backbone × detector (when detection results exist);
* the scaling section (:mod:`safescale.presentation.scaling_report`);
* ``plots/*.png`` — see :mod:`safescale.presentation.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from safescale.rundir import (
    METRICS_FILE,
    CalibrationCheck,
    Estimate,
    MetricsReport,
    TriageReportRecord,
    atomic_write_text,
    context_budget_label,
    output_dir,
)
from safescale.statistics.bootstrap import BootstrapConfig
from safescale.statistics.metrics import (
    METRICS,
    RATE_METRICS,
    MetricsConfig,
    write_metrics,
)

__all__ = [
    "CONDITION_COLUMNS",
    "CONDITION_LABELS",
    "TRIAGE_COLUMNS",
    "ReportFiles",
    "TextTable",
    "comparisons_frame",
    "condition_tables",
    "conditions_frame",
    "distractor_table",
    "dose_response_tables",
    "format_interval",
    "grade_override_table",
    "reference_tables",
    "reliance_table",
    "render_markdown",
    "rich_table",
    "transition_tables",
    "triage_frame",
    "triage_tables",
    "write_report",
]

CONDITION_COLUMNS = (
    "Condition",
    "n",
    "Accuracy",
    "High-risk error",
    "Unsafe",
    "Contradiction",
    "Dangerous overconf.",
    "Latency (ms/response)",
    "ms/generated token",
)
TRIAGE_COLUMNS = (
    "Method",
    "U-recall",
    "Flag rate",
    "S1 BA",
    "AUROC",
    "ΔBA vs ECRT",
    "Gap recall",
    "Contra. recall",
    "S2 BA",
    "Verdict",
)
CONDITION_LABELS = {
    "closed_book": "Closed-book",
    "clean_evidence": "Clean evidence",
    "conflict_evidence": "Conflict evidence",
    "standard_rag": "Standard RAG",
    "agentic_rag": "Agentic RAG",
    "max_context": "Max-context",
}
_METRIC_LABELS = dict(zip(METRICS, CONDITION_COLUMNS[2:], strict=True))

#: What the tables read: a :class:`MetricsReport` or the stored ``metrics.json`` data.
Metrics = MetricsReport | Mapping[str, Any]


@dataclass(frozen=True)
class TextTable:
    """A rendered table: title, column names and string cells (for rich and markdown)."""

    title: str
    columns: tuple[str, ...]
    rows: list[list[str]]
    note: str | None = None

    def to_markdown(self) -> str:
        """The table as GitHub markdown (title as a heading, note below)."""
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by :func:`write_report` and the metrics they came from."""

    metrics_json: Path
    report_md: Path
    conditions_csv: Path
    comparisons_csv: Path
    triage_csv: Path | None
    plots: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def format_interval(
    estimate: Estimate | Mapping[str, Any] | None,
    *,
    percent: bool = True,
    signed: bool = False,
    digits: int = 1,
) -> str:
    """``"x.x% [lo, hi]"`` for a rate (``percent``), ``"x.x [lo, hi]"`` otherwise;
    ``"–"`` when undefined, ``"not labeled"`` for a rate the item set has no safety
    labels for. ``signed`` prefixes positive values with ``+``; ``digits`` decimals."""
    if isinstance(estimate, Mapping):
        estimate = Estimate.model_validate(
            {k: estimate.get(k) for k in ("value", "lo", "hi", "n", "n_units")}
            | {"not_labeled": bool(estimate.get("not_labeled"))}
        )
    if estimate is not None and estimate.not_labeled:
        return "not labeled"
    if estimate is None or not _finite(estimate.value):
        return "–"
    scale = 100.0 if percent else 1.0
    sign = "+" if signed else ""
    value = f"{scale * estimate.value:{sign}.{digits}f}"
    unit = "%" if percent and not signed else (" pp" if percent else "")
    if _finite(estimate.lo) and _finite(estimate.hi):
        lo, hi = scale * estimate.lo, scale * estimate.hi
        return f"{value}{unit} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"
    return f"{value}{unit}"


def _condition_label(name: str) -> str:
    return CONDITION_LABELS.get(name, name)


def _several(metrics: MetricsReport, key: str) -> bool:
    """The run has more than one value of a cell axis (``run`` section field)."""
    return len(getattr(metrics.run, key) or [None]) > 1


def _axes_text(entry: Any, metrics: MetricsReport, sep: str = " — ") -> str:
    """The context budget and retrieval depth of a per-cell entry, when the run varies
    them (``""`` otherwise)."""
    text = ""
    if _several(metrics, "context_budgets"):
        text += f"{sep}context {context_budget_label(entry.context_budget)}"
    if _several(metrics, "retrieval_ks"):
        text += f"{sep}k {entry.retrieval_k}"
    return text


def condition_tables(metrics: Metrics) -> list[TextTable]:
    """One results table per model × corpus × compute budget: condition rows with
    accuracy, high-risk error, unsafe, contradiction, dangerous overconfidence (each
    ``x.x% [lo, hi]``), latency per response and ms per generated token."""
    metrics = MetricsReport.coerce(metrics)
    groups: dict[tuple, list[Any]] = {}
    for cell in metrics.cells:
        key = (
            cell.model,
            cell.corpus,
            cell.samples_budget,
            cell.conflict_dose,
            cell.context_budget,
            cell.retrieval_k,
        )
        groups.setdefault(key, []).append(cell)
    several_doses = len(metrics.run.conflict_doses or [0]) > 1
    level = metrics.settings.bootstrap["level"]
    unit = metrics.run.resampling_unit
    unit_text = "evidence_id groups" if unit == "evidence_id" else "items"
    replicates = metrics.settings.bootstrap["replicates"]
    tau = metrics.definitions.get("dangerous_overconfidence_threshold", 0.95)
    tables = []
    for (model, corpus, budget, dose, *_), cells in groups.items():
        rows = [
            [
                _condition_label(cell.condition),
                str(cell.n),
                *(format_interval(cell.metrics[m]) for m in RATE_METRICS),
                format_interval(cell.metrics["latency_ms"], percent=False),
                format_interval(cell.metrics["ms_per_generated_token"], percent=False),
            ]
            for cell in cells
        ]
        tables.append(
            TextTable(
                title=f"{model} — {corpus} — compute {budget}x"
                + (f" — conflict dose {dose}" if several_doses else "")
                + _axes_text(cells[0], metrics),
                columns=CONDITION_COLUMNS,
                rows=rows,
                note=(
                    f"{level:.0%} percentile bootstrap CIs ({replicates} replicates, "
                    f"resampling {unit_text}). Contradiction: a passage in the prompt (cited "
                    "passages when any) contradicts the chosen option, so closed-book is 0 "
                    f"by construction. Dangerous overconfidence: high-risk error with "
                    f"confidence > {tau}."
                ),
            )
        )
    return tables


def _triage_cell(value: Any, signed: bool = False) -> str:
    """``0.51 [0.42, 0.60]`` from an interval dict (``estimate``/``lo``/``hi``), or a
    bare number from a report of the earlier format (one split, no intervals)."""
    if isinstance(value, Mapping):
        est, lo, hi = value.get("estimate"), value.get("lo"), value.get("hi")
        if not _finite(est):
            return "–"
        f = "{:+.2f}" if signed else "{:.2f}"
        if not (_finite(lo) and _finite(hi)):
            return f.format(float(est))
        return f"{f.format(float(est))} [{f.format(float(lo))}, {f.format(float(hi))}]"
    if not _finite(value):
        return "–"
    return f"{float(value):+.3f}" if signed else f"{float(value):.3f}"


def _triage_counts(report: TriageReportRecord) -> str:
    c = report.scored_counts
    safe, gap, conflict = c.get("safe", 0), c.get("gap", 0), c.get("conflict", 0)
    if report.protocol == "cv":
        how = (
            f"{report.repeats} repeat(s) of {report.folds}-fold grouped "
            f"cross-validation over {report.n_groups} evidence groups"
        )
    else:
        how = "the test split of one seeded grouped split"
    return (
        f"Scored: {safe + gap + conflict} responses — {safe} safe, {gap + conflict} unsafe "
        f"({gap} gap, {conflict} conflict) — {how}."
    )


def _transfer_lines(report: TriageReportRecord) -> list[str]:
    cells = report.transfer
    if not cells:
        return []
    lines = []
    for method in dict.fromkeys(c["method"] for c in cells):
        mine = [c for c in cells if c["method"] == method]
        tests = list(dict.fromkeys(c["test"] for c in mine))
        by = {(c["train"], c["test"]): c for c in mine}
        lines += [
            "",
            f"Transfer of {method} (rows: trained on; columns: tested on; Stage-1 BA "
            "[95 % interval], n test responses (safe); off the diagonal only evidence groups "
            "the detector never saw are scored):",
            "",
            "| trained on \\ tested on | " + " | ".join(tests) + " |",
            "|---|" + "---|" * len(tests),
        ]
        for train in dict.fromkeys(c["train"] for c in mine):
            row = []
            for test in tests:
                c = by.get((train, test))
                if c is None:
                    row.append("–")
                elif c.get("s1_ba") is None:
                    row.append(f"n/a: {c.get('reason')}")
                else:
                    ba = _triage_cell(c["s1_ba"])
                    if not _finite(c["s1_ba"].get("lo")):
                        ba += " (no interval: too few responses)"
                    row.append(f"{ba}, n {c['n_test']} ({c['n_safe']})")
            lines.append(f"| {train} | " + " | ".join(row) + " |")
    return lines


def triage_tables(metrics: Metrics) -> list[TextTable]:
    """One triage table per backbone from the detection results (empty if none): every
    endpoint with its 95 % interval, the counts it was measured on, and the verdicts."""
    tables = []
    for report in MetricsReport.coerce(metrics).triage or []:
        rows = []
        for row in report.rows:
            s1 = row.get("stage1_ci") or row.get("stage1")
            s2 = row.get("stage2_ci") or row.get("stage2")
            name = row["method"] + (" (control)" if row.get("kind") == "control" else "")
            if row.get("status") != "ok" or not s1:
                rows.append(
                    [name, f"unavailable: {row.get('reason') or '?'}"]
                    + [""] * (len(TRIAGE_COLUMNS) - 2)
                )
                continue
            delta = (row.get("delta_ba") or {}).get("ecrt", row.get("delta_ba_vs_ecrt"))
            rows.append(
                [
                    name,
                    _triage_cell(s1.get("u_recall")),
                    _triage_cell(s1.get("flag_rate")),
                    _triage_cell(s1.get("s1_ba")),
                    _triage_cell(s1.get("auroc")),
                    "–" if row["method"] == "ecrt" else _triage_cell(delta, True),
                    _triage_cell((s2 or {}).get("gap_recall")),
                    _triage_cell((s2 or {}).get("contradiction_recall")),
                    _triage_cell((s2 or {}).get("s2_ba")),
                    row.get("verdict") or "",
                ]
            )
        protocol = report.protocol
        note = [
            _triage_counts(report),
            f"Labels: {report.label_source}; thresholds picked on validation "
            f"for unsafe recall ≥ {report.target_recall}, frozen before test; "
            + (
                "95 % cluster-bootstrap intervals over evidence groups (thresholds re-picked "
                "in every replicate)."
                if report.replicates
                else "no intervals (a report of the earlier format: re-run `safescale detect "
                "train` for them)."
            ),
        ]
        note += [f"- {v}" for v in report.verdicts]
        note += _transfer_lines(report)
        tables.append(
            TextTable(
                title=(
                    f"Triage — {report.backbone}"
                    + (f" — {report.corpus}" if report.corpus else "")
                    + f" ({'out-of-fold' if protocol == 'cv' else 'test split'})"
                ),
                columns=TRIAGE_COLUMNS,
                rows=rows,
                note="\n".join(note),
            )
        )
    return tables


def conditions_frame(metrics: Metrics) -> pd.DataFrame:
    """One row per cell: keys, ``n``, and ``<metric>``, ``<metric>_lo``, ``<metric>_hi``."""
    rows = []
    for cell in MetricsReport.coerce(metrics).cells:
        row: dict[str, Any] = {
            "model": cell.model,
            "corpus": cell.corpus,
            "samples_budget": cell.samples_budget,
            "conflict_dose": cell.conflict_dose,
            "context_budget": context_budget_label(cell.context_budget),
            "retrieval_k": cell.retrieval_k,
            "condition": cell.condition,
            "n": cell.n,
            "n_units": cell.n_units,
        }
        for metric in METRICS:
            est = cell.metrics[metric]
            row[metric] = est.value
            row[f"{metric}_lo"] = est.lo
            row[f"{metric}_hi"] = est.hi
        for task, est in cell.by_task.items():
            row[f"accuracy_{task}"] = est.value
        rows.append(row)
    return pd.DataFrame(rows)


def comparisons_frame(metrics: Metrics) -> pd.DataFrame:
    """One row per paired difference and metric: ``kind, model, corpus, condition,
    samples_budget, conflict_dose, context_budget, retrieval_k, a, b, n_items, metric,
    delta, lo, hi, discordance, mde`` (NaN where a key is the compared dimension or no
    MDE applies)."""
    rows = []
    for comp in MetricsReport.coerce(metrics).comparisons:
        for metric, est in comp.deltas.items():
            power = comp.power.get(metric)
            rows.append(
                {
                    "kind": comp.kind,
                    "model": comp.model,
                    "corpus": comp.corpus,
                    "condition": comp.condition,
                    "samples_budget": comp.samples_budget,
                    "conflict_dose": comp.conflict_dose,
                    "context_budget": context_budget_label(comp.context_budget),
                    "retrieval_k": comp.retrieval_k,
                    "a": comp.a,
                    "b": comp.b,
                    "n_items": comp.n_items,
                    "metric": metric,
                    "delta": est.value,
                    "lo": est.lo,
                    "hi": est.hi,
                    "discordance": power.discordance if power else None,
                    "mde": power.mde_clustered if power else None,
                }
            )
    return pd.DataFrame(rows)


def triage_frame(metrics: Metrics) -> pd.DataFrame | None:
    """One row per backbone × detector from the detection results (None if none)."""
    triage = MetricsReport.coerce(metrics).triage
    if not triage:
        return None
    rows = []
    for report in triage:
        for row in report.rows:
            s1, s2 = row.get("stage1") or {}, row.get("stage2") or {}
            intervals = {}
            for stage, part in (("stage1", row.get("stage1_ci")), ("stage2", row.get("stage2_ci"))):
                for k, v in (part or {}).items():
                    intervals[f"{stage}_{k}_lo"] = v.get("lo")
                    intervals[f"{stage}_{k}_hi"] = v.get("hi")
            delta = (row.get("delta_ba") or {}).get("ecrt") or {}
            rows.append(
                {
                    "backbone": report.backbone,
                    "corpus": report.corpus,
                    "method": row.get("method"),
                    "kind": row.get("kind", "detector"),
                    "status": row.get("status"),
                    "threshold": row.get("threshold"),
                    "val_recall": row.get("val_recall"),
                    **{f"stage1_{k}": v for k, v in s1.items()},
                    **{f"stage2_{k}": v for k, v in s2.items()},
                    **intervals,
                    "delta_ba_vs_ecrt": row.get("delta_ba_vs_ecrt"),
                    "delta_ba_vs_ecrt_lo": delta.get("lo"),
                    "delta_ba_vs_ecrt_hi": delta.get("hi"),
                    "verdict": row.get("verdict"),
                }
            )
    return pd.DataFrame(rows)


def _comparison_tables(metrics: MetricsReport) -> list[TextTable]:
    metrics_shown = ("accuracy", "high_risk_error", "unsafe_answer", "contradiction",
                     "dangerous_overconfidence")  # fmt: skip
    by_kind: dict[str, list[Any]] = {}
    for comp in metrics.comparisons:
        by_kind.setdefault(comp.kind, []).append(comp)
    titles = {
        "condition": ("Paired differences between conditions (A − B)",
                      ("model", "corpus", "samples_budget")),
        "samples_budget": ("Paired differences between compute budgets (A − B)",
                           ("model", "corpus", "condition")),
        "model": ("Paired differences between models (A − B)",
                  ("corpus", "condition", "samples_budget")),
    }  # fmt: skip
    several_doses = len(metrics.run.conflict_doses or [0]) > 1
    tables = []
    for kind, comps in by_kind.items():
        title, fixed = titles.get(kind, (kind, ()))
        if several_doses:
            fixed = (*fixed, "conflict_dose")
        if _several(metrics, "context_budgets"):
            fixed = (*fixed, "context_budget")
        if _several(metrics, "retrieval_ks"):
            fixed = (*fixed, "retrieval_k")
        columns = (
            *fixed,
            "A",
            "B",
            "n items",
            *(f"Δ {_METRIC_LABELS[m]}" for m in metrics_shown),
            "MDE acc. (disc.)",
            "MDE high-risk (disc.)",
        )
        rows = [
            [
                *(
                    _condition_label(str(c.condition))
                    if k == "condition"
                    else context_budget_label(c.context_budget)
                    if k == "context_budget"
                    else str(_fixed_value(c, k))
                    for k in fixed
                ),
                _condition_label(str(c.a)),
                _condition_label(str(c.b)),
                str(c.n_items),
                *(format_interval(c.deltas[m], signed=True) for m in metrics_shown),
                _mde_text(c.power.get("accuracy")),
                _mde_text(c.power.get("high_risk_error")),
            ]
            for c in comps
        ]
        tables.append(
            TextTable(
                title,
                tuple(columns),
                rows,
                note="Differences in percentage points; paired bootstrap over shared items. "
                "MDE: the smallest paired difference detectable at 80 % power, two-sided "
                "α = 0.05, for these n items and the observed discordance (share of items "
                "whose outcome differs), McNemar/Connor 1987; with evidence clusters it is "
                "inflated by the design effect. ✓ marks an observed |Δ| at least the MDE.",
            )
        )
    return tables


def _fixed_value(comparison: Any, key: str) -> Any:
    """A fixed identity field of a comparison as the table shows it (0 when unset)."""
    value = getattr(comparison, key)
    return 0 if value is None and key not in comparison.model_fields_set else value


def _mde_text(entry: Any | None) -> str:
    if entry and entry.too_few_items:
        return f"> {_pct(entry.discordance)} (too few items)"
    if not entry or not _finite(entry.mde_clustered):
        return "–"
    mark = " ✓" if entry.detectable else ""
    return f"{100 * entry.mde_clustered:.1f} pp ({_pct(entry.discordance)}){mark}"


#: The identity columns of a per-cell table (model x corpus x condition x budget x dose).
CELL_HEADER = ("model", "corpus", "condition", "budget", "dose")


def _cell_header(metrics: MetricsReport) -> tuple[str, ...]:
    """:data:`CELL_HEADER`, plus ``context`` and ``k`` when the run varies them."""
    extra = ("context",) if _several(metrics, "context_budgets") else ()
    extra += ("k",) if _several(metrics, "retrieval_ks") else ()
    return (*CELL_HEADER, *extra)


def _cell_identity(e: Any, metrics: MetricsReport | None = None) -> list[str]:
    """The :func:`_cell_header` cells of a per-cell metrics entry."""
    cells = [
        str(e.model),
        str(e.corpus),
        _condition_label(str(e.condition)),
        str(e.samples_budget),
        str(e.conflict_dose),
    ]
    if metrics is not None and _several(metrics, "context_budgets"):
        cells.append(context_budget_label(e.context_budget))
    if metrics is not None and _several(metrics, "retrieval_ks"):
        cells.append(str(e.retrieval_k))
    return cells


def grade_override_table(metrics: Metrics) -> TextTable | None:
    """The grade-override rate per cell with eligible responses (None when none)."""
    metrics = MetricsReport.coerce(metrics)
    entries = metrics.grade_override
    if not entries:
        return None
    rows = [
        [
            *_cell_identity(e, metrics),
            str(e.n_eligible),
            str(e.overrides),
            format_interval(e.rate),
            f"{e.by_kind.get('superseded', 0)} / {e.by_kind.get('lower_grade', 0)}",
            f"{e.attributed_as_override} of {e.overrides}",
            ", ".join(f"{k}: {v}" for k, v in e.attribution.items()) or "–",
        ]
        for e in entries
    ]
    return TextTable(
        "Grade override: answers that follow the weaker source",
        (
            *_cell_header(metrics),
            "eligible",
            "overrides",
            "override rate",
            "superseded / lower grade",
            "attributed as override",
            "attribution of overrides",
        ),
        rows,
        note="Eligible: the prompt held a current passage supporting the gold and a passage "
        "contradicting the gold that is superseded or of a weaker grade level. Override: "
        "the chosen option is not the gold and such a weaker passage supports it. "
        "Attributed as override: the override's failure attribution is "
        "superseded_source_used or lower_grade_outranked ('none': the answer was neither "
        "high-risk nor unsafe, so it has no attribution).",
    )


def reliance_table(metrics: Metrics) -> TextTable | None:
    """Causal reliance on the evidence per cell (None when the stage did not run)."""
    metrics = MetricsReport.coerce(metrics)
    entries = metrics.reliance
    if not entries:
        return None
    rows = [
        [
            *_cell_identity(e, metrics),
            f"{e.n_measured} / {e.n_mismatch} / {e.n_skipped}",
            format_interval(e.depends_on_evidence),
            f"{format_interval(e.depends_on_cited)} (n={e.n_with_cited})",
            f"{format_interval(e.depends_on_weaker)} (n={e.n_with_weaker})",
            format_interval(e.mean_evidence_kl, percent=False),
            str(e.verdict),
        ]
        for e in entries
    ]
    reasons = sorted({r for e in entries for r in e.skip_reasons})
    note = (
        "Each answer is re-read the way its formulation read it with the evidence masked "
        "from attention (all evidence together, then each passage); an answer depends on "
        "what was masked when its most probable option changes. Mismatch: the unmasked "
        "re-read did not reproduce the recorded option scores (excluded)."
    )
    if reasons:
        note += " Skipped: " + "; ".join(reasons) + "."
    return TextTable(
        "Causal reliance on the evidence (attention masking)",
        (
            *_cell_header(metrics),
            "measured / mismatch / skipped",
            "depends on evidence",
            "depends on cited passage",
            "depends on weaker passage",
            "mean KL (all evidence)",
            "verdict",
        ),
        rows,
        note=note,
    )


def dose_response_tables(metrics: Metrics) -> list[TextTable]:
    """Per condition: each rate at every conflict dose and the slope per added passage."""
    metrics = MetricsReport.coerce(metrics)
    tables = []
    for c in metrics.dose_response:
        rows = [
            [
                str(d.dose),
                str(d.n),
                f"{d.mean_injected:.2f}",
                str(d.capped),
                *(format_interval(d.metrics[m]) for m in _DOSE_SHOWN),
            ]
            for d in c.doses
        ]
        rows.append(
            [
                "slope / passage",
                str(c.n_items_all_doses),
                "",
                "",
                *(format_interval(c.slope.get(m), signed=True) for m in _DOSE_SHOWN),
            ]
        )
        capped = sum(d.capped for d in c.doses)
        note = (
            "Dose k: k contradicting passages from the item's conflicting pool added to its "
            "evidence (oracle conditions) or to the retrieval candidates (RAG conditions). "
            "Slope: least-squares change of the rate per added passage (pp) over the items "
            "answered at every dose, 95 % bootstrap CI."
        )
        if capped:
            note += (
                f" Note: {capped} responses were capped (the item's pool had fewer "
                "contradicting passages than the dose); 'injected' is the mean actually drawn."
            )
        tables.append(
            TextTable(
                f"Conflict dose-response — {c.model} · {c.corpus} · "
                f"{_condition_label(c.condition)} · {c.samples_budget}x"
                + _axes_text(c, metrics, " · "),
                ("dose", "n", "injected", "capped", *(_METRIC_LABELS[m] for m in _DOSE_SHOWN)),
                rows,
                note=note,
            )
        )
    return tables


_DOSE_SHOWN = ("accuracy", "high_risk_error", "unsafe_answer", "contradiction")


def transition_tables(metrics: Metrics, max_items: int = 12) -> list[TextTable]:
    """Per-item transitions (closed-book → clean, clean → conflict), items listed."""
    metrics = MetricsReport.coerce(metrics)
    entries = metrics.transitions
    if not entries:
        return []
    names = ("right_to_wrong", "wrong_to_right", "right_to_right", "wrong_to_wrong")

    def listed(ids: Sequence[str]) -> str:
        more = f" … (+{len(ids) - max_items})" if len(ids) > max_items else ""
        return ", ".join(ids[:max_items]) + more if ids else "–"

    rows = [
        [
            f"{e.model} · {e.corpus} · {e.samples_budget}x · dose {e.conflict_dose}"
            + _axes_text(e, metrics, " · "),
            f"{_condition_label(e.from_)} → {_condition_label(e.to)}",
            str(e.n_items),
            *(str(e.counts[k]) for k in names),
            f"{e.net:+d}",
            listed(e.items["right_to_wrong"]),
            listed(e.items["wrong_to_right"]),
        ]
        for e in entries
    ]
    return [
        TextTable(
            "Evidence effect per item (transition matrices)",
            (
                "model · corpus · budget · dose",
                "from → to",
                "items",
                "right→wrong",
                "wrong→right",
                "right→right",
                "wrong→wrong",
                "net",
                "hurt (right→wrong)",
                "helped (wrong→right)",
            ),
            rows,
            note="Over the items answered under both conditions; every item id of each "
            "cell is in metrics.json (transitions).",
        )
    ]


def _task_table(metrics: MetricsReport) -> TextTable | None:
    cells = [c for c in metrics.cells if c.by_task]
    if not cells:
        return None
    tasks = sorted({t for c in cells for t in c.by_task})
    rows = [
        [
            c.model,
            c.corpus,
            str(c.samples_budget) + _axes_text(c, metrics, " · "),
            _condition_label(c.condition),
            *(format_interval(c.by_task.get(t)) for t in tasks),
        ]
        for c in cells
    ]
    return TextTable(
        "Accuracy by task",
        ("model", "corpus", "budget", "condition", *tasks),
        rows,
    )


def _concentration_tables(metrics: MetricsReport) -> list[TextTable]:
    tables = []
    for conc in metrics.concentration or []:
        share = conc.share_in_worst
        share_text = "–" if share is None else f"{100 * share:.1f}%"
        worst = ", ".join(f"{w.item} ({w.high_risk_errors})" for w in conc.worst_items[:10])
        note = (
            f"{share_text} of the {conc.high_risk_errors} high-risk errors fall on the worst "
            f"{conc.n_worst_items} of {conc.n_items} items "
            f"({100 * conc.worst_fraction:.0f}%). Worst items: {worst or '–'}."
        )
        rows = [
            [
                c.category,
                str(c.n_items),
                str(c.n_responses),
                str(c.high_risk_errors),
                "–"
                if c.share_of_high_risk_errors is None
                else f"{100 * c.share_of_high_risk_errors:.1f}%",
                f"{100 * c.high_risk_error_rate:.1f}%",
            ]
            for c in conc.by_category
        ]
        tables.append(
            TextTable(
                f"Worst-case concentration — {conc.corpus}",
                ("category", "items", "responses", "high-risk errors", "share of errors", "rate"),
                rows,
                note=note,
            )
        )
    return tables


def _attribution_table(metrics: MetricsReport) -> TextTable | None:
    rows = metrics.attribution
    if not rows:
        return None
    # a dose column only when the run swept conflict doses (rows differ by dose alone);
    # the same for the context budget and the retrieval depth
    dosed = len({int(r.conflict_dose or 0) for r in rows}) > 1
    budgeted = len({r.context_budget for r in rows}) > 1
    deep = len({r.retrieval_k for r in rows}) > 1
    distracted = any(r.distractor_passages for r in rows)
    return TextTable(
        "Failure attribution (counts per condition)",
        (
            "model",
            "corpus",
            "condition",
            "budget",
            *(("dose",) if dosed else ()),
            *(("context",) if budgeted else ()),
            *(("k",) if deep else ()),
            "severity",
            "cause",
            "count",
            *(("of which distractor passages",) if distracted else ()),
        ),
        [
            [
                str(r.model),
                str(r.corpus),
                _condition_label(str(r.condition)),
                str(r.samples_budget),
                *((str(int(r.conflict_dose or 0)),) if dosed else ()),
                *((context_budget_label(r.context_budget),) if budgeted else ()),
                *((str(r.retrieval_k),) if deep else ()),
                str(r.severity or "–"),
                str(r.cause),
                str(r.count),
                *((str(r.distractor_passages or 0),) if distracted else ()),
            ]
            for r in rows
        ],
        note="Of which distractor passages: failures whose prompt held the item's clean "
        "evidence and whose clean-evidence answer was right — the other retrieved passages "
        "changed it (see the distractor table)."
        if distracted
        else None,
    )


def validity_verdicts(metrics: Metrics) -> list[str]:
    """The plain sentences of the validity section (one or more per model x corpus)."""
    return [v for entry in MetricsReport.coerce(metrics).validity for v in entry.verdicts]


def _pct(x: Any) -> str:
    return f"{100 * x:.0f}%" if _finite(x) else "–"


def validity_tables(metrics: Metrics) -> list[TextTable]:
    """Per model x corpus: how answers were read, position bias and evidence
    sensitivity; and the calibration candidates when ``auto`` chose the formulation."""
    entries = MetricsReport.coerce(metrics).validity
    if not entries:
        return []
    rows = []
    for e in entries:
        pos = e.position_bias
        eff = e.evidence_sensitivity
        gain = eff.accuracy_gain if eff else None
        changed = eff.changed_share if eff else None
        rows.append(
            [
                f"{e.model} · {e.corpus}",
                e.formulation,
                f"{_pct(pos.top_position_share)} ({chr(ord('A') + pos.top_position)})",
                f"{pos.chi_square:.1f} (p={pos.p_value:.2g})",
                format_interval(changed),
                format_interval(gain, signed=True),
                _pct(e.chance),
            ]
        )
    tables = [
        TextTable(
            "Validity: does the answer depend on the evidence?",
            (
                "model · corpus",
                "answer read as",
                "top position",
                "χ² vs uniform",
                "answers changed by clean evidence",
                "accuracy gain clean − closed (pts)",
                "chance",
            ),
            rows,
            note="Position and sensitivity over greedy responses; the gain is paired over "
            "the items answered in both conditions, with a 95 % bootstrap CI.",
        )
    ]
    for e in entries:
        cal = e.calibration or {}
        candidates = cal.get("candidates") or {}
        if not candidates:
            continue
        crow = []
        for name, c in candidates.items():
            mark = " ← chosen" if name == cal.get("chosen") else ""
            agree = c.get("orderings_agree")
            estimate = c.get("accuracy_clean_evidence_estimate")
            crow.append(
                [
                    name + mark,
                    _pct(c["accuracy_closed_book"]),
                    format_interval(estimate, digits=0)
                    if estimate
                    else _pct(c["accuracy_clean_evidence"]),
                    _pct(c["evidence_sensitivity"]),
                    _pct(c["top_position_share"]),
                    _pct(agree) if agree is not None else "–",
                ]
            )
        tables.append(
            TextTable(
                f"Answer formulation calibration — {e.model} · {e.corpus} "
                f"({len(cal.get('calibration_items') or [])} held-out items)",
                (
                    "formulation",
                    "acc. closed-book",
                    "acc. clean evidence",
                    "answers changed",
                    "top position",
                    "orderings agree",
                ),
                crow,
                note=f"Rule: {cal.get('rule', '')}. Calibration items are never scored in "
                "the study; intervals: 95 % bootstrap over the calibration evidence groups."
                + _calibration_check_text(e.calibration_check),
            )
        )
    return tables


def _calibration_check_text(check: CalibrationCheck | None) -> str:
    """The calibration estimate of the chosen formulation beside the study's."""
    if not check:
        return ""
    study, cal = check.study, check.calibration
    text = (
        f" Calibration vs study: {check.formulation} scored "
        f"{format_interval(cal, digits=0)} on {cal.get('n')} calibration items; the study "
        f"scores {format_interval(study.model_dump(), digits=0)} with clean evidence "
        f"({study.n} items)"
    )
    cross = check.cross_fit
    if cross and _finite(cross.get("value")):
        text += f"; cross-fitted accuracy of the auto rule {format_interval(cross, digits=0)}"
    if check.outside:
        text += f" — the study estimate lies {check.outside} the calibration interval"
    text += "."
    if check.summary:
        text += f" {str(check.summary)[0].upper()}{str(check.summary)[1:]}"
    return text


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def reference_tables(metrics: Metrics) -> list[TextTable]:
    """Per model x corpus: each condition's accuracy against what a constant answer
    scores (majority gold; always defer on gap items), paired, with 95 % CIs."""
    tables = []
    for e in MetricsReport.coerce(metrics).validity:
        refs = e.references
        if not refs:
            continue
        major = refs.majority_gold
        defer = refs.always_defer
        by_gap = {r.condition: r for r in defer.conditions} if defer else {}
        rows = []
        for r in refs.conditions:
            g = by_gap.get(r.condition)
            rows.append(
                [
                    _condition_label(r.condition),
                    str(r.n),
                    format_interval(r.accuracy),
                    format_interval(r.difference, signed=True) + f" ({r.verdict})",
                    f"{r.same_as_constant} / {r.n}" if r.same_as_constant is not None else "–",
                    *(
                        (
                            format_interval(g.accuracy) if g else "–",
                            format_interval(g.difference, signed=True) + f" ({g.verdict})"
                            if g
                            else "–",
                        )
                        if defer
                        else ()
                    ),
                ]
            )
        answer = (
            f"always answering {_short(major.answer)!r}"
            if major.by == "option text"
            else f"always answering position {major.answer}"
        )
        note = (
            f"Majority gold: {answer} (the gold of {major.hits} of {major.n_items} "
            f"items) scores {format_interval(major.estimate)}; chance "
            f"{_pct(refs.chance)}."
        )
        if defer:
            note += (
                f" Always defer on the {defer.n_items} gap items scores "
                f"{format_interval(defer.estimate)}."
            )
        note += (
            " Δ: paired difference with the constant answer on the same items (95 % "
            "bootstrap CI); 'below' / 'above' when the interval excludes 0."
        )
        tables.append(
            TextTable(
                f"What a constant answer scores — {e.model} · {e.corpus}",
                (
                    "condition",
                    "n",
                    "accuracy",
                    "Δ vs majority gold (pts)",
                    "gives the constant answer",
                    *(("accuracy on gap items", "Δ vs always defer (pts)") if defer else ()),
                ),
                rows,
                note=note,
            )
        )
    return tables


def distractor_table(metrics: Metrics, max_items: int = 12) -> TextTable | None:
    """Clean evidence -> each retrieval condition where the retrieval prompt held the
    gold passages and the answer still changed (None when no run has both)."""
    entries = [e for e in MetricsReport.coerce(metrics).distractors if e.n_gold_present]
    if not entries:
        return None

    def listed(ids: Sequence[str]) -> str:
        more = f" … (+{len(ids) - max_items})" if len(ids) > max_items else ""
        return ", ".join(ids[:max_items]) + more if ids else "–"

    rows = []
    for e in entries:
        flows = "; ".join(f"{f.from_} → {f.to}: {f.n}" for f in e.flows[:4]) or "–"
        rows.append(
            [
                f"{e.model} · {e.corpus} · {e.samples_budget}x · dose {e.conflict_dose}",
                _condition_label(e.condition),
                str(e.n_items),
                str(e.n_gold_present),
                str(e.n_changed),
                str(e.counts["right_to_wrong"]),
                str(e.counts["wrong_to_right"]),
                str(e.counts["wrong_to_other"]),
                flows,
                listed(e.items["right_to_wrong"]),
                ", ".join(f"{k}: {v}" for k, v in e.attributed.items()) or "–",
            ]
        )
    return TextTable(
        "Distractor passages changed the answer (clean evidence → retrieval with the gold "
        "passages present)",
        (
            "model · corpus · budget · dose",
            "retrieval condition",
            "items",
            "gold present",
            "answer changed",
            "right→wrong",
            "wrong→right",
            "wrong→other",
            "clean answer → retrieval answer",
            "right→wrong items",
            "attribution of right→wrong",
        ),
        rows,
        note="Gold present: the retrieval prompt held the item's whole clean evidence set, "
        "so the two prompts differ only in the other retrieved passages; a changed answer "
        "there is the distractors' doing. Every item id is in metrics.json (distractors).",
    )


def render_markdown(metrics: Metrics, plots: Sequence[Path] = ()) -> str:
    """The whole report as markdown (plots linked relative to the run directory)."""
    metrics = MetricsReport.coerce(metrics)
    run = metrics.run
    parts = [
        f"# Run report — {run.name if 'name' in run.model_fields_set else '?'}",
        "",
        f"{run.n_responses} responses; models: {', '.join(run.models)}; corpora: "
        f"{', '.join(run.corpora)}; compute budgets: "
        f"{', '.join(f'{b}x' for b in run.samples_budgets)}"
        + (
            "; context budgets: " + ", ".join(context_budget_label(c) for c in run.context_budgets)
            if _several(metrics, "context_budgets")
            else ""
        )
        + (
            "; retrieval depths: " + ", ".join(f"k {k}" for k in run.retrieval_ks)
            if _several(metrics, "retrieval_ks")
            else ""
        )
        + ".",
        "",
    ]
    for note in run.notes or []:
        parts += [f"> note: {note}", ""]
    verdicts = validity_verdicts(metrics)
    if verdicts:
        parts += ["## Validity", ""]
        parts += [f"**{v}**\n" for v in verdicts]
        parts += [t.to_markdown() for t in validity_tables(metrics)]
        parts += [t.to_markdown() for t in reference_tables(metrics)]
    parts += ["## Conditions", ""]
    parts += [t.to_markdown() for t in condition_tables(metrics)]
    comparison = _comparison_tables(metrics)
    if comparison:
        parts += ["## Paired differences", ""] + [t.to_markdown() for t in comparison]
    task = _task_table(metrics)
    if task is not None:
        parts += ["## Accuracy by task", "", task.to_markdown()]
    parts += ["## Worst-case concentration", ""]
    parts += [t.to_markdown() for t in _concentration_tables(metrics)]
    attribution = _attribution_table(metrics)
    if attribution is not None:
        parts += ["## Failure attribution", "", attribution.to_markdown()]
    dose = dose_response_tables(metrics)
    if dose:
        parts += ["## Conflict dose-response", ""] + [t.to_markdown() for t in dose]
    from safescale.presentation.scaling_report import scaling_markdown

    parts += scaling_markdown(metrics)
    override = grade_override_table(metrics)
    if override is not None:
        parts += ["## Grade override", "", override.to_markdown()]
    reliance = reliance_table(metrics)
    if reliance is not None:
        parts += ["## Causal reliance on evidence", "", reliance.to_markdown()]
    transitions = transition_tables(metrics)
    distractors = distractor_table(metrics)
    if transitions or distractors:
        parts += ["## Evidence effect per item", ""] + [t.to_markdown() for t in transitions]
        parts += [distractors.to_markdown()] if distractors is not None else []
    triage = triage_tables(metrics)
    if triage:
        parts += ["## Triage", ""] + [t.to_markdown() for t in triage]
    if plots:
        parts += ["## Plots", ""]
        parts += [f"![{p.stem}](plots/{p.name})" for p in plots]
        parts.append("")
    parts += [
        "## Metric definitions",
        "",
        *(f"- **{k}**: {v}" for k, v in metrics.definitions.items()),
        "",
    ]
    return "\n".join(parts)


def print_validity(console: Any, metrics: Metrics) -> None:
    """Print the validity sentences and tables (above the condition tables)."""
    metrics = MetricsReport.coerce(metrics)
    for verdict in validity_verdicts(metrics):
        console.print(f"[bold]{verdict}[/bold]")
    for table in [*validity_tables(metrics), *reference_tables(metrics)]:
        console.print(rich_table(table))


def rich_table(table: TextTable) -> Table:
    """A :class:`rich.table.Table` of a :class:`TextTable`."""
    out = Table(title=table.title, caption=table.note, caption_justify="left")
    for i, column in enumerate(table.columns):
        if i == 0:
            out.add_column(column, justify="left", no_wrap=True, min_width=12)
        else:
            out.add_column(column, justify="right", overflow="fold")
    for row in table.rows:
        out.add_row(*row)
    return out


def write_report(
    run_dir: str | Path,
    *,
    bootstrap: BootstrapConfig | None = None,
    metrics_config: MetricsConfig | None = None,
    plots: bool = True,
) -> ReportFiles:
    """Recompute ``metrics.json`` from the run directory and write every report file.

    Never calls a language model: only the frozen responses, the corpora and the
    detection outputs are read.

    Args:
        run_dir: the run directory.
        bootstrap: bootstrap settings overriding the run config's.
        metrics_config: metric settings overriding the run config's.
        plots: also write ``plots/*.png``.

    Returns:
        The written paths and the metrics structure.
    """
    run_dir = Path(run_dir)
    metrics = write_metrics(run_dir, bootstrap=bootstrap, metrics=metrics_config)
    report = MetricsReport.coerce(metrics)
    written_plots = []
    if plots:
        from safescale.presentation.plots import write_plots

        written_plots = write_plots(report, output_dir(run_dir, "plots"))
    conditions_csv = run_dir / "conditions.csv"
    atomic_write_text(conditions_csv, conditions_frame(report).to_csv(index=False))
    comparisons_csv = run_dir / "comparisons.csv"
    atomic_write_text(comparisons_csv, comparisons_frame(report).to_csv(index=False))
    triage = triage_frame(report)
    triage_csv = None
    if triage is not None:
        triage_csv = run_dir / "triage.csv"
        atomic_write_text(triage_csv, triage.to_csv(index=False))
    report_md = run_dir / "report.md"
    atomic_write_text(report_md, render_markdown(report, written_plots))
    return ReportFiles(
        metrics_json=run_dir / METRICS_FILE,
        report_md=report_md,
        conditions_csv=conditions_csv,
        comparisons_csv=comparisons_csv,
        triage_csv=triage_csv,
        plots=written_plots,
        metrics=metrics,
    )
