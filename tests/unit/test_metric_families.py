"""Metric families: the bundled sections in their fixed order, families of one's own
(decorator and installed entry point) under ``extra``, clashes and failures named."""

from __future__ import annotations

import json

import pytest
from plugin_fixtures import METRIC_PLUGIN, install_distribution
from test_experiments_metrics import (
    FAST,
    closed_book_records,
    standard_rag_records,
    tiny_corpus,
)

from safescale.rundir import MetricsReport
from safescale.statistics.metric_families import (
    BUNDLED_FAMILIES,
    ENTRY_POINT_GROUP,
    METRIC_FAMILIES,
    MetricContext,
    MetricFamilyError,
    extra_families,
    metric_family,
    run_family,
)
from safescale.statistics.metrics import (
    CELL_KEYS,
    metric_context,
    metrics_from_records,
    outcome_frame,
)


def _records():
    return standard_rag_records() + closed_book_records()


def _metrics(**kwargs):
    return metrics_from_records(_records(), {"tiny": tiny_corpus()}, bootstrap=FAST, **kwargs)


@pytest.fixture
def registered():
    """Register families with the decorator for one test; removed afterwards."""
    names: list[str] = []

    def register(name: str):
        names.append(name)
        return metric_family(name)

    yield register
    for name in names:
        METRIC_FAMILIES.unregister(name)


def test_the_bundled_families_write_their_sections_in_the_fixed_order():
    metrics = _metrics()
    assert list(metrics) == ["schema_version", *BUNDLED_FAMILIES]
    assert "extra" not in metrics  # no family of one's own: the file is as it was
    assert set(BUNDLED_FAMILIES) <= set(METRIC_FAMILIES.names())
    assert {METRIC_FAMILIES.get(n).__module__ for n in BUNDLED_FAMILIES} == {
        "safescale.statistics.metrics"
    }
    assert extra_families() == []
    MetricsReport.model_validate(metrics)


def test_metrics_are_byte_identical_when_computed_again():
    first = json.dumps(_metrics(), indent=2, allow_nan=False)
    assert json.dumps(_metrics(), indent=2, allow_nan=False) == first
    other_seed = FAST.model_copy(update={"seed": 2})
    again = metrics_from_records(_records(), {"tiny": tiny_corpus()}, bootstrap=other_seed)
    assert json.dumps(again, indent=2, allow_nan=False) != first  # the seed is used


def test_the_context_holds_the_run_in_report_order():
    ctx = metric_context(_records(), {"tiny": tiny_corpus()}, bootstrap=FAST, model_order=["m"])
    assert ctx.models == ("m",) and ctx.corpus_names == ("tiny",)
    assert ctx.conditions == ("closed_book", "standard_rag")  # paper order
    assert ctx.settings == ((1, 0, 0, 5),) and ctx.unit == "item"
    assert ctx.frame.equals(outcome_frame(_records(), {"tiny": tiny_corpus()}))
    assert {key[2]: len(sub) for key, sub in ctx.groups.items()} == {
        "standard_rag": 4,
        "closed_book": 4,
    }
    with pytest.raises(AttributeError):  # frozen
        ctx.unit = "evidence_id"


def test_a_registered_family_goes_under_extra_and_leaves_the_rest_unchanged(registered):
    baseline = _metrics()
    seen: list[MetricContext] = []

    @registered("cell_accuracy")
    def cell_accuracy(ctx: MetricContext) -> list[dict]:
        seen.append(ctx)
        rows = []
        for key, cell in ctx.groups.items():
            sums = cell.groupby(ctx.unit, sort=True)[["correct"]].sum()
            sums["n"] = cell.groupby(ctx.unit, sort=True).size()
            (rate,) = ctx.resampler.ratio(sums, ["correct"], "n", len(cell))
            rows.append({**dict(zip(CELL_KEYS, key, strict=True)), "accuracy": rate})
        return rows

    metrics = _metrics()
    assert list(metrics) == ["schema_version", *BUNDLED_FAMILIES, "extra"]
    assert {k: v for k, v in metrics.items() if k != "extra"} == baseline
    (ctx,) = seen
    assert ctx.conditions == ("closed_book", "standard_rag")
    rows = {row["condition"]: row for row in metrics["extra"]["cell_accuracy"]}
    assert set(rows) == {"closed_book", "standard_rag"}
    for cell in metrics["cells"]:
        # the same resamples as the cell's own rate: the same value and interval
        assert rows[cell["condition"]]["accuracy"] == cell["metrics"]["accuracy"]
    assert rows["standard_rag"]["accuracy"]["value"] == pytest.approx(0.25)
    assert rows["standard_rag"]["samples_budget"] == 1  # numpy ints are plain JSON
    MetricsReport.model_validate(metrics)
    json.dumps(metrics, allow_nan=False)


def test_several_families_run_sorted_by_name(registered):
    order: list[str] = []
    for name in ("zeta", "alpha", "mid"):
        registered(name)(lambda ctx, name=name: order.append(name) or {"n": len(ctx.frame)})
    metrics = _metrics()
    assert order == ["alpha", "mid", "zeta"]
    assert list(metrics["extra"]) == ["alpha", "mid", "zeta"]
    assert metrics["extra"]["mid"] == {"n": 8}


def test_a_family_cannot_take_a_bundled_name_or_a_held_one(registered):
    with pytest.raises(MetricFamilyError, match="'cells' has the name of a bundled family"):
        metric_family("cells")
    with pytest.raises(ValueError, match="metric family name 'a/b' is not a slug"):
        metric_family("a/b")
    registered("mine")(lambda ctx: 1)
    with pytest.raises(ValueError, match="metric family 'mine' is already registered"):
        metric_family("mine")(lambda ctx: 2)


def test_a_failing_family_names_itself(registered):
    @registered("broken")
    def broken(ctx):
        return 1 / 0

    with pytest.raises(
        MetricFamilyError, match="metric family 'broken' failed: ZeroDivisionError: division"
    ) as failed:
        _metrics()
    assert isinstance(failed.value.__cause__, ZeroDivisionError)
    METRIC_FAMILIES.unregister("broken")

    registered("a_set")(lambda ctx: {"items": {"i1", "i2"}})
    with pytest.raises(MetricFamilyError, match="'a_set' returned a section that is not JSON"):
        _metrics()
    METRIC_FAMILIES.unregister("a_set")

    registered("nan")(lambda ctx: {"x": float("nan")})
    assert _metrics()["extra"] == {"nan": {"x": None}}


def test_a_bundled_family_failure_keeps_its_type_and_is_named():
    ctx = metric_context(_records(), {"tiny": tiny_corpus()}, bootstrap=FAST)

    def failing(ctx):
        raise KeyError("rad-0001")

    with pytest.raises(KeyError) as failed:
        run_family("cells", failing, ctx)
    assert failed.value.__notes__ == ["(in the bundled metric family 'cells')"]


def test_an_entry_point_family_is_loaded_and_written_under_extra(tmp_path, monkeypatch):
    install_distribution(
        tmp_path,
        "byo_metric_plugin",
        "byo_metric_plugin",
        METRIC_PLUGIN,
        f"[{ENTRY_POINT_GROUP}]\ndeferral = byo_metric_plugin:deferral\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "deferral" in METRIC_FAMILIES.names()
    ((name, family),) = extra_families()
    assert name == "deferral" and family.__module__ == "byo_metric_plugin"
    metrics = _metrics()
    rows = {row["condition"]: row["deferred"] for row in metrics["extra"]["deferral"]}
    # i3 (defer option A) is the only item with a defer option: closed-book chose A on it
    assert rows["closed_book"]["value"] == pytest.approx(0.25)
    assert rows["standard_rag"]["value"] == 0.0
    assert rows["closed_book"]["n"] == 4 and rows["closed_book"]["lo"] <= 0.25
    assert "deferral" not in METRIC_FAMILIES.registered()  # looked up, not kept


def test_entry_points_that_clash_or_do_not_load_are_named(tmp_path):
    clash, broken = tmp_path / "clash", tmp_path / "broken"
    clash.mkdir(), broken.mkdir()
    install_distribution(
        clash,
        "clashing_metric_plugin",
        "clashing_metric_plugin",
        "def cells(ctx):\n    return []\n",
        f"[{ENTRY_POINT_GROUP}]\ncells = clashing_metric_plugin:cells\n",
    )
    install_distribution(
        broken,
        "broken_metric_plugin",
        "broken_metric_plugin",
        "raise RuntimeError('missing dependency')\n",
        f"[{ENTRY_POINT_GROUP}]\nbad = broken_metric_plugin:family\n",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(clash))
        with pytest.raises(
            MetricFamilyError,
            match=r"entry point 'cells' \(clashing_metric_plugin:cells\) has the name of a "
            "bundled family",
        ):
            _metrics()
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(broken))
        with pytest.raises(
            MetricFamilyError,
            match=r"loading metric family entry point 'bad' \(broken_metric_plugin:family\) "
            "failed: RuntimeError: missing dependency",
        ):
            _metrics()
    assert extra_families() == []  # uninstalled again
