"""The reliance stage on a real tiny run: the runner answers, the stage re-reads the
frozen evidence answers with their passages masked, and the metrics and report read
what it wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from safescale.experiments.config import parse_config
from safescale.models.tiny import save_tiny_model
from safescale.rundir import RunDir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _config(tiny_dir: Path, out: Path, formulation: str, extra: str = ""):
    text = f"""
name: reliance
models:
  - name: tiny
    spec: {tiny_dir}
corpora: [radiology-guidelines]
conditions: [closed_book, clean_evidence, conflict_evidence]
answer: {{formulation: {formulation}, calibration_items: 4}}
bootstrap: {{replicates: 100}}
reliance: {{enabled: true{extra}}}
limit: 3
"""
    return parse_config(text).with_overrides(output_dir=out)


@pytest.mark.parametrize("formulation", ["cloze_pmi", "letter_pride", "letter_cyclic"])
def test_reliance_stage_writes_records_the_metrics_and_report_read(tiny_dir, tmp_path, formulation):
    from safescale.experiments import run_experiment, write_report
    from safescale.experiments.reliance import run_reliance_stage

    out = tmp_path / "run"
    config = _config(tiny_dir, out, formulation)
    run_experiment(config, progress=False)
    first = run_reliance_stage(config)
    reader = RunDir(out)
    responses = reader.responses()
    with_evidence = [r for r in responses if r.evidence_ids]
    assert with_evidence and len(with_evidence) < len(responses)  # closed book is not measured
    records = reader.reliance()
    assert {r.key for r in records} == {r.key for r in with_evidence}
    if formulation == "letter_cyclic":
        assert {r.status for r in records} == {"skipped"}
        assert all("letter_cyclic" in r.reason for r in records)
    else:
        assert {r.status for r in records} == {"ok"}, [r.reason for r in records]
        by_key = {r.key: r for r in with_evidence}
        for rec in records:
            response = by_key[rec.key]
            assert rec.formulation == response.formulation
            assert rec.max_abs_diff <= rec.tolerance
            assert rec.chosen_before == response.chosen
            assert [p.passage for p in rec.passages] == response.evidence_ids
            start, end = rec.evidence.span
            for p in rec.passages:  # every passage lies inside the evidence block
                assert p.span is not None and start <= p.span[0] < p.span[1] <= end
                assert p.kl >= 0.0 and p.flipped == (p.chosen_after != rec.chosen_before)
                assert p.grade_level is not None and p.status in {"current", "superseded",
                                                                   "withdrawn"}  # fmt: skip
            assert rec.cited_rule in {"response_citations", "supporting_stance", "none"}
    assert first.measured + first.skipped + first.mismatched == len(records)
    # resumable: a second stage run measures nothing again and appends nothing
    size = (out / "reliance.jsonl").stat().st_size
    second = run_reliance_stage(config)
    assert second.already_done == len(records) and second.measured == 0
    assert (out / "reliance.jsonl").stat().st_size == size

    files = write_report(out, plots=False)
    cells = files.metrics["reliance"]
    assert {c["condition"] for c in cells} == {"clean_evidence", "conflict_evidence"}
    assert sum(c["n_measured"] + c["n_skipped"] + c["n_mismatch"] for c in cells) == len(records)
    report = files.report_md.read_text()
    assert "## Causal reliance on evidence" in report
    if formulation == "letter_cyclic":
        assert all(c["n_measured"] == 0 and c["verdict"] == "nothing measured" for c in cells)
        assert "letter_cyclic" in report
    else:
        for c in cells:
            assert 0.0 <= c["depends_on_evidence"]["value"] <= 1.0
            assert c["mean_evidence_kl"]["value"] >= 0.0
    assert [row.to_json() for row in reader.metrics().reliance] == cells


def test_conditions_and_mode_are_honoured(tiny_dir, tmp_path):
    from safescale.experiments import run_experiment
    from safescale.experiments.reliance import run_reliance_stage

    out = tmp_path / "run"
    config = _config(tiny_dir, out, "cloze_none", ", mode: answer, conditions: [conflict_evidence]")
    run_experiment(config, progress=False)
    run_reliance_stage(config)
    records = RunDir(out).reliance()
    assert len(records) == 3 and {r.condition for r in records} == {"conflict_evidence"}
    assert "skipped" not in {r.status for r in records}
    assert {r.mode for r in records} == {"answer"}
