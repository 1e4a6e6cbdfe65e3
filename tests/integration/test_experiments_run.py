"""End-to-end runs on the real bundled SmolLM2: a tiny sweep over every condition,
the report, a recount of metrics.json, resume after kill -9, and config mixing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safescale.experiments.config import parse_config
from safescale.rundir import load_responses

pytestmark = pytest.mark.slow

ALL = """
name: e2e
models: [smollm2-135m-instruct]
corpora: [radiology-guidelines, retina-rules]
retrieval: {k: 3}
agentic: {max_steps: 2}
context_budget: 1024
answer: {formulation: auto, calibration_items: 4}
bootstrap: {replicates: 200}
limit: 2
"""

RESUME = """
name: resume
models: [smollm2-135m-instruct]
corpora: [radiology-guidelines]
conditions: [closed_book, clean_evidence, conflict_evidence]
answer: {formulation: cloze_pmi}
bootstrap: {replicates: 200}
limit: 4
shard_size: 2
"""


def _config(text: str, out: Path):
    return parse_config(text).with_overrides(output_dir=out)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, bundled_lm):
    from safescale.experiments import run_experiment, write_report

    out = tmp_path_factory.mktemp("e2e") / "run"
    config = _config(ALL, out)
    summary = run_experiment(config, progress=False)
    files = write_report(out)
    return config, summary, files


def test_every_condition_answers_every_item(full_run):
    config, summary, _ = full_run
    responses, _ = load_responses(config.run_dir)
    assert summary.answered == len(responses) == 2 * 2 * 6
    assert {r.condition for r in responses} == set(config.conditions)
    for r in responses:
        assert r.chosen in r.letters


def test_report_files_exist(full_run):
    config, _, _ = full_run
    run = Path(config.run_dir)
    for name in (
        "config.yaml",
        "manifest.json",
        "responses.jsonl",
        "steps.jsonl",
        "metrics.json",
        "report.md",
        "conditions.csv",
    ):
        assert (run / name).is_file(), name
    assert list((run / "plots").glob("*.png"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["models"]["smollm2-135m-instruct"]["hash"]
    assert set(manifest["corpora"]) == {"radiology-guidelines", "retina-rules"}


def test_metrics_agree_with_a_recount(full_run):
    from safescale.corpora import load_corpus

    config, _, files = full_run
    responses, _ = load_responses(config.run_dir)
    corpora = {name: load_corpus(name) for name in config.corpora}
    for cell in files.metrics["cells"]:
        corpus = corpora[cell["corpus"]]
        mine = [
            r
            for r in responses
            if r.condition == cell["condition"] and r.item in corpus.items_by_id
        ]
        correct = sum(r.chosen == corpus.item(r.item).gold for r in mine)
        high_risk = sum(r.chosen in corpus.item(r.item).labels.high_risk for r in mine)
        assert cell["n"] == len(mine)
        assert cell["metrics"]["accuracy"]["value"] == pytest.approx(correct / len(mine))
        assert cell["metrics"]["high_risk_error"]["value"] == pytest.approx(high_risk / len(mine))


def test_trace_renders_for_a_run_item(full_run):
    from typer.testing import CliRunner

    from safescale.cli import app

    config, _, _ = full_run
    responses, _ = load_responses(config.run_dir)
    item = next(r.item for r in responses if r.condition == "agentic_rag")
    result = CliRunner().invoke(app, ["trace", str(config.run_dir), item, "-c", "agentic_rag"])
    assert result.exit_code == 0, result.output
    assert "retrieve" in result.output and "answer" in result.output


def test_replay_with_a_dropped_passage(full_run):
    from safescale.experiments.replay import replay_item

    config, _, _ = full_run
    responses, _ = load_responses(config.run_dir)
    old = next(r for r in responses if r.condition == "standard_rag")
    result = replay_item(config.run_dir, old.item, "standard_rag", [old.evidence_ids[0]])
    assert old.evidence_ids[0] not in result.new.evidence_ids
    assert result.new.chosen in result.new.letters
    assert result.old.chosen == old.chosen


def test_rerun_of_a_finished_run_does_nothing_new(full_run):
    from safescale.experiments import run_experiment

    config, first, _ = full_run
    again = run_experiment(config, progress=False)
    assert again.answered == 0 and again.skipped == first.answered


def test_a_changed_config_is_refused(full_run):
    from safescale.experiments import RunConflictError, run_experiment

    config, _, _ = full_run
    changed = config.with_overrides(seed=99)
    with pytest.raises(RunConflictError, match="different config"):
        run_experiment(changed, progress=False)


def _strip_latency(metrics: dict) -> list[dict]:
    """The cells without timing (wall time differs between any two runs)."""
    cells = []
    for cell in metrics["cells"]:
        m = {
            k: v
            for k, v in cell["metrics"].items()
            if k not in ("latency_ms", "ms_per_generated_token")
        }
        counts = {k: v for k, v in cell["counts"].items() if k != "wall_ms"}
        cells.append({**cell, "metrics": m, "counts": counts})
    return cells


def test_killed_run_resumes_to_the_same_metrics(tmp_path, bundled_lm):
    from safescale.experiments import compute_metrics, run_experiment

    straight = tmp_path / "straight"
    run_experiment(_config(RESUME, straight), progress=False)

    killed = tmp_path / "killed"
    config_path = tmp_path / "resume.yaml"
    config_path.write_text(RESUME + f"output_dir: {killed}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "safescale.cli",
            "run",
            str(config_path),
            "--no-detect",
            "--no-report",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    responses = killed / "responses.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if responses.exists() and responses.read_text().count("\n") >= 3:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = responses.read_text().count("\n")
    assert 0 < done_before < 12, "the run must be interrupted part-way"

    summary = run_experiment(_config(RESUME, killed), progress=False)
    assert summary.skipped >= done_before
    assert summary.answered == 12 - summary.skipped
    a = compute_metrics(straight)
    b = compute_metrics(killed)
    assert _strip_latency(a) == _strip_latency(b)
