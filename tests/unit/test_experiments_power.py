"""Power and MDE of paired comparisons: closed form, simulation and the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from safescale.statistics.power import (
    anova_icc,
    minimum_detectable_effect,
    plan_sample_size,
    required_items,
)


def test_required_items_matches_connor_closed_form():
    za, zb = norm.ppf(0.975), norm.ppf(0.8)
    delta, psi = 0.05, 0.2
    closed = (za * math.sqrt(psi) + zb * math.sqrt(psi - delta**2)) ** 2 / delta**2
    assert required_items(delta, psi) == math.ceil(closed)
    assert required_items(delta, psi) == 626
    # the simpler approximation ignoring delta^2 is a little larger
    assert plan_sample_size(delta, psi).approximate_items == 628


def test_mde_inverts_the_sample_size():
    for delta, psi in [(0.05, 0.2), (0.1, 0.3), (0.2, 0.5)]:
        n = required_items(delta, psi)
        mde = minimum_detectable_effect(n, psi)
        assert mde <= delta + 1e-9
        assert minimum_detectable_effect(n - 1, psi) > mde
        assert abs(mde - delta) < 0.002


def test_power_at_the_planned_n_is_80_percent_by_simulation():
    """A seeded simulation of McNemar's test at Connor's n gives 80% power (±1 point)."""
    delta, psi = 0.05, 0.2
    n = required_items(delta, psi)
    rng = np.random.default_rng(7)
    sims = 40_000
    # discordant cells: b (A right, B wrong) and c (A wrong, B right)
    p_b, p_c = (psi + delta) / 2, (psi - delta) / 2
    counts = rng.multinomial(n, [p_b, p_c, 1 - psi], size=sims)
    b, c = counts[:, 0], counts[:, 1]
    z = (b - c) / np.sqrt(np.maximum(b + c, 1))
    power = float(np.mean(np.abs(z) > norm.ppf(0.975)))
    assert abs(power - 0.8) < 0.01


def test_mde_of_a_run_sized_comparison():
    # n = 100 items, 30% discordant: about (1.96 + 0.84) sqrt(0.3 / 100) = 15.3 pp
    mde = minimum_detectable_effect(100, 0.3)
    assert 0.14 < mde < 0.154
    assert math.isnan(minimum_detectable_effect(0, 0.3))
    # 10 items with 30% discordance: not even a 30 pp difference is detectable
    assert math.isinf(minimum_detectable_effect(10, 0.3))
    assert math.isnan(minimum_detectable_effect(100, 0.0))


def test_design_effect_and_clusters():
    plan = plan_sample_size(0.05, 0.2, cluster_size=4, icc=0.1)
    assert plan.design_effect == pytest.approx(1.3)
    assert plan.items_clustered == math.ceil(626 * 1.3)
    assert plan.clusters == math.ceil(plan.items_clustered / 4)


def test_invalid_plans_are_refused():
    with pytest.raises(ValueError, match="exceeds the discordance"):
        required_items(0.3, 0.2)
    with pytest.raises(ValueError, match="non-zero"):
        required_items(0.0, 0.2)
    with pytest.raises(ValueError, match="icc"):
        plan_sample_size(0.05, 0.2, icc=1.5)


def test_anova_icc():
    # identical values within clusters, different between -> 1; constant -> 0
    assert anova_icc([1, 1, 0, 0, 1, 1], ["a", "a", "b", "b", "c", "c"]) == pytest.approx(1.0)
    assert anova_icc([1, 1, 1, 1], ["a", "a", "b", "b"]) == 0.0
    assert anova_icc([1, 0, 1, 0], ["a", "b", "c", "d"]) == 0.0


def test_plan_cli_prints_items_and_clusters():
    from typer.testing import CliRunner

    from safescale.cli import app

    result = CliRunner().invoke(
        app,
        ["plan", "--effect", "0.05", "--discordance", "0.2", "--cluster-size", "4",
         "--icc", "0.1"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "626 items" in result.output
    assert "814 items in 204 evidence clusters" in result.output
    bad = CliRunner().invoke(app, ["plan", "--effect", "0.05"])
    assert bad.exit_code == 2
