"""Every prompt prefill through the prefix cache equals a cold prefill, on the tiny model.

Tolerance: a prompt answered over a cached prefix is prefilled in two chunks (the
stored prefix, then its own suffix) instead of one; on the float32 tiny model that
changes only summation order: measured differences are at most ~4e-7 on logits,
log-probabilities and hidden states. The tests allow ``ATOL = 1e-4`` (the tolerance
the shared answer/detector pass states for the same kind of split), and ask exact
equality of every argmax and generated token.

The cold reference is the session's ``tiny_lm`` (no prefix cache); the cached model is
the same weights (same seed) with a fresh cache per test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safescale.agents import AgentContext
from safescale.agents.answering import read_options
from safescale.agents.nodes import default_critic
from safescale.corpora import load_corpus
from safescale.detection.masking import find_token_spans, masked_rereads
from safescale.models import NEUTRAL_MESSAGE
from safescale.models.microbatch import score_continuations_batched
from safescale.models.tiny import build_tiny_model

ATOL = 1e-4
EVIDENCE = (
    "Evidence:\n[P1] Org (grade X 1, current): Laser treatment is indicated for this "
    "finding in adults.\n[P2] Org (grade X 3, superseded): Observation is enough.\n\n"
)
QUESTIONS = [
    "Question: Which management for a 40-year-old?",
    "Question: Which management for a child?",
    "Question: What is the first step?",
]
TEXTS = ["observe", "laser treatment now", "refer to surgery"]
LETTERS = ["A", "B", "C"]


@pytest.fixture(scope="module")
def cached_model():
    return build_tiny_model(seed=0)


@pytest.fixture
def hot(cached_model):
    cached_model.set_prefix_cache(64)  # a fresh, empty cache for each test
    yield cached_model
    cached_model.set_prefix_cache(0)


@pytest.fixture(scope="module")
def radiology():
    return load_corpus("radiology-guidelines")


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_cloze_scores_over_a_cached_prefix_equal_cold_ones_and_compute_only_the_suffix(
    tiny_lm, hot
):
    messages = [EVIDENCE + q for q in QUESTIONS]
    prompts = [hot.prompt_ids(m, answer_cue=True) for m in messages]
    for i, message in enumerate(messages):
        before = hot.prefix_cache.stats.computed_tokens
        warm = hot.score_continuations([message], [TEXTS])
        cold = tiny_lm.score_continuations([message], [TEXTS])
        np.testing.assert_allclose(warm.logprob, cold.logprob, atol=ATOL)
        assert np.argmax(warm.logprob[0]) == np.argmax(cold.logprob[0])
        computed = hot.prefix_cache.stats.computed_tokens - before
        shared = max((_common(prompts[i], prompts[j]) for j in range(i)), default=0)
        assert computed == len(prompts[i]) - shared  # only what no earlier prompt held
    assert hot.prefix_cache.stats.reused_tokens > 0
    # the PMI neutral prompt, twice: the second time it is all cached but its last token
    for _ in range(2):
        np.testing.assert_allclose(
            hot.score_continuations([NEUTRAL_MESSAGE], [TEXTS]).logprob,
            tiny_lm.score_continuations([NEUTRAL_MESSAGE], [TEXTS]).logprob,
            atol=ATOL,
        )


@pytest.mark.parametrize(
    "formulation", ["letter", "letter_cyclic", "cloze_token", "cloze_pmi", "cloze_char"]
)
def test_every_formulation_reads_the_same_scores_through_the_cache(
    tiny_lm, hot, radiology, formulation
):
    item = radiology.items[0]
    passages = [radiology.passage(p) for p in item.evidence.conflict]
    for evidence in (passages, passages[:1], []):
        warm = read_options(hot, item, evidence, None, formulation)
        cold = read_options(tiny_lm, item, evidence, None, formulation)
        np.testing.assert_allclose(warm.scores, cold.scores, atol=ATOL)
        assert int(np.argmax(warm.scores)) == int(np.argmax(cold.scores))
    if formulation == "letter_cyclic":  # the orderings share evidence + question
        assert hot.prefix_cache.stats.reuse_fraction > 0.5


def test_the_shared_answer_pass_and_its_detection_reads(tiny_lm, hot):
    message = EVIDENCE + QUESTIONS[0]
    hot.score_continuations([EVIDENCE + QUESTIONS[1]], [TEXTS])  # caches the evidence
    warm, cold = hot.open_prompt(message), tiny_lm.open_prompt(message)
    np.testing.assert_allclose(
        hot.score_options_from(warm, LETTERS), tiny_lm.score_options_from(cold, LETTERS), atol=ATOL
    )
    np.testing.assert_allclose(
        hot.score_continuations_from(warm, TEXTS).logprob,
        tiny_lm.score_continuations_from(cold, TEXTS).logprob,
        atol=ATOL,
    )
    response = "Answer: B) laser treatment now"
    a = hot.internals_from(warm, response, lens="kl")
    b = tiny_lm.internals_from(cold, response, lens="kl")
    for name in ("logits", "hidden_states", "lens_kl_to_final"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=ATOL), name
    # the separate passes (NOCTX, P(True)) too
    a, b = (
        hot.internals(QUESTIONS[0], response, lens="kl"),
        tiny_lm.internals(QUESTIONS[0], response, lens="kl"),
    )
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.allclose(a.hidden_states, b.hidden_states, atol=ATOL)
    ids = hot.tokenizer(response + " True", add_special_tokens=False)["input_ids"]
    assert hot.sequence_logprob(message, ids, 4) == pytest.approx(
        tiny_lm.sequence_logprob(message, ids, 4), abs=ATOL
    )


def test_generation_decodes_the_same_tokens(tiny_lm, hot):
    message = EVIDENCE + QUESTIONS[2]
    hot.generate([EVIDENCE + QUESTIONS[0]], max_new_tokens=4)  # caches the evidence
    for kwargs in (
        {"max_new_tokens": 10},
        {"max_new_tokens": 8, "answer_cue": True},
        {"max_new_tokens": 8, "n": 3, "temperature": 0.8, "seed": 7, "answer_cue": True},
    ):
        (warm,) = hot.generate([message], **kwargs)
        (cold,) = tiny_lm.generate([message], **kwargs)
        assert [g.token_ids for g in warm] == [g.token_ids for g in cold], kwargs
        for g, h in zip(warm, cold, strict=True):
            np.testing.assert_allclose(g.token_logprobs, h.token_logprobs, atol=ATOL)
    samples = {"n": 3, "max_new_tokens": 6, "temperature": 0.8, "seed": 3}
    warm = hot.generate_from(hot.open_prompt(message), **samples)
    cold = tiny_lm.generate_from(tiny_lm.open_prompt(message), **samples)
    assert [g.token_ids for g in warm] == [g.token_ids for g in cold]
    assert hot.prefix_cache.stats.hits >= 4


def test_the_critics_judgements_are_unchanged(tiny_lm, hot, radiology):
    item = radiology.items[6]
    ids = [*item.evidence.clean, *item.evidence.conflict]
    warm = default_critic(item, ids, AgentContext(lm=hot, corpus=radiology))
    cold = default_critic(item, ids, AgentContext(lm=tiny_lm, corpus=radiology))
    assert (warm.keep, warm.drop, warm.conflict) == (cold.keep, cold.drop, cold.conflict)
    for pid, margin in cold.detail["relevance_margin"].items():
        assert warm.detail["relevance_margin"][pid] == pytest.approx(margin, abs=ATOL)
    # the per-passage prompts share the question: most of them came from the cache
    assert hot.prefix_cache.stats.hits >= len(ids)


@pytest.mark.parametrize("formulation", ["letter", "cloze_none"])
def test_masked_rereads_through_the_cache(tiny_lm, hot, formulation):
    message = EVIDENCE + QUESTIONS[0]
    hot.score_continuations([EVIDENCE + QUESTIONS[1]], [TEXTS])
    spans = find_token_spans(tiny_lm, message, [EVIDENCE.strip(), "Observation is enough."])
    warm = masked_rereads(hot, message, formulation, LETTERS, spans, option_texts=TEXTS)
    cold = masked_rereads(tiny_lm, message, formulation, LETTERS, spans, option_texts=TEXTS)
    np.testing.assert_allclose(warm.baseline, cold.baseline, atol=ATOL)
    for a, b in zip(warm.masked, cold.masked, strict=True):
        np.testing.assert_allclose(a, b, atol=ATOL)
    # an empty block still reproduces the unmasked read (to float tolerance here)
    empty = masked_rereads(hot, message, formulation, LETTERS, spans, option_texts=TEXTS, layers=[])
    for scores in empty.masked:
        np.testing.assert_allclose(scores, empty.baseline, atol=ATOL)


def test_micro_batched_prefills_store_and_reuse_prefixes(tiny_lm, hot):
    messages = [EVIDENCE + q for q in QUESTIONS]
    first = score_continuations_batched(hot, messages, TEXTS, batch_size=8)
    np.testing.assert_allclose(
        first.logprob, tiny_lm.score_continuations(messages, TEXTS).logprob, atol=ATOL
    )
    stored = hot.prefix_cache.stats.stored_bytes
    assert stored > 0  # the padded prefill's rows went into the cache
    again = score_continuations_batched(hot, messages, TEXTS, batch_size=8)
    np.testing.assert_allclose(again.logprob, first.logprob, atol=ATOL)
    assert hot.prefix_cache.stats.reused_tokens > 0


def test_a_small_bound_is_held_and_answers_stay_exact(tiny_lm, hot, radiology):
    bound_mb = 0.6  # about two of these prompts (256 bytes a token)
    hot.set_prefix_cache(bound_mb)
    for item in radiology.items[:12]:
        passages = [radiology.passage(p) for p in item.evidence.conflict]
        warm = read_options(hot, item, passages, None, "cloze_token")
        cold = read_options(tiny_lm, item, passages, None, "cloze_token")
        np.testing.assert_allclose(warm.scores, cold.scores, atol=ATOL)
        assert hot.prefix_cache.stats.stored_bytes <= bound_mb * 2**20
    assert hot.prefix_cache.stats.evictions > 0


def test_sliding_window_layers_fall_back_to_a_cold_prefill():
    cold = build_tiny_model(seed=1, sliding_window=8)
    hot = build_tiny_model(seed=1, sliding_window=8, prefix_cache_mb=64)
    message = EVIDENCE + QUESTIONS[0]
    for _ in range(2):  # the second call would hit the evidence if it were stored
        np.testing.assert_array_equal(
            hot.score_continuations([message], [TEXTS]).logprob,
            cold.score_continuations([message], [TEXTS]).logprob,
        )
    np.testing.assert_array_equal(
        hot.score_options([message], LETTERS), cold.score_options([message], LETTERS)
    )
    state_hot, state_cold = hot.open_prompt(message), cold.open_prompt(message)
    np.testing.assert_array_equal(
        hot.score_options_from(state_hot, LETTERS), cold.score_options_from(state_cold, LETTERS)
    )
    stats = hot.prefix_cache.stats
    assert not hot.prefix_cache.supported
    assert stats.stored_bytes == 0 and stats.reused_tokens == 0 and stats.cold == 1
