"""The conflict-dose axis on the real runner with a tiny random Llama: doses are part
of each response's identity, recorded with the drawn passages, nested and capped."""

from __future__ import annotations

from pathlib import Path

import pytest

from safescale.corpora import load_corpus
from safescale.corpora.conflict import conflict_pool
from safescale.experiments.config import parse_config
from safescale.models.tiny import save_tiny_model
from safescale.rundir import load_attribution, load_responses, load_steps


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_doses_are_recorded_nested_and_capped(tiny_dir, tmp_path):
    from safescale.experiments import run_experiment, write_report

    out = tmp_path / "dose"
    config = parse_config(f"""
name: dose
models:
  - name: tiny
    spec: {tiny_dir}
corpora: [radiology-guidelines]
conditions: [closed_book, clean_evidence, standard_rag]
answer: {{formulation: cloze_pmi}}
conflict_dose: [0, 1, 2, 9]
bootstrap: {{replicates: 100}}
limit: 3
""").with_overrides(output_dir=out)
    summary = run_experiment(config, progress=False)
    # closed-book at dose 0 only; the others at every dose
    assert summary.answered == 3 * (1 + 2 * 4)
    corpus = load_corpus("radiology-guidelines")
    responses = load_responses(out)[0]
    assert len({r.key for r in responses}) == len(responses) == summary.answered
    by = {(r.condition, r.item, r.conflict_dose): r for r in responses}
    for (condition, item, dose), r in by.items():
        pool = conflict_pool(corpus, corpus.item(item))
        assert len(r.conflict_injected) == min(dose, len(pool))
        assert set(r.conflict_injected) <= set(pool)
        assert r.dose_capped == (dose > len(pool))
        if dose:
            # nested draws: a larger dose keeps the smaller dose's passages in order
            smaller = by[(condition, item, 1)].conflict_injected
            assert r.conflict_injected[: len(smaller)] == smaller
            # the drawn passages reached the prompt (oracle) or the candidates (RAG)
            assert set(r.conflict_injected) <= set(r.evidence_ids)
        else:
            assert r.conflict_injected == [] and not r.dose_capped
    assert any(r.dose_capped for r in responses)  # dose 9 exceeds every bundled pool
    steps = load_steps(out)
    gather = [s for s in steps if s.node in ("clean_evidence", "retrieve") and s.conflict_dose]
    assert gather and all(s.detail["conflict_injection"]["dose"] == s.conflict_dose
                          for s in gather)  # fmt: skip
    assert all(a.conflict_dose in (0, 1, 2, 9) for a in load_attribution(out))
    # a rerun does nothing (the dose is part of the done-keys)
    again = run_experiment(config, progress=False)
    assert again.answered == 0
    files = write_report(out, plots=True)
    curves = files.metrics["dose_response"]
    assert {c["condition"] for c in curves} == {"clean_evidence", "standard_rag"}
    for c in curves:
        assert [d["dose"] for d in c["doses"]] == [0, 1, 2, 9]
        assert c["doses"][-1]["capped"] == 3
    text = files.report_md.read_text()
    assert "## Conflict dose-response" in text and "were capped" in text
    assert (out / "plots" / "dose_response.png").is_file()
    # the attribution counts of a dose sweep say which dose each row belongs to
    rows = files.metrics["attribution"]
    doses = {r["conflict_dose"] for r in rows}
    section = text.split("### Failure attribution", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("| model"))
    assert ("| dose |" in header) == (len(doses) > 1)
    if len(doses) > 1:
        shown = {
            line.split("|")[5].strip() for line in section.splitlines()[3:] if line.startswith("| ")
        }
        assert shown == {str(d) for d in doses}
