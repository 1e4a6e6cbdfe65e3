"""Detection end to end on the real bundled SmolLM2 over a few dozen retina-rules items.

Records are built by really scoring the items with the model (clean evidence: the
item's record passage); detection then teacher-forces them (two passes per record).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from safescale.detection import DetectionConfig, mask_evidence_span, run_detection
from safescale.rundir import ResponseRecord

pytestmark = pytest.mark.slow

PER_TASK = 5


def messages(item, corpus) -> tuple[str, str, list[str]]:
    base = item.question + "\n" + "\n".join(f"{k}) {v}" for k, v in item.options.items())
    evidence = [item.evidence.clean[0]]  # the record passage: keeps prompts short
    text = "\n".join(f"[{pid}] {corpus.passage(pid).text}" for pid in evidence)
    return f"{base}\nEvidence:\n{text}", base, evidence


@pytest.fixture(scope="module")
def scored():
    from safescale.corpora.loader import load_corpus
    from safescale.models import load_model

    corpus = load_corpus("retina-rules")
    lm = load_model()
    picked, groups = [], set()
    for task in ("align", "conflict", "gap"):
        n = 0
        for item in corpus.items:
            if str(item.task) == task and item.evidence_id not in groups and n < PER_TASK:
                picked.append(item)
                groups.add(item.evidence_id)
                n += 1
    built = [messages(item, corpus) for item in picked]
    logits = lm.score_options([m for m, _, _ in built], picked[0].letters)
    records = []
    for item, (message, base, evidence), z in zip(picked, built, logits, strict=True):
        letter = item.letters[int(np.argmax(z))]
        records.append(
            ResponseRecord(
                run="it",
                model=lm.name,
                condition="clean_evidence",
                item=item.id,
                letters=item.letters,
                option_logits=[float(x) for x in z],
                chosen=letter,
                response=f"Answer: {letter}",
                message=message,
                message_noctx=base,
                evidence_ids=evidence,
            )
        )
    return lm, corpus, records


def test_detection_on_smollm2(scored, tmp_path):
    lm, corpus, records = scored
    config = DetectionConfig(
        detectors=("ecrt", "ecrt_1stage", "hidden_probe", "perplexity", "mte", "pmi", "length"),
        seed=13,
    )
    report = run_detection(records, corpus, lm, config, tmp_path)
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "features.parquet")
    ecrt_cols = [c for c in frame.columns if c.startswith("ecrt.")]
    assert len(ecrt_cols) == 9 + (lm.n_layers + 4) + 2 * (lm.n_layers + 2) + 1
    assert np.isfinite(frame[ecrt_cols].to_numpy()).all()
    # evidence changes the pass: CTX and NOCTX differ on real prompts
    assert (frame["ecrt.dev_cos_mean"] > 0).all()
    assert (frame.groupby("evidence_id")["split"].nunique() == 1).all()
    # both stages trained and saved as XGBoost JSON
    stage_files = [tmp_path / "models" / "ecrt" / f"stage{i}.json" for i in (1, 2)]
    for path in stage_files:
        assert json.loads(path.read_text())["learner"]
    ecrt = report.row("ecrt")
    assert ecrt.status == "ok" and ecrt.stage2 is not None
    assert ecrt.val_recall >= config.target_recall
    assert 0.0 <= ecrt.stage1.flag_rate <= 1.0
    table = (tmp_path / "triage.md").read_text()
    for method in config.detectors:
        assert f"| {method} |" in table


def test_masking_on_smollm2(scored):
    lm, corpus, records = scored
    record = records[0]
    passage = corpus.passage(record.evidence_ids[0]).text
    moved = mask_evidence_span(lm, record.message, record.letters, passage, mode="all_later")
    assert moved.span is not None and moved.kl > 1e-6
    still = mask_evidence_span(lm, record.message, record.letters, "absent passage text")
    assert still.kl == 0.0 and not still.flipped
