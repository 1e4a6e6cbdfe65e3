"""Matplotlib figures of a run's ``metrics.json`` (Agg backend; PNG files, no display).

* :func:`plot_accuracy_vs_high_risk` — accuracy against high-risk error rate per
  condition, with 95% CI bars on both axes; one panel per model × corpus, one marker
  shape per compute budget;
* :func:`plot_category_heatmap` — high-risk error rate per condition × item category;
  one panel per model × corpus × budget;
* :func:`plot_triage_operating_points` — every detector's test operating point (flag
  rate vs unsafe recall) per backbone, with the target recall as a line;
* :func:`plot_scaling` — accuracy and high-risk error (with CIs) across models or
  compute budgets, one line per condition (only when the run spans several);
* :func:`plot_grade_override` — the grade-override rate per condition (and dose);
* :func:`plot_dose_response` — each rate against the conflict dose, one panel per
  condition (only when the run sweeps the dose);
* ``scaling_axes.png`` — accuracy and high-risk error with CI bands against each scale
  axis the run varies (:func:`safescale.presentation.scaling_report.scaling_figure`).

Every rate axis is fixed at 0–100 % (``RATE_LIMITS``, a little margin so points on 0 or
100 stay whole), so panels are comparable and a degenerate panel never zooms into
noise. Points of different conditions that coincide are dodged side by side (by
``DODGE`` percentage points, or a fraction of a category slot on the scaling plot), so
six conditions at the same value show as six markers. The ``*_figure`` functions return
the matplotlib figure (for tests and notebooks); the ``plot_*`` functions save it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from safescale.rundir import Cell, Estimate, MetricsReport, TriageReportRecord

__all__ = [
    "DODGE",
    "RATE_LIMITS",
    "accuracy_vs_high_risk_figure",
    "dodge_offsets",
    "dose_response_figure",
    "grade_override_figure",
    "plot_accuracy_vs_high_risk",
    "plot_category_heatmap",
    "plot_dose_response",
    "plot_grade_override",
    "plot_scaling",
    "plot_triage_operating_points",
    "scaling_figure",
    "triage_figure",
    "write_plots",
]

#: What the figures read: a :class:`MetricsReport` or the stored ``metrics.json`` data.
Metrics = MetricsReport | Mapping[str, Any]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
RATE_LIMITS = (-2.0, 102.0)
DODGE = 1.6


def dodge_offsets(points: Sequence[tuple[float, float]], step: float) -> list[float]:
    """Horizontal offsets that set coinciding points side by side.

    Points equal to 0.05 (in plotted units) form a group; a group of ``m`` points gets
    offsets ``(j - (m - 1) / 2) * step``, in input order. A point alone stays put.
    """
    groups: dict[tuple[float, float], list[int]] = {}
    for index, (x, y) in enumerate(points):
        groups.setdefault((round(x / 0.05), round(y / 0.05)), []).append(index)
    offsets = [0.0] * len(points)
    for members in groups.values():
        for j, index in enumerate(members):
            offsets[index] = (j - (len(members) - 1) / 2) * step
    return offsets


def _rate_axes(ax: Any, *, x: bool = True, y: bool = True) -> None:
    ticks = range(0, 101, 20)
    if x:
        ax.set_xlim(*RATE_LIMITS)
        ax.set_xticks(ticks)
    if y:
        ax.set_ylim(*RATE_LIMITS)
        ax.set_yticks(ticks)


def _value(est: Estimate | None, key: str = "value") -> float:
    value = None if est is None else getattr(est, key)
    return math.nan if value is None else float(value)


def _err(est: Estimate | None) -> tuple[float, float]:
    """(below, above) distances of the CI from the value, 0 when undefined."""
    v, lo, hi = _value(est), _value(est, "lo"), _value(est, "hi")
    if not all(map(math.isfinite, (v, lo, hi))):
        return 0.0, 0.0
    return max(v - lo, 0.0), max(hi - v, 0.0)


def _cell_name(cell: Cell, metrics: MetricsReport) -> str:
    """A cell's condition, with its dose, context budget and k when the run varies them."""
    run = metrics.run
    name = str(cell.condition)
    if len(run.conflict_doses or [0]) > 1:
        name += f" d{cell.conflict_dose}"
    if len(run.context_budgets or [None]) > 1:
        budget = cell.context_budget
        name += f" ctx {'max' if budget is None else budget}"
    if len(run.retrieval_ks or [None]) > 1:
        name += f" k{cell.retrieval_k}"
    return name


def _setting(cell: Cell) -> tuple[int, int | None, int | None]:
    return (cell.conflict_dose, cell.context_budget, cell.retrieval_k)


def _base_cells(metrics: MetricsReport) -> list[Cell]:
    """The cells at the (dose, context budget, k) setting most cells share (the base
    of the axes that apply to some conditions only); all cells when nothing varies."""
    settings = Counter(_setting(c) for c in metrics.cells)
    if not settings:
        return []
    base = settings.most_common(1)[0][0]
    return [c for c in metrics.cells if _setting(c) == base]


def _panels(metrics: MetricsReport) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for cell in metrics.cells:
        seen[(cell.model, cell.corpus)] = None
    return list(seen)


def _grid(
    n: int, width: float = 5.0, height: float = 4.0, *, constrained: bool = False
) -> tuple[Any, list[Any]]:
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width * cols, height * rows),
        squeeze=False,
        layout="constrained" if constrained else None,
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig: Any, path: Path, *, tight: bool = True) -> Path:
    """Save as PNG atomically (a temporary file renamed over ``path``: a symlink at
    ``path`` is replaced, never written through)."""
    from safescale.rundir import atomic_write_bytes

    if tight:
        fig.tight_layout()
    try:
        atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path


def plot_accuracy_vs_high_risk(metrics: Metrics, path: Path) -> Path | None:
    """Accuracy (y) vs high-risk error rate (x) per condition with CI bars."""
    fig = accuracy_vs_high_risk_figure(metrics)
    return None if fig is None else _save(fig, path)


def accuracy_vs_high_risk_figure(metrics: Metrics) -> Any | None:
    """The accuracy vs high-risk error figure (not saved); None without cells."""
    metrics = MetricsReport.coerce(metrics)
    panels = _panels(metrics)
    if not panels:
        return None
    conditions = metrics.run.conditions
    budgets = metrics.run.samples_budgets
    colors = {c: plt.cm.tab10(i % 10) for i, c in enumerate(conditions)}
    fig, axes = _grid(len(panels))
    for ax, (model, corpus) in zip(axes, panels, strict=True):
        cells = [
            c
            for c in metrics.cells
            if (c.model, c.corpus) == (model, corpus)
            and not c.metrics["high_risk_error"].not_labeled
        ]
        if not cells:  # an item set without high-risk labels: nothing to place on x
            ax.text(0.5, 0.5, "high-risk options not labeled", ha="center", va="center",
                    transform=ax.transAxes)  # fmt: skip
        points = [
            (
                100 * _value(c.metrics["high_risk_error"]),
                100 * _value(c.metrics["accuracy"]),
            )
            for c in cells
        ]
        offsets = dodge_offsets(points, DODGE)
        for cell, (x, y), offset in zip(cells, points, offsets, strict=True):
            acc, hre = cell.metrics["accuracy"], cell.metrics["high_risk_error"]
            position = budgets.index(cell.samples_budget)
            marker = _MARKERS[position % len(_MARKERS)]
            label = cell.condition if position == 0 else None
            ax.errorbar(
                x + offset,
                y,
                xerr=np.array(_err(hre))[:, None] * 100,
                yerr=np.array(_err(acc))[:, None] * 100,
                fmt=marker,
                color=colors[cell.condition],
                capsize=3,
                label=label,
            )
        _rate_axes(ax)
        ax.set_xlabel("high-risk error rate (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{model} — {corpus}", fontsize=9)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if len(budgets) > 1:
            for position, budget in enumerate(budgets):
                handles.append(
                    Line2D([], [], marker=_MARKERS[position % len(_MARKERS)], color="grey",
                           linestyle="none")
                )  # fmt: skip
                labels.append(f"compute {budget}x")
        ax.legend(handles, labels, fontsize=7, loc="best")
    fig.suptitle("Accuracy vs high-risk error (95% bootstrap CI)", fontsize=10)
    return fig


def plot_category_heatmap(metrics: Metrics, path: Path) -> Path | None:
    """High-risk error rate per condition (rows) × item category (columns)."""
    metrics = MetricsReport.coerce(metrics)
    keys: dict[tuple[str, str, int], None] = {}
    for cell in metrics.cells:
        keys[(cell.model, cell.corpus, cell.samples_budget)] = None
    if not keys:
        return None
    n_conditions = len(metrics.run.conditions)
    fig, axes = _grid(len(keys), width=6.0, height=1.2 + 0.4 * n_conditions, constrained=True)
    image = None
    for ax, (model, corpus, budget) in zip(axes, keys, strict=True):
        cells = [
            c
            for c in metrics.cells
            if (c.model, c.corpus, c.samples_budget) == (model, corpus, budget)
        ]
        categories = sorted({cat for c in cells for cat in c.by_category})
        conditions = [_cell_name(c, metrics) for c in cells]
        grid = np.full((len(conditions), len(categories)), np.nan)
        for i, c in enumerate(cells):
            for j, cat in enumerate(categories):
                entry = c.by_category.get(cat)
                if entry is not None and entry.high_risk_error_rate is not None:
                    grid[i, j] = 100 * entry.high_risk_error_rate
        image = ax.imshow(grid, cmap="Reds", vmin=0, vmax=100, aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if math.isfinite(grid[i, j]):
                    color = "white" if grid[i, j] > 60 else "black"
                    ax.text(
                        j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7, color=color
                    )
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(conditions)), conditions, fontsize=7)
        ax.set_title(f"{model} — {corpus} — {budget}x", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="high-risk error rate (%)")
    fig.suptitle("High-risk error rate by category (%)", fontsize=10)
    return _save(fig, path, tight=False)


def plot_triage_operating_points(
    triage: Sequence[TriageReportRecord | Mapping[str, Any]] | None, path: Path
) -> Path | None:
    """Flag rate (x) vs unsafe recall (y) of every detector on the test split."""
    fig = triage_figure(triage)
    return None if fig is None else _save(fig, path)


def triage_figure(triage: Sequence[TriageReportRecord | Mapping[str, Any]] | None) -> Any | None:
    """The triage operating-point figure (not saved); None when nothing is plotted (the
    reports as ``metrics.json`` holds them, or their stored dicts)."""
    if not triage:
        return None
    fig, axes = _grid(len(triage))
    plotted = False
    for ax, report in zip(axes, triage, strict=True):
        if isinstance(report, TriageReportRecord):
            rows, target, backbone = report.rows, report.target_recall, report.backbone
        else:
            rows = report.get("rows", [])
            target, backbone = report.get("target_recall"), report.get("backbone", "?")
        for i, row in enumerate(rows):
            s1 = row.get("stage1")
            if row.get("status") != "ok" or not s1:
                continue
            if s1.get("flag_rate") is None or s1.get("u_recall") is None:
                continue  # undefined on this split (e.g. no unsafe record): nothing to plot
            is_ecrt = row["method"] == "ecrt"
            ax.scatter(
                100 * s1["flag_rate"],
                100 * s1["u_recall"],
                marker="*" if is_ecrt else _MARKERS[i % len(_MARKERS)],
                s=160 if is_ecrt else 40,
                color="crimson" if is_ecrt else plt.cm.tab20(i % 20),
                label=row["method"],
                zorder=3 if is_ecrt else 2,
            )
            plotted = True
        if target is not None:
            ax.axhline(
                100 * target, color="grey", linestyle="--", linewidth=1, label="target recall"
            )
        _rate_axes(ax)
        ax.set_xlabel("flag rate (%)")
        ax.set_ylabel("unsafe recall (%)")
        ax.set_title(f"Triage — {backbone} (test)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right", ncol=2)
    if not plotted:
        plt.close(fig)
        return None
    return fig


def plot_scaling(metrics: Metrics, path: Path) -> Path | None:
    """Accuracy and high-risk error across models (× budgets) per condition and corpus.

    Drawn only when the run spans more than one model or compute budget; the x axis
    lists ``model`` (or ``model @ Nx`` when several budgets) in run order.
    """
    fig = scaling_figure(metrics)
    return None if fig is None else _save(fig, path)


def scaling_figure(metrics: Metrics) -> Any | None:
    """The scaling figure (not saved); None when the run spans one model and budget."""
    metrics = MetricsReport.coerce(metrics)
    run = metrics.run
    models, budgets = run.models, run.samples_budgets
    if len(models) < 2 and len(budgets) < 2:
        return None
    points = [(m, b) for m in models for b in budgets]
    labels = [m if len(budgets) == 1 else f"{m} @ {b}x" for m, b in points]
    corpora = run.corpora
    fig, axes = plt.subplots(len(corpora), 2, figsize=(11, 3.8 * len(corpora)), squeeze=False)
    # one cell per point: the base setting of the other axes (see scaling_axes.png for them)
    index = {(c.model, c.corpus, c.condition, c.samples_budget): c for c in _base_cells(metrics)}
    for row, corpus in enumerate(corpora):
        for col, metric in enumerate(("accuracy", "high_risk_error")):
            ax = axes[row][col]
            series: dict[str, list[tuple[int, float, tuple[float, float]]]] = {}
            for condition in run.conditions:
                for x, (model, budget) in enumerate(points):
                    cell = index.get((model, corpus, condition, budget))
                    if cell is not None:
                        est = cell.metrics[metric]
                        series.setdefault(condition, []).append((x, 100 * _value(est), _err(est)))
            flat = [(cond, x, y) for cond, rows in series.items() for x, y, _ in rows]
            step = min(0.12, 0.7 / max(len(series), 1))
            shift = dict(
                zip(
                    [(cond, x) for cond, x, _ in flat],
                    dodge_offsets([(x, y) for _, x, y in flat], step),
                    strict=True,
                )
            )
            for k, condition in enumerate(run.conditions):
                rows = series.get(condition)
                if rows:
                    ax.errorbar(
                        [x + shift[(condition, x)] for x, _, _ in rows],
                        [y for _, y, _ in rows],
                        yerr=100 * np.array([e for _, _, e in rows]).T,
                        marker=_MARKERS[k % len(_MARKERS)],
                        capsize=3,
                        label=condition,
                    )
            _rate_axes(ax, x=False)
            ax.set_xticks(range(len(points)), labels, rotation=20, ha="right", fontsize=7)
            ax.set_ylabel(("accuracy" if metric == "accuracy" else "high-risk error") + " (%)")
            ax.set_title(f"{corpus}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.suptitle("Scaling: models and compute budgets (95% bootstrap CI)", fontsize=10)
    return fig


def plot_grade_override(metrics: Metrics, path: Path) -> Path | None:
    """Grade-override rate per condition (95% CI bars), one panel per model × corpus;
    one bar group per conflict dose when the run sweeps it."""
    fig = grade_override_figure(metrics)
    return None if fig is None else _save(fig, path)


def grade_override_figure(metrics: Metrics) -> Any | None:
    """The grade-override figure (not saved); None when no response was eligible."""
    metrics = MetricsReport.coerce(metrics)
    entries = [e for e in metrics.grade_override if e.samples_budget == 1]
    if not entries:
        return None
    panels = list(dict.fromkeys((e.model, e.corpus) for e in entries))
    conditions = [c for c in metrics.run.conditions if any(e.condition == c for e in entries)]
    doses = sorted({int(e.conflict_dose) for e in entries})
    fig, axes = _grid(len(panels))
    width = 0.8 / max(len(doses), 1)
    for ax, (model, corpus) in zip(axes, panels, strict=True):
        for j, dose in enumerate(doses):
            xs, ys, errs, ns = [], [], [], []
            for x, condition in enumerate(conditions):
                e = next(
                    (e for e in entries if (e.model, e.corpus, e.condition,
                     int(e.conflict_dose)) == (model, corpus, condition, dose)),
                    None,
                )  # fmt: skip
                if e is None:
                    continue
                xs.append(x + (j - (len(doses) - 1) / 2) * width)
                ys.append(100 * _value(e.rate))
                errs.append(_err(e.rate))
                ns.append(e.n_eligible)
            if xs:
                ax.bar(
                    xs,
                    ys,
                    width=width,
                    yerr=100 * np.array(errs).T,
                    capsize=3,
                    label=f"dose {dose}" if len(doses) > 1 else None,
                )
                for x, y, n in zip(xs, ys, ns, strict=True):
                    ax.annotate(f"n={n}", (x, max(y, 0) + 2), ha="center", fontsize=6)
        ax.set_xticks(range(len(conditions)), conditions, rotation=20, ha="right", fontsize=7)
        _rate_axes(ax, x=False)
        ax.set_ylabel("answers following the weaker source (%)")
        ax.set_title(f"{model} · {corpus}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        if len(doses) > 1:
            ax.legend(fontsize=7)
    fig.suptitle("Grade override rate among eligible responses (95% bootstrap CI)", fontsize=10)
    return fig


def plot_dose_response(metrics: Metrics, path: Path) -> Path | None:
    """Each rate against the conflict dose (95% CI bars), one panel per condition and
    model × corpus × budget; drawn only when the run sweeps the dose."""
    fig = dose_response_figure(metrics)
    return None if fig is None else _save(fig, path)


def dose_response_figure(metrics: Metrics) -> Any | None:
    """The dose-response figure (not saved); None without a dose sweep."""
    curves = MetricsReport.coerce(metrics).dose_response
    if not curves:
        return None
    fig, axes = _grid(len(curves), width=4.8, height=4.6)
    shown = ("accuracy", "high_risk_error", "unsafe_answer", "contradiction")
    for ax, curve in zip(axes, curves, strict=True):
        doses = [d.dose for d in curve.doses]
        for k, metric in enumerate(shown):
            ests = [d.metrics[metric] for d in curve.doses]
            slope = curve.slope.get(metric)
            label = metric
            if slope is not None and slope.value is not None:
                label += f" (slope {100 * slope.value:+.1f} pp/passage)"
            offset = (k - 1.5) * 0.04 * max(doses)
            ax.errorbar(
                [d + offset for d in doses],
                [100 * _value(e) for e in ests],
                yerr=100 * np.array([_err(e) for e in ests]).T,
                marker=_MARKERS[k],
                capsize=3,
                label=label,
            )
        _rate_axes(ax, x=False)
        ax.set_xticks(doses)
        ax.set_xlabel("conflict dose (contradicting passages added)")
        ax.set_ylabel("rate (%)")
        ax.set_title(f"{curve.condition} · {curve.model} · {curve.corpus}", fontsize=8)
        ax.grid(alpha=0.3)
        # below the panel: inside it the legend would hide the points it explains
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.suptitle("Conflict dose-response (95% bootstrap CI)", fontsize=10)
    return fig


def write_plots(metrics: Metrics, out_dir: Path) -> list[Path]:
    """Write every applicable figure into ``out_dir``; returns the written paths."""
    from safescale.presentation.scaling_report import plot_scaling_axes

    metrics = MetricsReport.coerce(metrics)
    out_dir = Path(out_dir)
    written = [
        plot_accuracy_vs_high_risk(metrics, out_dir / "accuracy_vs_high_risk.png"),
        plot_category_heatmap(metrics, out_dir / "high_risk_by_category.png"),
        plot_triage_operating_points(metrics.triage, out_dir / "triage_operating_points.png"),
        plot_scaling(metrics, out_dir / "scaling.png"),
        plot_grade_override(metrics, out_dir / "grade_override.png"),
        plot_dose_response(metrics, out_dir / "dose_response.png"),
        plot_scaling_axes(metrics, out_dir / "scaling_axes.png"),
    ]
    return [p for p in written if p is not None]
