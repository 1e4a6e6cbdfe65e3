"""Metric families of one's own on a real run of the tiny model: the documented family
installed as an entry point and one registered with the decorator are written under
``extra`` by ``safescale report`` (the viewer reads the file), the bundled sections stay
as they were, and a failing family is one error line naming it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from plugin_fixtures import METRIC_PLUGIN, install_distribution
from typer.testing import CliRunner

from safescale.corpora import load_corpus
from safescale.experiments.config import parse_config
from safescale.models.tiny import save_tiny_model
from safescale.rundir import load_responses
from safescale.statistics.metric_families import (
    ENTRY_POINT_GROUP,
    METRIC_FAMILIES,
    MetricContext,
    metric_family,
)

LIMIT = 6
CONDITIONS = ["closed_book", "clean_evidence", "standard_rag"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from safescale.experiments import run_experiment

    root = tmp_path_factory.mktemp("families")
    tiny = save_tiny_model(root / "model")
    config = parse_config(
        f"""
name: families-tiny
models:
  - name: tiny
    spec: {tiny}
corpora: [retina-rules]
conditions: [{", ".join(CONDITIONS)}]
answer: {{formulation: cloze_pmi}}
bootstrap: {{replicates: 100}}
limit: {LIMIT}
"""
    ).with_overrides(output_dir=root / "run")
    run_experiment(config, progress=False)
    return config.run_dir


def _report(run_dir: Path):
    from safescale.cli import app

    return CliRunner(env={"COLUMNS": "200"}).invoke(app, ["report", str(run_dir), "--no-plots"])


def test_report_writes_the_families_under_extra(run_dir, tmp_path):
    from safescale.experiments import read_metrics, write_report
    from safescale.viewer.data import load_view_data

    write_report(run_dir, plots=False)
    baseline_bytes = (run_dir / "metrics.json").read_bytes()
    baseline = json.loads(baseline_bytes)
    install_distribution(
        tmp_path,
        "byo_metric_plugin_run",
        "byo_metric_plugin_run",
        METRIC_PLUGIN,
        f"[{ENTRY_POINT_GROUP}]\ndeferral = byo_metric_plugin_run:deferral\n",
    )

    @metric_family("chosen_letters")
    def chosen_letters(ctx: MetricContext) -> dict:
        return {c: dict(Counter(part["chosen"])) for c, part in ctx.frame.groupby("condition")}

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.syspath_prepend(str(tmp_path))
            result = _report(run_dir)
            assert result.exit_code == 0, result.output
            metrics = read_metrics(run_dir)  # checked against MetricsReport
            view = load_view_data(run_dir)  # the viewer reads the file with extra in it
    finally:
        METRIC_FAMILIES.unregister("chosen_letters")
    assert (run_dir / "report.md").is_file()
    assert view.index["conditions"] == CONDITIONS
    assert list(metrics) == [*baseline, "extra"]
    assert {k: v for k, v in metrics.items() if k != "extra"} == baseline
    assert list(metrics["extra"]) == ["chosen_letters", "deferral"]

    # against the responses the runner wrote and the corpus labels
    corpus = load_corpus("retina-rules")
    responses = load_responses(run_dir)[0]
    letters = metrics["extra"]["chosen_letters"]
    assert set(letters) == set(CONDITIONS)
    for condition in CONDITIONS:
        own = [r for r in responses if r.condition == condition]
        assert letters[condition] == dict(Counter(r.chosen for r in own))
        deferred = sum(r.chosen == corpus.item(r.item).labels.defer for r in own)
        (row,) = [x for x in metrics["extra"]["deferral"] if x["condition"] == condition]
        assert row["model"] == "tiny" and row["corpus"] == "retina-rules"
        estimate = row["deferred"]
        assert estimate["n"] == LIMIT
        assert estimate["value"] == pytest.approx(deferred / LIMIT)
        assert estimate["lo"] <= estimate["value"] <= estimate["hi"]

    # uninstalled again: the next report writes the file it wrote before, byte for byte
    write_report(run_dir, plots=False)
    assert (run_dir / "metrics.json").read_bytes() == baseline_bytes


def test_a_failing_family_stops_the_report_with_one_line_naming_it(run_dir):
    @metric_family("fragile")
    def fragile(ctx: MetricContext) -> dict:
        raise RuntimeError(f"needs two models, got {len(ctx.models)}")

    try:
        result = _report(run_dir)
    finally:
        METRIC_FAMILIES.unregister("fragile")
    assert result.exit_code == 2
    assert "error: metric family 'fragile' failed: RuntimeError: needs two models, got 1" in (
        result.output
    )
    assert "Traceback" not in result.output
