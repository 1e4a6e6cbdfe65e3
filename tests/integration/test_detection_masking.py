"""Evidence-anchored attention masking on the tiny random model (plumbing + invariants)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safescale.detection import find_token_span, mask_evidence_span
from safescale.models.tiny import build_tiny_model

MESSAGE = (
    "Which management?\nA) observe\nB) treat\n"
    "Evidence:\n[p1] Laser treatment is indicated for high-risk disease.\n"
)
PASSAGE = "Laser treatment is indicated for high-risk disease."


@pytest.fixture(scope="module")
def lm():
    return build_tiny_model(seed=3)


def test_span_not_in_prompt_changes_nothing(lm):
    for mode in ("answer", "all_later"):
        res = mask_evidence_span(lm, MESSAGE, ["A", "B"], "not in the prompt at all", mode=mode)
        assert res.span is None
        np.testing.assert_array_equal(res.probs_before, res.probs_after)
        assert res.kl == 0.0 and not res.flipped
    # a token span past the prompt end cannot be attended from the answer position
    P = len(lm.prompt_ids(MESSAGE, answer_cue=True))
    res = mask_evidence_span(lm, MESSAGE, ["A", "B"], (P, P + 4), mode="all_later")
    np.testing.assert_array_equal(res.probs_before, res.probs_after)


def test_masking_the_only_supporting_passage_moves_the_distribution(lm):
    span = find_token_span(lm, MESSAGE, PASSAGE)
    assert span is not None
    text = lm.prompt_text(MESSAGE, answer_cue=True)
    ids = lm.prompt_ids(MESSAGE, answer_cue=True)
    assert PASSAGE in lm.tokenizer.decode(ids[span[0] : span[1]])
    assert text.count(PASSAGE) == 1
    for mode in ("answer", "all_later"):
        res = mask_evidence_span(lm, MESSAGE, ["A", "B"], PASSAGE, mode=mode)
        assert res.span == span
        assert res.kl > 0.0
        assert np.abs(res.probs_before - res.probs_after).max() > 1e-6
        np.testing.assert_allclose(res.probs_after.sum(), 1.0)
    # the attention implementation is restored afterwards
    assert lm.model.config._attn_implementation != "safescale_span_mask"


@torch.inference_mode()
def test_all_later_masking_equals_deleting_the_span_with_original_positions(lm):
    ids = lm.prompt_ids(MESSAGE, answer_cue=True)
    start, end = find_token_span(lm, MESSAGE, PASSAGE)
    res = mask_evidence_span(lm, MESSAGE, ["A", "B"], (start, end), mode="all_later")
    keep = [i for i in range(len(ids)) if not start <= i < end]
    # an explicit 2-D mask stops transformers from reading the position jump as the
    # boundary of packed sequences (which would block attention across it)
    out = lm.model(
        input_ids=torch.tensor([[ids[i] for i in keep]]),
        attention_mask=torch.ones(1, len(keep), dtype=torch.long),
        position_ids=torch.tensor([keep]),
        use_cache=False,
    ).logits[0, -1]
    letter_ids = lm.letter_token_ids(["A", "B"])
    deleted = torch.softmax(out[letter_ids].double(), -1).numpy()
    np.testing.assert_allclose(res.probs_after, deleted, atol=1e-5)
    # answer-only masking is a different (weaker) intervention
    direct = mask_evidence_span(lm, MESSAGE, ["A", "B"], (start, end), mode="answer")
    assert not np.allclose(direct.probs_after, deleted, atol=1e-9)


def test_head_and_layer_restriction(lm):
    all_heads = mask_evidence_span(lm, MESSAGE, ["A", "B"], PASSAGE, mode="all_later")
    one_layer = mask_evidence_span(lm, MESSAGE, ["A", "B"], PASSAGE, mode="all_later", layers=[1])
    none = mask_evidence_span(lm, MESSAGE, ["A", "B"], PASSAGE, mode="all_later", layers=[7])
    np.testing.assert_array_equal(none.probs_before, none.probs_after)
    assert one_layer.kl > 0 and not np.allclose(one_layer.probs_after, all_heads.probs_after)
    with pytest.raises(ValueError, match="mode"):
        mask_evidence_span(lm, MESSAGE, ["A", "B"], PASSAGE, mode="everything")
