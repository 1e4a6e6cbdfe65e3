"""A whole study through ``kind: openai`` against the real llama-cpp-python server:
all six conditions, the probe's verdict and the formulation in the manifest, a report
row per condition, and black-box detection from the served log-probs."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml
from conftest import SERVED_KEY_ENV

from safescale.experiments.config import CONDITIONS, parse_config
from safescale.experiments.runner import run_detection_stage, run_experiment
from safescale.rundir import RunDir

pytestmark = pytest.mark.slow


def _model(server, **extra) -> dict:
    return {
        "name": "smollm2-served",
        "kind": "openai",
        "base_url": server.base_url,
        "model": "smollm2-135m-instruct",
        "api_key_env": SERVED_KEY_ENV,
        "tokenizer": "smollm2-135m-instruct",
        "max_concurrency": 4,
        "context_length": 2048,
        "top_logprobs": 1000,
        **extra,
    }


def test_six_condition_study_runs_in_the_letter_formulations(llama_server, tmp_path):
    import os

    config = parse_config(
        yaml.safe_dump(
            {
                "name": "served-six",
                "models": [_model(llama_server)],
                "corpus": "radiology-guidelines",
                "limit": 2,
                "context_budget": 512,
                "answer": {"formulation": "auto", "calibration_items": 2},
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    summary = run_experiment(config, progress=False)
    assert summary.answered == 2 * len(CONDITIONS)
    reader = RunDir(tmp_path / "run")
    manifest = reader.manifest()
    entry = manifest.models["smollm2-served"]
    assert entry.served is not None and entry.layers is None
    assert entry.hash == entry.hash.strip() and entry.hash.startswith("served:")
    assert entry.served["identity"]["model"] == "smollm2-135m-instruct"
    assert entry.served["probe"]["prompt_logprobs"] == "unusable"
    assert "misaligned" in entry.served["probe"]["verdict"]
    choice = manifest.formulations["smollm2-served"]["radiology-guidelines"]
    assert choice["chosen"] in {"letter", "letter_cyclic", "letter_pride"}
    assert set(choice["candidates"]) <= {"letter", "letter_cyclic", "letter_pride"}
    assert "cloze_pmi" in choice["not_served"]["formulations"]
    responses = reader.responses()
    assert {r.condition for r in responses} == set(CONDITIONS)
    assert all(r.formulation == choice["chosen"] for r in responses)
    # the agentic critic judged through generation log-probs
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").open()]
    critiques = [s for s in steps if s["node"] == "critique"]
    assert critiques and all(
        isinstance(m, float) for s in critiques for m in s["detail"]["relevance_margin"].values()
    )
    # the report has a row per condition
    from safescale.presentation.report import CONDITION_LABELS, write_report

    files = write_report(tmp_path / "run", plots=False)
    table = pd.read_csv(files.conditions_csv)
    assert sorted(table["condition"]) == sorted(CONDITIONS)
    report = files.report_md.read_text()
    for condition in CONDITIONS:
        assert f"| {CONDITION_LABELS[condition]} |" in report, condition
    # the API key is never written to the run directory
    key = os.environ[SERVED_KEY_ENV]
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_blackbox_detection_from_served_logprobs(llama_server, bundled_lm, tmp_path):
    config = parse_config(
        yaml.safe_dump(
            {
                "name": "served-detect",
                "models": [_model(llama_server)],
                "corpus": "radiology-guidelines",
                "conditions": ["clean_evidence"],
                "limit": 10,
                "answer": {"formulation": "letter"},
                "detection": {
                    "enabled": True,
                    "detectors": ["perplexity", "mte", "ptrue", "ecrt", "hidden_probe"],
                    "protocol": "split",
                    "controls": False,
                },
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    run_experiment(config, progress=False)
    run_detection_stage(config)
    reader = RunDir(tmp_path / "run")
    notes = json.loads((tmp_path / "run" / "detection" / "notes.json").read_text())
    assert any(
        "ecrt, hidden_probe unavailable for this model" in n and "whitebox" in n for n in notes
    ), notes
    frame = pd.read_parquet(next((tmp_path / "run" / "detection").glob("*/features.parquet")))
    assert len(frame) == 10
    assert frame["nll_mean"].map(math.isfinite).all()
    assert frame["ptrue_nll"].map(math.isfinite).all()
    assert not any(c.startswith("ecrt_") for c in frame.columns)
    # the served perplexity is the in-process one on the same weights (engine tolerance)
    from safescale.detection.baselines.perplexity import nll_mean

    for record in reader.responses()[:2]:
        ids = bundled_lm.tokenizer(record.response, add_special_tokens=False)["input_ids"]
        local = nll_mean(bundled_lm.internals(record.message, ids, lens="off"))
        served = float(frame.loc[frame["item"] == record.item, "nll_mean"].iloc[0])
        assert abs(served - local) < 0.1, (record.item, served, local)
