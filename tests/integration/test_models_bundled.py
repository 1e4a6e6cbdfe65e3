"""The real bundled SmolLM2-135M-Instruct through the backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

QUESTION = (
    "What is the capital of France?\nA) Berlin\nB) Paris\nC) Madrid\nD) Rome\n"
    "Answer with the letter of the correct option."
)


def test_bundled_model_loads_with_its_chat_template(bundled_lm):
    assert bundled_lm.name == "smollm2-135m-instruct"
    assert bundled_lm.use_chat_template
    text = bundled_lm.prompt_text(QUESTION, answer_cue=True)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\nAnswer:")
    assert len(bundled_lm.model_hash) == 64


def test_letters_after_the_cue_are_spaced_single_tokens(bundled_lm):
    ids = bundled_lm.letter_token_ids(["A", "B", "C", "D"])
    assert bundled_lm.tokenizer.convert_ids_to_tokens(ids) == ["ĠA", "ĠB", "ĠC", "ĠD"]


def test_score_options_matches_the_raw_next_token_logits(bundled_lm):
    scores = bundled_lm.score_options([QUESTION], ["A", "B", "C", "D"])
    ids = bundled_lm.prompt_ids(QUESTION, answer_cue=True)
    with torch.no_grad():
        raw = bundled_lm.model(torch.tensor([ids])).logits[0, -1]
    expected = raw[bundled_lm.letter_token_ids(["A", "B", "C", "D"])].numpy()
    np.testing.assert_allclose(scores[0], expected, rtol=1e-4, atol=1e-4)


def test_generation_names_the_right_answer_text(bundled_lm):
    # SmolLM2-135M's letter choice is near chance on multiple choice (reported
    # honestly by the experiments), but its greedy answer text names Paris.
    (gen,) = bundled_lm.generate([QUESTION], max_new_tokens=12)[0]
    assert "Paris" in gen.text


def test_internals_has_every_layer_plus_embeddings(bundled_lm):
    rec = bundled_lm.internals(QUESTION, "B) Paris", lens="none")
    assert rec.hidden_states.shape[0] == bundled_lm.n_layers + 1 == 31
    assert rec.hidden_states.shape[-1] == 576
    assert torch.isfinite(rec.logits).all()
    assert torch.all(rec.lens_kl_to_final[-1].abs() < 1e-5)
