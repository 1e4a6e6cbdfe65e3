"""The shared answer/detection pass on the real bundled SmolLM2: the CTX record from the
answer's prompt cache equals the separate teacher-forced pass (float32, CPU; tolerance
``atol = 1e-3`` on logits and lens KL of a 30-layer model, ``1e-3`` relative on the
ECRT features); sampled answers decoded from the answer's cache are the generated ones
(same tokens, log-probs within 1e-5) and P(True) from the CTX cache equals its separate
pass within 1e-3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safescale.agents import prompts
from safescale.corpora import load_corpus
from safescale.detection.baselines.ptrue import ptrue_nll_for, ptrue_nll_from
from safescale.detection.ecrt_features import ecrt_features

pytestmark = pytest.mark.slow


def test_shared_pass_equals_the_separate_pass_on_smollm2(bundled_lm):
    corpus = load_corpus("retina-rules")
    item = next(i for i in corpus.items if i.evidence.clean)
    passages = [corpus.passage(pid) for pid in item.evidence.clean]
    message = prompts.cloze_message(item, passages)
    noctx = prompts.cloze_message(item, [])
    texts = [item.options[letter] for letter in item.letters]
    state = bundled_lm.open_prompt(message, attentions=True)
    shared_scores = bundled_lm.score_continuations_from(state, texts).logprob
    plain_scores = bundled_lm.score_continuations([message], texts).logprob
    assert np.allclose(shared_scores, plain_scores, atol=1e-3)
    chosen = item.letters[int(np.argmax(shared_scores[0]))]
    response = f"Answer: {chosen}) {item.options[chosen]}"
    decoding = {"max_new_tokens": 4, "n": 2, "temperature": 1.0, "seed": 3}
    samples = bundled_lm.generate_from(state, **decoding)
    generated = bundled_lm.generate([message], answer_cue=True, **decoding)[0]
    assert [g.token_ids for g in samples] == [g.token_ids for g in generated]
    assert np.allclose(
        [g.logprob for g in samples], [g.logprob for g in generated], atol=1e-5, rtol=0
    )
    shared = bundled_lm.internals_from(state, response, lens="kl")
    separate = bundled_lm.internals(message, response, attentions=True, lens="kl")
    assert torch.equal(shared.input_ids, separate.input_ids)
    assert torch.allclose(shared.logits, separate.logits, atol=1e-3)
    assert torch.allclose(shared.lens_kl_to_final, separate.lens_kl_to_final, atol=1e-3)
    assert torch.allclose(shared.attentions, separate.attentions, atol=1e-4)
    no = bundled_lm.internals(noctx, response, lens="kl")
    a, b = ecrt_features(shared, no), ecrt_features(separate, no)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), key
    # P(True) v2 extends the CTX pass by its suffix; from scratch it is one more pass
    shared_ptrue = ptrue_nll_from(bundled_lm, state, shared.response_ids.tolist())
    separate_ptrue = ptrue_nll_for(bundled_lm, message, response)
    assert shared_ptrue == pytest.approx(separate_ptrue, rel=1e-3, abs=1e-3)
