"""The served backend against a real llama-cpp-python server (bundled SmolLM2 GGUF).

The probe must find the server's real echo bug (each echoed token scored by the
distribution after it, llama-cpp-python issue #1983) and restrict the model to the
letter formulations; letters read from its generation log-probs must match the
in-process transformers backend on the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SERVED_KEY_ENV

from safescale.agents import prompts
from safescale.agents.answering import log_softmax
from safescale.corpora import load_corpus
from safescale.experiments.runner import item_order
from safescale.models.served import LETTER_FORMULATIONS, ServedSettings, load_served

pytestmark = pytest.mark.slow

#: Largest |served - transformers| letter log-softmax over the 40 parity prompts
#: (measured 0.148, 40 of 40 choices equal; the engines compute the Q4_1 weights
#: differently: llama.cpp multiplies quantized blocks, transformers dequantized float32).
LETTER_TOLERANCE = 0.25


def _settings(server, **changes) -> ServedSettings:
    base = {
        "kind": "openai",
        "name": "smollm2-served",
        "model": "smollm2-135m-instruct",
        "base_url": server.base_url,
        "api_key_env": SERVED_KEY_ENV,
        "tokenizer": "smollm2-135m-instruct",
        "max_concurrency": 2,
        "context_length": 2048,
        # llama-cpp-python computes the whole distribution anyway: 1000 alternatives cost
        # nothing measurable and leave almost no token censored
        "top_logprobs": 1000,
    }
    return ServedSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def served(llama_server):
    model = load_served(_settings(llama_server))
    yield model
    model.close()


def test_probe_finds_the_misaligned_echo_and_keeps_letters(served, bundled_lm):
    record = served.probe_record
    assert record["generation_logprobs"] == "ok"
    assert record["prompt_logprobs"] == "unusable"
    assert "misaligned" in record["verdict"]
    assert served.formulations == LETTER_FORMULATIONS
    assert served.continuations == "generation"
    paris = next(c for c in record["checks"] if c["prefix"] == "The capital of France is")
    assert paris["token"] == " Paris"
    assert paris["echo"] == "misaligned"
    # generation log-probs are right: the in-process model on the same weights agrees
    tok = bundled_lm.tokenizer
    ids = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    import torch

    with torch.inference_mode():
        logits = bundled_lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
    paris_id = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    local = float(torch.log_softmax(logits.float(), -1)[paris_id])
    assert abs(paris["generated_logprob"] - local) < 0.05
    # ... and the echoed one is far from both (a shift, not noise of the engines)
    assert abs(paris["echoed_logprob"] - local) > 1.0


def test_cloze_is_refused_and_short_continuations_come_from_generation(served, bundled_lm):
    from safescale.agents.answering import read_options

    corpus = load_corpus("radiology-guidelines")
    item = corpus.items[0]
    with pytest.raises(ValueError, match="cannot serve the cloze_pmi formulation"):
        read_options(served, item, [], None, "cloze_pmi")
    # the critic's two-way answers: token by token from generation log-probs
    message = prompts.RELEVANCE.render(passage="N/A", question=item.question)
    remote = served.score_continuations([message], list(prompts.RELEVANCE_ANSWERS))
    local = bundled_lm.score_continuations([message], list(prompts.RELEVANCE_ANSWERS))
    assert remote.n_tokens.tolist() == local.n_tokens.tolist()
    assert served.stats.get("tokens_censored", 0) == 0
    print(f"continuation parity: max |dlogp| = {np.abs(remote.logprob - local.logprob).max():.4f}")
    np.testing.assert_allclose(remote.logprob, local.logprob, atol=LETTER_TOLERANCE)


def test_letters_match_transformers_on_40_clean_evidence_items(served, bundled_lm):
    corpus = load_corpus("radiology-guidelines")
    by_id = corpus.items_by_id
    items = [by_id[i] for i in item_order(corpus, 0)[:40]]
    groups: dict[tuple[str, ...], list[str]] = {}  # one batched call per letter set
    for item in items:
        clean = [corpus.passage(pid) for pid in item.evidence.clean]
        groups.setdefault(tuple(item.letters), []).append(prompts.answer_message(item, clean))
    same, worst = 0, 0.0
    for letters, messages in groups.items():
        remote = log_softmax(served.score_options(messages, list(letters)))
        local = log_softmax(bundled_lm.score_options(messages, list(letters)))
        same += int((remote.argmax(axis=1) == local.argmax(axis=1)).sum())
        worst = max(worst, float(np.abs(remote - local).max()))
    print(f"letter parity: {same}/40 same choice, max |dlogp| = {worst:.4f}")
    assert same >= 38  # at least 95 % of 40
    assert worst <= LETTER_TOLERANCE
    assert served.stats.get("letters_censored", 0) == 0


def test_identity_does_not_depend_on_the_address(llama_server, served):
    # the same server under another spelling of its address: same identity, same hash
    other = load_served(
        _settings(llama_server, base_url=f"http://localhost:{llama_server.port}/v1")
    )
    try:
        assert other.model_hash == served.model_hash
        assert "127.0.0.1" not in other.model_hash and other.model_hash.startswith("served:")
    finally:
        other.close()


def test_chat_route_serves_letters_only(llama_server):
    from safescale.models.backend import PromptError

    chat = load_served(_settings(llama_server, kind="openai-chat", name="smollm2-chat"))
    try:
        record = chat.probe_record
        assert record["endpoint"] == "/chat/completions"
        assert record["generation_logprobs"] == "ok" and chat.continuations is None
        assert chat.formulations == LETTER_FORMULATIONS
        corpus = load_corpus("radiology-guidelines")
        items = [corpus.items_by_id[i] for i in item_order(corpus, 0)[:4]]
        for item in items:
            clean = [corpus.passage(pid) for pid in item.evidence.clean]
            scores = chat.score_options([prompts.answer_message(item, clean)], list(item.letters))
            assert scores.shape == (1, len(item.letters)) and np.isfinite(scores).all()
        assert chat.stats["letter_prompts"] == len(items)
        with pytest.raises(PromptError, match="continuations"):
            chat.score_continuations(["Is it safe?"], [["yes", "no"]])
    finally:
        chat.close()
