"""A condition defined outside the package (``tests/fixtures_conditions.py``, named by
import path) in a real sweep on the tiny model beside bundled conditions, with a
detector from an installed plugin distribution: its responses, steps, attribution,
metrics, comparisons, trace, replay, detection and viewer data are all there."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from plugin_fixtures import DETECTOR_PLUGIN, install_distribution
from typer.testing import CliRunner

from safescale.corpora import Status, load_corpus
from safescale.experiments.config import parse_config
from safescale.models.tiny import save_tiny_model
from safescale.rundir import load_attribution, load_responses, load_steps

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent  # examples/ is imported as the examples package from here
CONDITIONS = ["closed_book", "standard_rag", "top_two_rag", "hyde", "crag"]
#: Reports list the bundled conditions in paper order, then the others by name.
REPORT_ORDER = ["closed_book", "standard_rag", "crag", "hyde", "top_two_rag"]
LIMIT = 6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from safescale.experiments import run_detection_stage, run_experiment, write_report

    root = tmp_path_factory.mktemp("byo")
    tiny = save_tiny_model(root / "model")
    plugins = root / "plugins"
    plugins.mkdir()
    install_distribution(
        plugins,
        "byo_detector_plugin_run",
        "byo_detector_plugin_run",
        DETECTOR_PLUGIN,
        "[safescale.detectors]\npmi_nll_run = byo_detector_plugin_run:PmiNll\n",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(TESTS))
        mp.syspath_prepend(str(ROOT))
        mp.syspath_prepend(str(plugins))
        config = parse_config(
            f"""
name: byo-tiny
models:
  - name: tiny
    spec: {tiny}
corpora: [radiology-guidelines]
conditions:
  - closed_book
  - standard_rag
  - fixtures_conditions:build_graph
  - examples.hyde:build_graph
  - examples.crag:build_graph
retrieval: {{k: 4}}
answer: {{formulation: cloze_pmi}}
metrics:
  comparisons: [[top_two_rag, standard_rag], [hyde, standard_rag], [crag, standard_rag]]
detection:
  enabled: true
  detectors: [pmi_nll_run, length]
  label_source: outcome
bootstrap: {{replicates: 100}}
limit: {LIMIT}
"""
        ).with_overrides(output_dir=root / "run")
        run_experiment(config, progress=False)
        run_detection_stage(config)
        write_report(config.run_dir, plots=False)
        yield config.run_dir


def _ours(records):
    return [r for r in records if r.condition == "top_two_rag"]


def test_responses_and_steps_of_the_external_condition_are_complete(run_dir):
    responses = load_responses(run_dir)[0]
    assert Counter(r.condition for r in responses) == dict.fromkeys(CONDITIONS, LIMIT)
    corpus = load_corpus("radiology-guidelines")
    steps = load_steps(run_dir)
    for response in _ours(responses):
        assert response.formulation == "cloze_pmi" and response.chosen in response.letters
        assert 1 <= len(response.evidence_ids) <= 2
        assert all(corpus.passage(p).status is Status.CURRENT for p in response.evidence_ids)
        own = sorted(
            (s for s in steps if s.condition == "top_two_rag" and s.item == response.item),
            key=lambda s: s.step,
        )
        assert [s.node for s in own] == ["retrieve", "filter", "keep_top_two", "answer"]
        assert [s.step for s in own] == [0, 1, 2, 3]
        assert own[2].kept == response.evidence_ids
        assert own[3].prompt_id and own[3].prompt_tokens > 0
        assert response.prompt_tokens == sum(s.prompt_tokens for s in own)


def test_the_examples_ran_their_own_graphs(run_dir):
    responses = {(r.condition, r.item): r for r in load_responses(run_dir)[0]}
    steps = load_steps(run_dir)
    by_item: dict = {}
    for s in sorted(steps, key=lambda s: s.step):
        by_item.setdefault((s.condition, s.item), []).append(s)
    for (condition, item), own in by_item.items():
        nodes = [s.node for s in own]
        if condition == "hyde":
            assert nodes == ["hypothesize", "retrieve", "answer"]
            # the retrieval searched with the generated passage, not the question
            assert own[1].detail["query"] == own[0].output
            assert responses[condition, item].evidence_ids == own[1].kept
        elif condition == "crag":
            assert nodes in (
                ["retrieve", "critique", "answer"],
                ["retrieve", "critique", "requery", "retrieve", "answer"],
            )
            weak = own[1].decision == "requery"
            assert (len(nodes) == 5) == weak
            final = own[3].kept if weak else own[1].kept
            assert responses[condition, item].evidence_ids == final
            assert set(own[1].detail["relevance_margin"]) == set(own[0].kept)


def test_failures_of_the_external_condition_are_attributed(run_dir):
    corpus = load_corpus("radiology-guidelines")
    responses = load_responses(run_dir)[0]
    failing = {
        r.item
        for r in _ours(responses)
        if r.chosen in corpus.item(r.item).labels.high_risk + corpus.item(r.item).labels.unsafe
    }
    rows = [a for a in load_attribution(run_dir) if a.condition == "top_two_rag"]
    assert {a.item for a in rows} == failing
    for row in rows:
        assert row.node in {"retrieve", "filter", "keep_top_two", "answer"}


def test_metrics_and_report_have_its_row_and_comparisons(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["conditions"] == REPORT_ORDER
    (cell,) = [c for c in metrics["cells"] if c["condition"] == "top_two_rag"]
    assert cell["n"] == LIMIT
    accuracy = cell["metrics"]["accuracy"]
    assert accuracy["n"] == LIMIT and accuracy["lo"] <= accuracy["value"] <= accuracy["hi"]
    pairs = {(c["a"], c["b"]) for c in metrics["comparisons"] if c["kind"] == "condition"}
    assert pairs == {(c, "standard_rag") for c in ("top_two_rag", "hyde", "crag")}
    assert "top_two_rag" in (run_dir / "report.md").read_text()


def test_trace_and_replay_work_on_it(run_dir):
    from safescale.cli import app
    from safescale.experiments.replay import replay_item

    old = next(r for r in _ours(load_responses(run_dir)[0]) if r.evidence_ids)
    result = CliRunner().invoke(app, ["trace", str(run_dir), old.item, "-c", "top_two_rag"])
    assert result.exit_code == 0, result.output
    assert "keep_top_two" in result.output and "filter" in result.output
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(TESTS))
        replayed = replay_item(run_dir, old.item, "top_two_rag", [old.evidence_ids[0]])
    assert replayed.fork_step == 0  # forked after the retrieval
    assert old.evidence_ids[0] not in replayed.new.evidence_ids
    assert [s.node for s in replayed.new_steps][-3:] == ["filter", "keep_top_two", "answer"]


def test_the_plugin_detector_ran_and_the_viewer_shows_the_condition(run_dir):
    from safescale.viewer.data import load_view_data

    (triage,) = run_dir.glob("detection/*/triage.json")
    rows = {row["method"]: row for row in json.loads(triage.read_text())["rows"]}
    # the declared detectors, and the input-only control that every triage report carries
    assert set(rows) == {"pmi_nll_run", "length", "input_only"}
    assert rows["input_only"]["kind"] == "control"
    assert {rows[m]["kind"] for m in ("pmi_nll_run", "length")} == {"detector"}
    # its declared inputs drove extraction: the NOCTX pass behind "pmi" ran for it alone
    features = pd.read_parquet(triage.parent / "features.parquet")
    assert {"pmi", "msp_seq"} <= set(features.columns)
    assert features["pmi"].notna().all()
    assert "not extracted" not in (rows["pmi_nll_run"].get("reason") or "")
    models = triage.parent / "models" / "pmi_nll_run"
    trained = (models / "detector.json").is_file()
    assert trained or (models / "unavailable.json").is_file()
    if trained:
        assert json.loads((models / "detector.json").read_text())["name"] == "pmi_nll_run"
    view = load_view_data(run_dir)
    assert view.index["conditions"] == REPORT_ORDER
    assert sum(r["condition"] == "top_two_rag" for r in view.index["responses"]) == LIMIT
