"""Backend plumbing on a tiny random Llama (no files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safescale.models import ANSWER_CUE, PromptError
from safescale.models.tiny import build_tiny_model

LETTERS = ["A", "B", "C", "D"]
MESSAGES = [
    "Short question?\nA) one\nB) two\nC) three\nD) four",
    "A much longer question with a lot more words in it, to force left padding?\n"
    "A) alpha\nB) beta\nC) gamma\nD) delta",
    "Mid length question here?\nA) w\nB) x\nC) y\nD) z",
]


def test_score_options_shape_and_dtype(tiny_lm):
    scores = tiny_lm.score_options(MESSAGES, LETTERS)
    assert scores.shape == (3, 4)
    assert scores.dtype == np.float32


def test_score_options_is_padding_invariant(tiny_lm):
    batched = tiny_lm.score_options(MESSAGES, LETTERS)
    alone = np.stack([tiny_lm.score_options([m], LETTERS)[0] for m in MESSAGES])
    np.testing.assert_allclose(batched, alone, atol=1e-4)


def test_score_options_reads_the_letter_after_the_cue(tiny_lm):
    msg = MESSAGES[0]
    ids = tiny_lm.prompt_ids(msg, answer_cue=True)
    with torch.no_grad():
        logits = tiny_lm.model(torch.tensor([ids])).logits[0, -1]
    letter_ids = tiny_lm.letter_token_ids(LETTERS)
    expected = logits[letter_ids].numpy()
    np.testing.assert_allclose(tiny_lm.score_options([msg], LETTERS)[0], expected, atol=1e-5)
    assert tiny_lm.prompt_text(msg, answer_cue=True).endswith(ANSWER_CUE)


def test_letter_tokens_are_the_spaced_variants(tiny_lm):
    ids = tiny_lm.letter_token_ids(LETTERS)
    assert tiny_lm.tokenizer.convert_ids_to_tokens(ids) == [" A", " B", " C", " D"]


def test_logit_lens_last_layer_equals_final_logits(tiny_lm):
    rec = tiny_lm.internals(MESSAGES[0], "B) two")
    torch.testing.assert_close(rec.logit_lens[-1], torch.log_softmax(rec.logits, -1))
    assert torch.all(rec.lens_kl_to_final[-1].abs() < 1e-6)
    assert torch.all(rec.lens_kl_to_final[:-1] >= 0)


def test_internals_shapes(tiny_lm):
    rec = tiny_lm.internals(MESSAGES[1], "C) gamma", attentions=True)
    r = len(rec.response_ids)
    v = tiny_lm.model.config.vocab_size
    assert rec.logits.shape == (r, v)
    assert rec.hidden_states.shape == (tiny_lm.n_layers + 1, r, 32)
    assert rec.logit_lens.shape == (tiny_lm.n_layers + 1, r, v)
    assert rec.attentions.shape == (tiny_lm.n_layers, 4, r, rec.prompt_length + r)
    # attention rows are distributions over the (causal) prefix
    torch.testing.assert_close(rec.attentions.sum(-1), torch.ones(tiny_lm.n_layers, 4, r))
    assert rec.input_ids[rec.prompt_length :].tolist() == rec.response_ids.tolist()


def test_internals_logits_match_a_raw_forward(tiny_lm):
    rec = tiny_lm.internals(MESSAGES[0], "A) one", lens="none")
    with torch.no_grad():
        raw = tiny_lm.model(rec.input_ids[None]).logits[0]
    p = rec.prompt_length
    torch.testing.assert_close(rec.logits, raw[p - 1 : -1], atol=1e-5, rtol=1e-5)
    assert rec.logit_lens is None


def test_topk_lens(tiny_lm):
    rec = tiny_lm.internals(MESSAGES[0], "A) one", lens="topk", topk=5)
    assert rec.lens_topk_ids.shape == (tiny_lm.n_layers + 1, len(rec.response_ids), 5)
    assert torch.all(rec.lens_topk_logprobs[..., :-1] >= rec.lens_topk_logprobs[..., 1:])


def test_seeded_sampling_is_reproducible(tiny_lm):
    a = tiny_lm.generate(MESSAGES[:2], max_new_tokens=6, n=3, temperature=1.0, seed=7)
    b = tiny_lm.generate(
        list(reversed(MESSAGES[:2])), max_new_tokens=6, n=3, temperature=1.0, seed=7
    )
    assert a == list(reversed(b))
    c = tiny_lm.generate(MESSAGES[:2], max_new_tokens=6, n=3, temperature=1.0, seed=8)
    assert a != c


def test_generation_logprobs_come_from_raw_logits(tiny_lm):
    (gen,) = tiny_lm.generate([MESSAGES[0]], max_new_tokens=5, temperature=0.0)[0:1][0]
    assert len(gen.token_ids) == len(gen.token_logprobs) > 0
    rec = tiny_lm.internals(MESSAGES[0], list(gen.token_ids), lens="none")
    np.testing.assert_allclose(rec.response_logprobs.numpy(), gen.token_logprobs, atol=1e-4)


@pytest.mark.parametrize("answer_cue", [False, True])
def test_greedy_with_lookup_drafts_gives_the_one_token_per_pass_tokens(
    tiny_lm, monkeypatch, answer_cue
):
    """Greedy decoding with prompt-lookup drafts keeps exactly the tokens a full
    recomputation picks at every step, in fewer forward passes than tokens."""
    message = "observe laser treatment now; observe laser treatment now; observe laser"
    passes = []
    hook = tiny_lm.model.register_forward_hook(lambda *a: passes.append(1))
    try:
        (gen,) = tiny_lm.generate([message], max_new_tokens=24, answer_cue=answer_cue)[0]
    finally:
        hook.remove()
    monkeypatch.setattr(tiny_lm, "PROMPT_LOOKUP_TOKENS", 0)
    (plain,) = tiny_lm.generate([message], max_new_tokens=24, answer_cue=answer_cue)[0]
    seq = tiny_lm.prompt_ids(message, answer_cue=answer_cue)
    expected = []
    with torch.no_grad():
        for _ in range(len(gen.token_ids)):
            tok = int(tiny_lm.model(torch.tensor([seq])).logits[0, -1].argmax())
            expected.append(tok)
            seq.append(tok)
    assert list(gen.token_ids) == expected == list(plain.token_ids)
    np.testing.assert_allclose(gen.token_logprobs, plain.token_logprobs, atol=1e-4)
    assert len(gen.token_ids) == 24 and len(passes) < 24  # drafts were accepted


def test_greedy_needs_one_sample(tiny_lm):
    with pytest.raises(ValueError, match="greedy"):
        tiny_lm.generate([MESSAGES[0]], n=2, temperature=0.0)


@pytest.mark.parametrize("message,response", [("", "x"), ("   ", "x"), ("question", ""), ("q", [])])
def test_empty_prompt_or_response_is_a_clear_error(tiny_lm, message, response):
    with pytest.raises(PromptError, match=r"empty|no tokens"):
        tiny_lm.internals(message, response)


def test_plain_template_for_base_models():
    lm = build_tiny_model(seed=1, chat=False)
    assert lm.prompt_text("Q?", answer_cue=True) == "Q?\nAnswer:"
    ids = lm.prompt_ids("Q?")
    assert ids[0] == lm.tokenizer.bos_token_id


def test_context_limit_is_enforced():
    lm = build_tiny_model(seed=2, context_length=32)
    with pytest.raises(PromptError, match="context limit"):
        lm.internals("x" * 40, "y")


def test_lens_off_skips_the_logit_lens(tiny_lm):
    rec = tiny_lm.internals(MESSAGES[0], "A) one", lens="off")
    assert rec.logit_lens is None and rec.lens_kl_to_final is None
    assert rec.hidden_states.shape[0] == tiny_lm.n_layers + 1


def test_sampled_logprobs_match_teacher_forcing(tiny_lm):
    # n > 1 shares one prefilled KV cache across the samples; each sample's raw
    # log-probs must still equal a fresh teacher-forced pass over its tokens.
    gens = tiny_lm.generate([MESSAGES[1]], max_new_tokens=6, n=3, temperature=1.0, seed=5)[0]
    assert len(gens) == 3
    for gen in gens:
        if not gen.token_ids:
            continue
        rec = tiny_lm.internals(MESSAGES[1], list(gen.token_ids), lens="off")
        np.testing.assert_allclose(rec.response_logprobs.numpy(), gen.token_logprobs, atol=1e-4)
