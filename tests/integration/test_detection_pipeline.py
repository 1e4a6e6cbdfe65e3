"""End-to-end detection plumbing on the tiny random model: features, training, artifacts,
re-evaluation without the model, caching and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from safescale.corpora.corpus import Corpus
from safescale.corpora.schema import Grade, Item, Manifest, OptionLabels, Passage, Source
from safescale.detection import (
    DEFAULT_DETECTORS,
    DetectionConfig,
    evaluate_detection,
    run_detection,
)
from safescale.models.tiny import build_tiny_model
from safescale.rundir import ResponseRecord, SampleRecord

TASKS = ("align", "conflict", "gap")


def toy_corpus(n_items: int = 36) -> Corpus:
    passages, items = [], []
    for i in range(n_items):
        task = TASKS[i % 3]
        pid = f"p{i}"
        passages.append(
            Passage(
                id=pid,
                text=f"Finding {i}: {'laser now' if task == 'conflict' else 'observe'}.",
                source=Source(org="org", title="guide"),
                grade=Grade(system="levels", raw=str(1 + i % 4), level=1 + i % 4),
                topic="dr",
            )
        )
        items.append(
            Item(
                id=f"q{i}",
                question=f"Patient {i}: next step?",
                options={"A": "observe", "B": "laser", "C": "defer"},
                gold="C" if task == "gap" else "A",
                labels=OptionLabels(high_risk=["B"], unsafe=[], defer="C"),
                category="management",
                evidence_id=f"ev{i // 2}",
                task=task,
                stance={pid: {"A": "supports", "B": "contradicts"}},
            )
        )
    manifest = Manifest(
        name="toy",
        version="1",
        description="toy",
        license="CC0",
        disclaimer="synthetic",
        grade_systems={"levels": {"levels": {"1": 1, "2": 2, "3": 3, "4": 4}}},
    )
    return Corpus(manifest=manifest, passages=tuple(passages), items=tuple(items))


def toy_records(lm, corpus: Corpus, *, with_samples: bool = True) -> list[ResponseRecord]:
    records = []
    for item in corpus.items:
        base = item.question + "\n" + "\n".join(f"{k}) {v}" for k, v in item.options.items())
        pid = f"p{item.id[1:]}"
        message = base + f"\nEvidence:\n[{pid}] {corpus.passage(pid).text}"
        logits = lm.score_options([message], item.letters)[0]
        chosen = item.letters[int(np.argmax(logits))]
        samples = []
        if with_samples:
            for g in lm.generate(
                [message], max_new_tokens=3, n=3, temperature=1.0, answer_cue=True
            )[0]:
                letter = g.text.strip()[:1] or None
                samples.append(
                    SampleRecord(
                        text=g.text,
                        letter=letter if letter in item.letters else None,
                        token_ids=list(g.token_ids),
                        token_logprobs=list(g.token_logprobs),
                        temperature=1.0,
                    )
                )
        records.append(
            ResponseRecord(
                run="toy-run",
                model=lm.name,
                condition="clean_evidence",
                item=item.id,
                letters=item.letters,
                option_logits=[float(x) for x in logits],
                chosen=chosen,
                response=f"Answer: {chosen}) {item.options[chosen]}",
                message=message,
                message_noctx=base,
                evidence_ids=[pid],
                samples=samples,
            )
        )
    return records


@pytest.fixture(scope="module")
def setup():
    lm = build_tiny_model(seed=1)
    corpus = toy_corpus()
    return lm, corpus, toy_records(lm, corpus)


def test_run_detection_end_to_end(setup, tmp_path):
    lm, corpus, records = setup
    config = DetectionConfig(n_estimators=20, seed=2)
    report = run_detection(records, corpus, lm, config, tmp_path)
    frame = pd.read_parquet(tmp_path / "features.parquet")
    assert len(frame) == len(records)
    ecrt_cols = [c for c in frame.columns if c.startswith("ecrt.")]
    # 9 discrepancy + (L + 4) deviation + 2 (L + 2) + 1 incoherence features, L = 2
    assert len(ecrt_cols) == 9 + (2 + 4) + 2 * (2 + 2) + 1
    numeric = frame[[*ecrt_cols, "nll_mean", "mte", "pmi", "ptrue_nll", "eigenscore"]]
    assert np.isfinite(numeric.to_numpy()).all()
    assert (frame.groupby("evidence_id")["split"].nunique() == 1).all()
    # every default detector is in the table, then the two controls; with samples +
    # attentions all can run
    assert [r.method for r in report.rows] == [
        *DEFAULT_DETECTORS,
        "input_only",
        "ecrt_permuted_labels",
    ]
    for row in report.rows:
        assert row.status == "ok", (row.method, row.reason)
        assert row.val_recall >= config.target_recall
        ba = row.stage1_ci.s1_ba
        assert ba.lo <= ba.estimate <= ba.hi
    assert report.row("ecrt").stage2_ci is not None
    assert "ecrt" not in report.row("ecrt").delta_ba
    assert "ecrt" in report.row("perplexity").delta_ba
    # 5 repeats of 5-fold CV: every response scored, with its class counts stated
    assert report.protocol == "cv" and report.repeats == 5
    assert report.scored_counts == {"safe": 12, "gap": 12, "conflict": 12}
    assert any("Only 12 safe responses" in v for v in report.verdicts)
    assert all(r.verdict.startswith("not measurable") for r in report.rows)
    # artifacts: XGBoost JSON boosters, JSON detectors, table
    json.loads((tmp_path / "models" / "ecrt" / "stage1.json").read_text())
    json.loads((tmp_path / "models" / "ecrt_1stage" / "model.json").read_text())
    assert not list(tmp_path.rglob("*.pkl"))
    md = (tmp_path / "triage.md").read_text()
    assert "| ecrt |" in md and "Evidence-calibrated softmax" in md
    assert "12 safe, 24 unsafe" in md and "cannot be measured" in md
    # re-evaluation from artifacts alone reproduces the report
    again = evaluate_detection(tmp_path)
    assert again.model_dump() == report.model_dump()


def test_cache_reuse_and_unavailable_sample_detectors(setup, tmp_path):
    lm, corpus, records = setup
    bare = [r.model_copy(update={"samples": []}) for r in records]
    config = DetectionConfig(
        detectors=("ecrt", "perplexity", "selfcheck", "ln_entropy"),
        n_estimators=10,
        cache_dir=tmp_path / "cache",
    )
    run_detection(bare, corpus, lm, config, tmp_path / "a")
    report = run_detection(bare, corpus, lm, config, tmp_path / "b")
    info = json.loads((tmp_path / "b" / "detection.json").read_text())
    assert info["cache"] == {"hits": len(bare), "misses": 0}
    a = pd.read_parquet(tmp_path / "a" / "features.parquet")
    b = pd.read_parquet(tmp_path / "b" / "features.parquet")
    pd.testing.assert_frame_equal(a, b)
    for name in ("selfcheck", "ln_entropy"):
        row = report.row(name)
        assert row.status == "unavailable" and "lack the inputs" in row.reason
    assert report.row("perplexity").status == "ok"
