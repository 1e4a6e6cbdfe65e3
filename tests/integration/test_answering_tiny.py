"""Answer formulations on a tiny random Llama: cloze scoring, PMI, debiased letters,
and the held-out calibration of ``auto``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from safescale.agents import CachedLM
from safescale.agents.answering import (
    FORMULATIONS,
    cyclic_letter_logprobs,
    read_options,
)
from safescale.corpora import Item, load_corpus
from safescale.experiments.answer_calibration import calibrate, calibration_item_ids
from safescale.models import NEUTRAL_MESSAGE

MESSAGE = "Which of these is a fruit?\nA) apple\nB) stone"


def _item(options: dict[str, str], gold: str = "A") -> Item:
    return Item.model_validate(
        {
            "id": "q-1",
            "question": "Which follow-up is recommended for this finding?",
            "options": options,
            "gold": gold,
            "evidence_id": "g-1",
            "category": "test",
        }
    )


def _full_pass_logprob(lm, message: str, text: str) -> float:
    prompt = lm.prompt_ids(message, answer_cue=True)
    ids = lm.continuation_ids(text)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([prompt + ids])).logits[0], -1)
    return sum(float(logp[len(prompt) - 1 + t, ids[t]]) for t in range(len(ids)))


def test_one_token_cloze_equals_the_raw_next_token_logprob(tiny_lm):
    (token,) = tiny_lm.continuation_ids("A")  # " A" is one token in the tiny vocab
    prompt = tiny_lm.prompt_ids(MESSAGE, answer_cue=True)
    with torch.no_grad():
        logits = tiny_lm.model(torch.tensor([prompt])).logits[0, -1]
    expected = float(torch.log_softmax(logits.float(), -1)[token])
    scores = tiny_lm.score_continuations([MESSAGE], ["A"])
    assert scores.n_tokens[0, 0] == 1
    assert scores.logprob[0, 0] == pytest.approx(expected, abs=1e-5)


def test_shared_prefill_equals_one_full_pass_per_continuation(tiny_lm):
    texts = ["apple", "a much longer answer text", "x"]
    scores = tiny_lm.score_continuations([MESSAGE], texts)
    for col, text in enumerate(texts):
        full = _full_pass_logprob(tiny_lm, MESSAGE, text)
        assert scores.logprob[0, col] == pytest.approx(full, abs=1e-4)
        assert scores.n_tokens[0, col] == len(tiny_lm.continuation_ids(text))
        assert scores.n_chars[0, col] == len(text)


def test_packed_continuations_see_only_the_prompt_and_themselves(tiny_lm, monkeypatch):
    """Several multi-token continuations go as one packed row over the prompt's cache:
    each scores as its own full pass (no continuation attends to another's tokens),
    whatever their order."""
    texts = ["a much longer answer text", "apple pie", "refer to surgery today", "x"]
    packed = []
    original = type(tiny_lm)._packed_continuations

    def spy(self, cache, prompt_length, feed):
        packed.append(len(feed))
        return original(self, cache, prompt_length, feed)

    monkeypatch.setattr(type(tiny_lm), "_packed_continuations", spy)
    forward = tiny_lm.score_continuations([MESSAGE], texts).logprob[0]
    backward = tiny_lm.score_continuations([MESSAGE], texts[::-1]).logprob[0][::-1]
    assert packed and packed[0] >= 3
    for col, text in enumerate(texts):
        full = _full_pass_logprob(tiny_lm, MESSAGE, text)
        assert forward[col] == pytest.approx(full, abs=1e-4)
        assert backward[col] == pytest.approx(full, abs=1e-4)


@pytest.mark.parametrize("pack_tokens", [1024, 12])
@pytest.mark.parametrize("prefix_cache_mb", [0, 16])
def test_packed_prompts_read_each_prompt_as_if_alone(
    tiny_lm, monkeypatch, pack_tokens, prefix_cache_mb
):
    """Several prompts (a shared question, then different passages) and their
    continuations in packed forwards over the common prefix: each score is the prompt's
    own full pass, in one pack or many, with or without the prefix cache."""
    messages = [
        "Question: which follow-up?\n\nPassage:\nLaser treatment is indicated.",
        "Question: which follow-up?\n\nPassage:\nObservation is enough for a child.",
        "Question: which follow-up?\n\nPassage:\nN/A",
    ]
    texts = ["relevant", "not relevant at all", "x"]
    packs = []
    original = type(tiny_lm)._score_pack
    monkeypatch.setattr(type(tiny_lm), "PACK_TOKENS", pack_tokens)
    monkeypatch.setattr(
        type(tiny_lm),
        "_score_pack",
        lambda self, *a, **kw: packs.append(len(a[2])) or original(self, *a, **kw),
    )
    tiny_lm.set_prefix_cache(prefix_cache_mb)
    try:
        scores = tiny_lm.score_continuations(messages, texts)
    finally:
        tiny_lm.set_prefix_cache(0)
    assert sum(packs) == len(messages) and (len(packs) > 1) == (pack_tokens < 100)
    for row, message in enumerate(messages):
        for col, text in enumerate(texts):
            expected = _full_pass_logprob(tiny_lm, message, text)
            assert scores.logprob[row, col] == pytest.approx(expected, abs=1e-4)


def test_pmi_cancels_an_options_prior(tiny_lm):
    """Among candidate option texts, find two where the summed cloze score prefers X
    only because the neutral prompt already likes X: PMI must then prefer Y, and its
    scores must be exactly conditional minus neutral."""
    words = ["apple", "stone", "river", "the", "xq", "zz zz", "a a a", "banana", "e", "no"]
    item_options = {"A": "placeholder", "B": "placeholder"}
    pair = None
    for x, y in itertools.permutations(words, 2):
        item = _item({"A": x, "B": y})
        none = read_options(tiny_lm, item, [], None, "cloze_none")
        pmi = read_options(tiny_lm, item, [], None, "cloze_pmi")
        if none.scores[0] > none.scores[1] and pmi.scores[1] > pmi.scores[0]:
            pair, item_options = (none, pmi), {"A": x, "B": y}
            break
    assert pair is not None, "no prior-driven pair among the candidate texts"
    none, pmi = pair
    neutral = tiny_lm.score_continuations([NEUTRAL_MESSAGE], list(item_options.values()))
    # X wins the summed score and has the larger prior; PMI removes exactly that prior
    assert neutral.logprob[0, 0] > neutral.logprob[0, 1]
    np.testing.assert_allclose(pmi.scores, np.asarray(none.scores) - neutral.logprob[0], atol=1e-6)
    assert pmi.detail["neutral_logprob"] == pytest.approx(list(neutral.logprob[0]))


def test_pmi_of_an_uninformative_prompt_is_a_tie(tiny_lm):
    """When the prompt is the neutral prompt itself, PMI gives every option 0."""
    texts = ["apple", "stone", "river"]
    conditional = tiny_lm.score_continuations([NEUTRAL_MESSAGE], texts).logprob[0]
    neutral = CachedLM(tiny_lm).score_continuations([NEUTRAL_MESSAGE], texts).logprob[0]
    np.testing.assert_allclose(conditional - neutral, 0.0, atol=1e-6)


@pytest.mark.parametrize("permutation", list(itertools.permutations(range(4)))[1::5])
def test_cyclic_letter_scores_are_permutation_equivariant(tiny_lm, permutation):
    texts = ["observe", "biopsy now", "repeat CT in 3 months", "no follow-up"]
    letters = ["A", "B", "C", "D"]
    base = _item(dict(zip(letters, texts, strict=True)))
    permuted_texts = [texts[i] for i in permutation]
    permuted = _item(dict(zip(letters, permuted_texts, strict=True)))
    a = read_options(tiny_lm, base, [], None, "letter_cyclic").scores
    b = read_options(tiny_lm, permuted, [], None, "letter_cyclic").scores
    # option text t has the same score wherever the item lists it
    np.testing.assert_allclose(b, [a[i] for i in permutation], atol=1e-5)
    # while plain letters are not equivariant on this model (position matters)
    la = read_options(tiny_lm, base, [], None, "letter").scores
    lb = read_options(tiny_lm, permuted, [], None, "letter").scores
    assert not np.allclose(lb, [la[i] for i in permutation], atol=1e-3)


def test_every_option_is_seen_at_every_position(tiny_lm):
    item = _item({"A": "w", "B": "x", "C": "y", "D": "z"})
    cyc = cyclic_letter_logprobs(tiny_lm, item, [])
    for position in range(4):
        assert sorted(order[position] for order in cyc.orders) == [0, 1, 2, 3]
    np.testing.assert_allclose(np.exp(cyc.logprobs).sum(axis=1), 1.0, atol=1e-6)


def test_pride_divides_out_the_position_prior(tiny_lm):
    item = _item({"A": "w", "B": "x", "C": "y", "D": "z"})
    prior = [0.7, 0.1, 0.1, 0.1]
    letter = read_options(tiny_lm, item, [], None, "letter").scores
    pride = read_options(tiny_lm, item, [], None, "letter_pride", position_prior={"4": prior})
    lp = np.asarray(letter) - np.log(np.exp(letter).sum())
    expected = lp - np.log(prior)
    expected -= np.log(np.exp(expected).sum())
    np.testing.assert_allclose(pride.scores, expected, atol=1e-6)
    # without a prior for this option count it falls back to the cyclic scores
    fallback = read_options(tiny_lm, item, [], None, "letter_pride", position_prior={})
    cyclic = read_options(tiny_lm, item, [], None, "letter_cyclic")
    assert fallback.scores == pytest.approx(cyclic.scores)
    assert "fallback" in fallback.detail


class _Recorder:
    """The real tiny model, recording every prompt it is asked to score."""

    def __init__(self, lm):
        self.lm = lm
        self.messages: list[str] = []

    def __getattr__(self, name):
        return getattr(self.lm, name)

    def score_options(self, messages, letters):
        self.messages += list(messages)
        return self.lm.score_options(messages, letters)

    def score_continuations(self, messages, continuations, **kw):
        self.messages += list(messages)
        return self.lm.score_continuations(messages, continuations, **kw)


def test_auto_calibration_never_looks_at_scored_items(tiny_lm):
    from safescale.experiments.config import parse_config
    from safescale.experiments.runner import select_items

    corpus = load_corpus("radiology-guidelines")
    config = parse_config(
        "name: cal\nmodels: [tiny]\ncorpora: [radiology-guidelines]\n"
        "answer: {formulation: auto, calibration_items: 4}\n"
    )
    held_out = calibration_item_ids(corpus, 4, config.seed)
    assert len(held_out) >= 4
    study = {i.id for i in select_items(corpus, config)}
    assert not study & set(held_out)
    assert len(study) + len(held_out) == len(corpus.items)
    # whole evidence groups are held out
    groups = {corpus.item(i).evidence_id for i in held_out}
    assert all(i.evidence_id not in groups for i in corpus.items if i.id in study)

    recorder = _Recorder(tiny_lm)
    record = calibrate(recorder, corpus, held_out, formulation="auto", tie_margin=0.05)
    questions_seen = {
        q
        for q in (corpus.item(i).question for i in study)
        if any(q in m for m in recorder.messages)
    }
    assert not questions_seen
    assert all(any(corpus.item(i).question in m for m in recorder.messages) for i in held_out)
    assert record["chosen"] in FORMULATIONS
    assert set(record["candidates"]) == set(FORMULATIONS)
    from safescale.statistics.validity import POSITION_LOCK_SHARE

    candidates = record["candidates"]
    eligible = {
        n: c for n, c in candidates.items() if c["top_position_share"] < POSITION_LOCK_SHARE
    } or candidates
    assert record["chosen"] in eligible
    best = max(c["accuracy_clean_evidence"] for c in eligible.values())
    assert candidates[record["chosen"]]["accuracy_clean_evidence"] >= best - 0.05


def test_calibration_items_do_not_depend_on_limit():
    corpus = load_corpus("radiology-guidelines")
    a = calibration_item_ids(corpus, 16, 0)
    assert a == calibration_item_ids(corpus, 16, 0)
    assert a != calibration_item_ids(corpus, 16, 1)
    assert len(a) <= len(corpus.items) // 2


def test_a_cache_copy_answers_from_the_snapshot_and_stays_independent(tiny_lm):
    texts = [["a follow-up scan", "no follow-up"]]
    warm = CachedLM(tiny_lm)
    first = warm.score_continuations([NEUTRAL_MESSAGE], texts).logprob[0]
    copy = warm.copy()
    again = copy.score_continuations([NEUTRAL_MESSAGE], texts).logprob[0]
    assert (copy.hits, copy.misses) == (2, 0) and list(again) == list(first)  # per text
    copy.score_continuations(["Question: other"], texts)  # misses, stored in the copy only
    assert copy.misses == 2
    warm.score_continuations(["Question: other"], texts)
    assert warm.misses == 4  # the original did not see the copy's entries
