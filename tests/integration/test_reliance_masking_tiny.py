"""Masked re-reads under an answer formulation on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safescale.detection.masking import find_token_spans, masked_rereads

MESSAGE = (
    "Evidence:\n[P1] Org (grade X 1, current): Laser treatment is indicated.\n"
    "[P2] Org (grade X 3, superseded): Observation is enough.\n\n"
    "Question: Which management?"
)
P1 = "[P1] Org (grade X 1, current): Laser treatment is indicated."
P2 = "[P2] Org (grade X 3, superseded): Observation is enough."
TEXTS = ["observe", "laser treatment now", "refer"]
LETTERS = ["A", "B", "C"]


@pytest.mark.parametrize("formulation", ["cloze_none", "cloze_token", "cloze_char"])
def test_unmasked_reread_reproduces_the_recorded_cloze_scores(tiny_lm, formulation):
    cloze = tiny_lm.score_continuations([MESSAGE], [TEXTS])
    expected = {
        "cloze_none": cloze.logprob[0],
        "cloze_token": cloze.logprob[0] / cloze.n_tokens[0],
        "cloze_char": cloze.logprob[0] / cloze.n_chars[0],
    }[formulation]
    res = masked_rereads(tiny_lm, MESSAGE, formulation, LETTERS, [], option_texts=TEXTS)
    np.testing.assert_allclose(res.baseline, expected, atol=1e-5)


def test_letter_reread_reproduces_score_options(tiny_lm):
    res = masked_rereads(tiny_lm, MESSAGE, "letter", LETTERS, [])
    np.testing.assert_allclose(
        res.baseline, tiny_lm.score_options([MESSAGE], LETTERS)[0], atol=1e-5
    )


@pytest.mark.parametrize("formulation", ["letter", "cloze_none"])
def test_an_empty_block_over_the_cropped_cache_reproduces_the_unmasked_read(tiny_lm, formulation):
    spans = find_token_spans(tiny_lm, MESSAGE, [P1, P2])
    assert all(s is not None for s in spans)
    res = masked_rereads(
        tiny_lm, MESSAGE, formulation, LETTERS, spans, option_texts=TEXTS, layers=[]
    )
    for scores in res.masked:
        np.testing.assert_allclose(scores, res.baseline, rtol=0, atol=1e-9)
    # the same spans, blocked in every layer, move the scores
    moved = masked_rereads(tiny_lm, MESSAGE, formulation, LETTERS, spans, option_texts=TEXTS)
    assert all(np.abs(m - moved.baseline).max() > 1e-6 for m in moved.masked)


@torch.inference_mode()
def _deleted_continuation_logprob(lm, message, span, text):
    """The deletion route: the prompt + continuation without the span's tokens, every
    other token at its original position."""
    prompt = lm.prompt_ids(message, answer_cue=True)
    cont = lm.continuation_ids(text)
    ids = prompt + cont
    start, end = span
    keep = [i for i in range(len(ids)) if not start <= i < end]
    logits = (
        lm.model(
            input_ids=torch.tensor([[ids[i] for i in keep]]),
            attention_mask=torch.ones(1, len(keep), dtype=torch.long),
            position_ids=torch.tensor([keep]),
            use_cache=False,
        )
        .logits[0]
        .double()
    )
    logp = torch.log_softmax(logits, -1)
    total = 0.0
    for t, token in enumerate(cont):
        row = keep.index(len(prompt) + t - 1)  # the position predicting continuation token t
        total += float(logp[row, token])
    return total


def test_all_later_cloze_masking_equals_deleting_the_span(tiny_lm):
    spans = find_token_spans(tiny_lm, MESSAGE, [P1, P2])
    res = masked_rereads(
        tiny_lm, MESSAGE, "cloze_none", LETTERS, spans, option_texts=TEXTS, mode="all_later"
    )
    for span, scores in zip(spans, res.masked, strict=True):
        deleted = [_deleted_continuation_logprob(tiny_lm, MESSAGE, span, t) for t in TEXTS]
        np.testing.assert_allclose(scores, deleted, atol=1e-4)
    # blocking only the answer position and the continuations is a weaker intervention
    direct = masked_rereads(
        tiny_lm, MESSAGE, "cloze_none", LETTERS, spans, option_texts=TEXTS, mode="answer"
    )
    assert not np.allclose(direct.masked[0], res.masked[0], atol=1e-6)


def test_pmi_and_pride_transform_the_raw_reads(tiny_lm):
    from safescale.agents.answering import read_options
    from safescale.corpora.schema import Item

    item = Item.model_validate(
        {
            "id": "i1",
            "question": "Which management?",
            "options": dict(zip(LETTERS, TEXTS, strict=True)),
            "gold": "B",
            "category": "c",
            "evidence_id": "e1",
        }
    )
    for formulation, prior in (("cloze_pmi", None), ("letter_pride", [0.5, 0.3, 0.2])):
        recorded = read_options(
            tiny_lm, item, [], None, formulation, position_prior={"3": prior} if prior else None
        )
        neutral = recorded.detail.get("neutral_logprob")
        res = masked_rereads(
            tiny_lm,
            recorded.message,
            formulation,
            LETTERS,
            [],
            option_texts=TEXTS,
            neutral_logprob=neutral,
            position_prior=prior,
        )
        np.testing.assert_allclose(res.baseline, recorded.scores, atol=1e-4)
