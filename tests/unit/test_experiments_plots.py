"""Figures of a run's metrics: fixed 0-100 % rate axes, coinciding conditions dodged."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from test_experiments_metrics import FAST, standard_rag_records, tiny_corpus

from safescale.presentation.plots import (
    DODGE,
    RATE_LIMITS,
    accuracy_vs_high_risk_figure,
    dodge_offsets,
    plot_accuracy_vs_high_risk,
    scaling_figure,
    triage_figure,
    write_plots,
)
from safescale.statistics.metrics import metrics_from_records

SIX = [
    "closed_book",
    "standard_rag",
    "clean_evidence",
    "conflict_evidence",
    "max_context",
    "agentic_rag",
]


@pytest.fixture(scope="module")
def six_identical() -> dict:
    """Six conditions that answer identically (so every point coincides)."""
    records = [r for condition in SIX for r in standard_rag_records(condition)]
    records += [r.model_copy(update={"samples_budget": 4}) for r in records]
    return metrics_from_records(records, {"tiny": tiny_corpus()}, bootstrap=FAST)


def _marker_xy(ax) -> list[tuple[float, float]]:
    out = []
    for container in ax.containers:
        line = container.lines[0]
        out.append((float(line.get_xdata()[0]), float(line.get_ydata()[0])))
    return out


def test_coinciding_conditions_are_dodged_side_by_side(six_identical: dict) -> None:
    fig = accuracy_vs_high_risk_figure(six_identical)
    try:
        (ax,) = fig.axes
        points = _marker_xy(ax)
        assert len(points) == 12  # six conditions x two budgets
        xs = sorted(x for x, _ in points)
        assert len(set(xs)) == 12  # none hides behind another
        assert {y for _, y in points} == {25.0}
        assert sum(xs) / len(xs) == pytest.approx(50.0)  # dodged around the true 50 %
        assert max(xs) - min(xs) == pytest.approx(11 * DODGE)
        assert ax.get_xlim() == RATE_LIMITS and ax.get_ylim() == RATE_LIMITS
    finally:
        plt.close(fig)


def test_degenerate_rates_keep_the_fixed_axes(tmp_path: Path) -> None:
    records = [r.model_copy(update={"chosen": "A"}) for r in standard_rag_records()][:1]
    metrics = metrics_from_records(records, {"tiny": tiny_corpus()}, bootstrap=FAST)
    fig = accuracy_vs_high_risk_figure(metrics)
    try:
        (ax,) = fig.axes
        assert ax.get_xlim() == RATE_LIMITS and ax.get_ylim() == RATE_LIMITS
        assert _marker_xy(ax) == [(0.0, 100.0)]
    finally:
        plt.close(fig)
    path = plot_accuracy_vs_high_risk(metrics, tmp_path / "a.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_figure_uses_rate_axes_and_dodges(six_identical: dict) -> None:
    fig = scaling_figure(six_identical)
    try:
        accuracy, high_risk = fig.axes[:2]
        for ax in (accuracy, high_risk):
            assert ax.get_ylim() == RATE_LIMITS
            xs = [x for c in ax.containers for x in c.lines[0].get_xdata()]
            assert len(xs) == 12 and len(set(xs)) == 12
    finally:
        plt.close(fig)


def test_triage_figure_axes_are_fixed() -> None:
    triage = [
        {
            "backbone": "m",
            "target_recall": 0.9,
            "rows": [
                {"method": "ecrt", "status": "ok", "stage1": {"flag_rate": 0.0, "u_recall": 0.0}}
            ],
        }
    ]
    fig = triage_figure(triage)
    try:
        (ax,) = fig.axes
        assert ax.get_xlim() == RATE_LIMITS and ax.get_ylim() == RATE_LIMITS
    finally:
        plt.close(fig)


def test_write_plots_writes_pngs(six_identical: dict, tmp_path: Path) -> None:
    written = write_plots(six_identical, tmp_path)
    assert {p.name for p in written} == {
        "accuracy_vs_high_risk.png",
        "high_risk_by_category.png",
        "scaling.png",
        "scaling_axes.png",  # the compute budget (1x, 4x) is a scaling axis
    }
    assert all(p.stat().st_size > 1000 for p in written)


def test_dodge_offsets_leave_single_points_alone() -> None:
    assert dodge_offsets([(10.0, 20.0), (30.0, 20.0)], 2.0) == [0.0, 0.0]
    assert dodge_offsets([(10.0, 20.0), (10.0, 20.0), (10.0, 20.0)], 2.0) == [-2.0, 0.0, 2.0]


def test_triage_figure_skips_undefined_operating_points():
    from safescale.presentation.plots import triage_figure

    triage = [
        {
            "backbone": "m",
            "target_recall": 0.95,
            "rows": [
                {"method": "ecrt", "status": "ok", "stage1": {"flag_rate": None, "u_recall": None}},
                {"method": "mte", "status": "ok", "stage1": {"flag_rate": 0.5, "u_recall": 1.0}},
            ],
        }
    ]
    fig = triage_figure(triage)
    (ax,) = [a for a in fig.axes if a.get_title()]
    offsets = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert offsets == [(50.0, 100.0)]
