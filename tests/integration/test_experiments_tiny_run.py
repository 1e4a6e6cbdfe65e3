"""The real runner on a tiny random Llama saved as a local model directory: growing a
run with a larger ``limit``, and ``auto`` answer calibration recorded and held out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safescale.experiments.config import parse_config
from safescale.models.tiny import save_tiny_model
from safescale.rundir import load_responses


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _config(tiny_dir: Path, out: Path, extra: str = ""):
    text = f"""
name: grow
models:
  - name: tiny
    spec: {tiny_dir}
corpora: [radiology-guidelines]
conditions: [closed_book, clean_evidence]
bootstrap: {{replicates: 100}}
{extra}
"""
    return parse_config(text).with_overrides(output_dir=out)


def test_a_larger_limit_extends_the_run_and_keeps_what_was_done(tiny_dir, tmp_path):
    from safescale.experiments import run_experiment

    out = tmp_path / "run"
    first = run_experiment(
        _config(tiny_dir, out, "answer: {formulation: cloze_pmi}\nlimit: 3"), progress=False
    )
    assert first.answered == 6
    before = (out / "responses.jsonl").read_bytes()
    items_before = {r.item for r in load_responses(out)[0]}
    second = run_experiment(
        _config(tiny_dir, out, "answer: {formulation: cloze_pmi}\nlimit: 5"), progress=False
    )
    assert (second.answered, second.skipped) == (4, 6)
    after = (out / "responses.jsonl").read_bytes()
    assert after.startswith(before)  # nothing done before was redone or rewritten
    items_after = {r.item for r in load_responses(out)[0]}
    assert items_before < items_after and len(items_after) == 5
    # a different setting (not the limit) is still a different config
    from safescale.experiments.runner import RunConflictError

    with pytest.raises(RunConflictError):
        run_experiment(
            _config(tiny_dir, out, "answer: {formulation: letter}\nlimit: 5"), progress=False
        )


def test_auto_formulation_is_calibrated_held_out_and_recorded(tiny_dir, tmp_path):
    from safescale.experiments import run_experiment, write_report

    out = tmp_path / "auto"
    config = _config(tiny_dir, out, "answer: {formulation: auto, calibration_items: 4}\nlimit: 4")
    run_experiment(config, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["formulations"]["tiny"]["radiology-guidelines"]
    responses = load_responses(out)[0]
    assert {r.formulation for r in responses} == {record["chosen"]}
    assert not {r.item for r in responses} & set(record["calibration_items"])
    files = write_report(out, plots=False)
    (validity,) = files.metrics["validity"]
    assert validity["formulation"] == record["chosen"]
    assert validity["calibration"]["chosen"] == record["chosen"]
    assert validity["evidence_sensitivity"]["n_items"] == 4
    assert validity["verdicts"]
    report = files.report_md.read_text()
    assert "## Validity" in report and "Answer formulation calibration" in report
    assert report.index("## Validity") < report.index("## Conditions")
