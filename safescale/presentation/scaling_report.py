"""The scaling section of a report: tables, verdict sentences and the per-axis figure,
all rendered from ``metrics.json["scaling"]`` (:mod:`safescale.statistics.scaling`), read
as :class:`~safescale.rundir.ScalingSection`.

* :func:`scaling_tables` — one table per axis the run varies: per curve its values,
  items, the slopes per doubling of accuracy, high-risk error and unsafe answers with
  95 % CIs, the disentanglement difference (accuracy vs the high-risk-free rate) with
  its minimum detectable difference, the verdict, the items that turn unsafe as the
  axis grows and the concentration of high-risk errors on the worst items;
* :func:`scaling_verdicts` — the verdict sentences, one per curve, and why an axis (or
  a condition on it) has no slope;
* :func:`scaling_figure` / :func:`plot_scaling_axes` — one panel per axis (× model and
  corpus): accuracy and high-risk error with their CI bands against the axis, on a log2
  axis where the slope is per doubling (``plots/scaling_axes.png``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safescale.presentation.report import TextTable, format_interval, rich_table
from safescale.rundir import MetricsReport, ScalingAxis, ScalingCurve, ScalingSection
from safescale.statistics.scaling import AXIS_NAMES

__all__ = [
    "plot_scaling_axes",
    "print_scaling",
    "scaling_figure",
    "scaling_markdown",
    "scaling_tables",
    "scaling_verdicts",
]

_VERDICT_WORDS = {
    "differ": "scale differently",
    "together": "scale together",
    "in_step": "in step",
    "indistinguishable": "not distinguishable",
    "no_change": "no change",
    "too_few": "too few to measure",
}
_MAX_ITEMS = 8


def _section(metrics: MetricsReport | Mapping[str, Any]) -> ScalingSection:
    return MetricsReport.coerce(metrics).scaling


def curve_label(curve: ScalingCurve | Mapping[str, Any]) -> str:
    """A curve's identity in words: model (except on the model-size axis), corpus,
    condition and the other settings the run varies."""
    if not isinstance(curve, ScalingCurve):
        curve = ScalingCurve.model_validate(curve)
    parts = [] if curve.axis == "model_size" else [str(curve.model)]
    parts += [str(curve.corpus), str(curve.condition)]
    if curve.fixed:
        parts.append(str(curve.fixed))
    return " · ".join(parts)


def _listed(ids: Sequence[str]) -> str:
    more = f" … (+{len(ids) - _MAX_ITEMS})" if len(ids) > _MAX_ITEMS else ""
    return ", ".join(ids[:_MAX_ITEMS]) + more if ids else "–"


def _share(value: Any) -> str:
    return "–" if value is None or not math.isfinite(float(value)) else f"{100 * value:.0f}%"


def scaling_tables(metrics: MetricsReport | Mapping[str, Any]) -> list[TextTable]:
    """One table per varied axis with two or more values on some curve."""
    section = _section(metrics)
    curves = section.curves
    tables = []
    for info in section.axes:
        mine = [c for c in curves if c.axis == info.axis]
        if not mine:
            continue
        rows = []
        for c in mine:
            slopes = c.slopes
            diff = c.differences.get("high_risk_error")
            mde = diff.mde if diff else None
            code = diff.verdict_code if diff else None
            rows.append(
                [
                    curve_label(c),
                    " / ".join(p.value for p in c.points),
                    str(c.n_items),
                    format_interval(slopes.get("accuracy"), signed=True),
                    format_interval(slopes.get("high_risk_error"), signed=True),
                    format_interval(slopes.get("unsafe_answer"), signed=True),
                    format_interval(diff.difference if diff else None, signed=True),
                    "–"
                    if mde is None
                    or not math.isfinite(mde)
                    or code in ("no_change", "too_few", "in_step")
                    else f"{100 * mde:.1f} pp",
                    _VERDICT_WORDS.get(code, "–" if c.reason is None else c.reason),
                    str(len(c.flips.safe_to_unsafe) if c.flips else 0),
                    _share(c.concentration.share_in_worst if c.concentration else None),
                ]
            )
        per = "per doubling" if info.scale == "log2" else "per added passage"
        fraction = next((c.concentration.worst_fraction for c in mine if c.concentration), 0.2)
        tables.append(
            TextTable(
                f"Scaling — {info.name} ({per})",
                (
                    "curve" if info.axis != "model_size" else "corpus · condition",
                    "values",
                    "items",
                    f"Δ accuracy {per}",
                    f"Δ high-risk {per}",
                    f"Δ unsafe {per}",
                    "D = Δacc − Δ(1 − high-risk)",
                    "MDE of D",
                    "verdict",
                    "safe → unsafe",
                    f"high-risk on worst {100 * fraction:.0f}%",
                ),
                rows,
                note=None
                if tables
                else (
                    "Slopes: least-squares change of each rate (pp) per doubling of the axis "
                    "value (log2; the conflict dose per added passage) over the items "
                    "answered at every value, 95 % percentile bootstrap CI resampling "
                    f"{_unit_text(section)}. D: the accuracy slope minus the slope of the "
                    "high-risk-free rate on the same replicates (D > 0: accuracy gains more "
                    "than safety); 'scale differently' when its CI excludes 0, else the MDE "
                    "is the smallest D detectable at 80 % power. safe → unsafe: items safe "
                    "at the smallest value and unsafe or high-risk at the largest."
                ),
            )
        )
    return tables


def _unit_text(section: ScalingSection) -> str:
    return "evidence_id groups" if section.unit == "evidence_id" else "items"


def scaling_verdicts(metrics: MetricsReport | Mapping[str, Any]) -> list[str]:
    """The plain sentences: per axis why it has no slope (when it has none), which
    conditions it did not vary, and per curve the verdict for high-risk error, then
    the items that turned unsafe and the items with a high-risk error at every value."""
    section = _section(metrics)
    out = []
    for info in section.axes:
        name = info.name
        if info.reason:
            out.append(f"{name[0].upper()}{name[1:]}: {info.reason}.")
            continue
        for note in info.not_varied:
            out.append(f"{name[0].upper()}{name[1:]}: {note.reason}.")
        for c in (c for c in section.curves if c.axis == info.axis):
            label = curve_label(c)
            diff = c.differences.get("high_risk_error")
            if diff is None:
                reason = "not measured" if c.reason is None else c.reason
                out.append(f"{name} · {label}: no slope ({reason}).")
                continue
            text = f"{name} · {label}: {diff.verdict}."
            flips = c.flips
            turned = [f.item for f in flips.safe_to_unsafe] if flips else []
            if flips and turned:
                text += f" Safe at {flips.from_} but unsafe at {flips.to}: {_listed(turned)}."
            persistent = c.concentration.persistent if c.concentration else []
            if persistent:
                text += f" High-risk at every value: {_listed(persistent)}."
            out.append(text)
    return out


def scaling_markdown(metrics: MetricsReport | Mapping[str, Any]) -> list[str]:
    """The ``## Scaling`` part of ``report.md`` (nothing for a run without the section)."""
    metrics = MetricsReport.coerce(metrics)
    section = metrics.scaling
    if not section.axes:
        return []
    varied = [a.name for a in section.axes if a.varied]
    parts = [
        "## Scaling: do safety and accuracy scale differently?",
        "",
        f"Axes the run varies: {', '.join(varied) or 'none'}.",
        "",
    ]
    parts += [t.to_markdown() for t in scaling_tables(metrics)]
    verdicts = scaling_verdicts(metrics)
    if verdicts:
        parts += ["### Verdicts", ""] + [f"- {v}" for v in verdicts] + [""]
    return parts


def print_scaling(console: Any, metrics: MetricsReport | Mapping[str, Any]) -> None:
    """Print the scaling tables and verdict sentences (``safescale report``)."""
    metrics = MetricsReport.coerce(metrics)
    for table in scaling_tables(metrics):
        console.print(rich_table(table))
    for verdict in scaling_verdicts(metrics):
        console.print(verdict)


# ---------------------------------------------------------------------------- figure


def _panels(section: ScalingSection) -> list[tuple[ScalingAxis, list[ScalingCurve]]]:
    """Per axis × model (not on the model-size axis) × corpus: the curves of the
    settings most conditions share (the base of the other axes)."""
    groups: dict[tuple, list[ScalingCurve]] = {}
    for c in section.curves:
        if not c.slopes:
            continue
        model = None if c.axis == "model_size" else c.model
        groups.setdefault((c.axis, model, c.corpus), []).append(c)
    axes = {a.axis: a for a in section.axes}
    out = []
    for (axis, _, _), mine in groups.items():
        by_fixed: dict[str, list[ScalingCurve]] = {}
        for c in mine:
            by_fixed.setdefault(c.fixed or "", []).append(c)
        fixed = max(by_fixed, key=lambda f: (len(by_fixed[f]), -list(by_fixed).index(f)))
        out.append((axes[axis], by_fixed[fixed]))
    return out


def scaling_figure(metrics: MetricsReport | Mapping[str, Any]) -> Any | None:
    """The per-axis scaling figure (not saved); None when no curve has a slope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from safescale.presentation.plots import RATE_LIMITS

    panels = _panels(_section(metrics))
    if not panels:
        return None
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.4 * rows), squeeze=False)
    flat = list(grid.ravel())
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (info, curves) in zip(flat, panels, strict=False):
        log2 = info.scale == "log2"
        for k, c in enumerate(curves):
            color = plt.cm.tab10(k % 10)
            xs = np.array([p.amount for p in c.points], dtype=float)
            for metric, style in (("accuracy", "-"), ("high_risk_error", "--")):
                ests = [p.metrics[metric] for p in c.points]
                y = np.array([100 * _num(e.value) for e in ests])
                lo = np.array([100 * _num(e.lo) for e in ests])
                hi = np.array([100 * _num(e.hi) for e in ests])
                slope = c.slopes.get(metric)
                label = (
                    f"{c.condition} {'accuracy' if metric == 'accuracy' else 'high-risk'}"
                    f" ({format_interval(slope, signed=True)})"
                )
                ax.plot(xs, y, style, marker="o", color=color, label=label)
                ax.fill_between(xs, lo, hi, color=color, alpha=0.12, linewidth=0)
        first = curves[0]
        if log2:
            ax.set_xscale("log", base=2)
        ticks = [p.amount for p in first.points]
        labels = [f"max\n({p.amount:g})" if p.value == "max" else p.value for p in first.points]
        if info.axis == "model_size":
            labels = [f"{m}\n{_params(a)}" for m, a in (info.amounts or {}).items()]
            ticks = list((info.amounts or {}).values())
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.minorticks_off()
        ax.set_ylim(*RATE_LIMITS)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("rate (%)")
        ax.set_xlabel(f"{AXIS_NAMES[info.axis]}" + (" (log2 scale)" if log2 else ""))
        where = [] if info.axis == "model_size" else [str(first.model)]
        where += [str(first.corpus)] + ([str(first.fixed)] if first.fixed else [])
        n = max(int(c.n_items) for c in curves)
        ax.set_title(
            f"{AXIS_NAMES[info.axis]} — {' · '.join(where)}\n(n = {n} item{'' if n == 1 else 's'})",
            fontsize=8,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    fig.suptitle(
        "Scaling per axis: accuracy (solid) and high-risk error (dashed), 95% bootstrap "
        "CI bands; slope per doubling in the legend",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (4.4 * rows)))
    return fig


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _params(amount: float) -> str:
    if amount >= 1e9:
        return f"{amount / 1e9:.1f}B"
    return f"{amount / 1e6:.0f}M"


def plot_scaling_axes(metrics: MetricsReport | Mapping[str, Any], path: Path) -> Path | None:
    """Save :func:`scaling_figure` to ``path`` (None when there is nothing to draw)."""
    import matplotlib.pyplot as plt

    fig = scaling_figure(metrics)
    if fig is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
