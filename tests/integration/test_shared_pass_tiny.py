"""The answer's prompt pass shared with detection, on the tiny random Llama.

Tolerance: float32 on CPU; a prompt prefilled in one chunk and extended by the response
differs from one teacher-forced pass only by summation order, measured here at ~1e-6.
The tests allow ``atol = 1e-4`` on logits, hidden states and lens statistics, and a
relative ``1e-4`` (plus ``atol = 1e-5``) on derived features.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from safescale.agents.records import SampleRecord
from safescale.detection.baselines.eigenscore import sample_embeddings
from safescale.detection.extraction import (
    DETECTION_INPUTS_DIR,
    DetectionInputStore,
    ExtractionPlan,
    extract_features,
    record_key,
)
from safescale.experiments.config import parse_config
from safescale.experiments.rundir import load_responses
from safescale.models.tiny import save_tiny_model

ATOL = 1e-4
MESSAGE = "Evidence:\n[P1] Laser is first line for this finding.\n\nQuestion: What next?"
RESPONSE = "Answer: B) laser therapy now"


@pytest.mark.parametrize("attentions", [False, True])
def test_internals_from_the_answer_pass_equal_the_separate_pass(tiny_lm, attentions):
    state = tiny_lm.open_prompt(MESSAGE, attentions=attentions)
    assert tiny_lm.answer_logits(state) is not None  # the cue is fed first, as the answer does
    shared = tiny_lm.internals_from(state, RESPONSE, lens="full")
    separate = tiny_lm.internals(MESSAGE, RESPONSE, attentions=attentions, lens="full")
    assert torch.equal(shared.input_ids, separate.input_ids)
    assert shared.prompt_length == separate.prompt_length
    for name in ("logits", "hidden_states", "logit_lens", "lens_kl_to_final", "lens_entropy"):
        a, b = getattr(shared, name), getattr(separate, name)
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, atol=ATOL), name
    if attentions:
        assert shared.attentions.shape == separate.attentions.shape
        assert torch.allclose(shared.attentions, separate.attentions, atol=ATOL)
    else:
        assert shared.attentions is None


def test_answer_scores_from_the_pass_equal_the_plain_calls(tiny_lm):
    state = tiny_lm.open_prompt(MESSAGE)
    letters = ["A", "B", "C"]
    assert np.allclose(
        tiny_lm.score_options_from(state, letters),
        tiny_lm.score_options([MESSAGE], letters)[0],
        atol=ATOL,
    )
    texts = ["laser therapy now", "observe", "refer to a retina specialist"]
    shared = tiny_lm.score_continuations_from(state, texts)
    plain = tiny_lm.score_continuations([MESSAGE], texts)
    assert np.allclose(shared.logprob, plain.logprob, atol=ATOL)
    assert (shared.n_tokens == plain.n_tokens).all() and (shared.n_chars == plain.n_chars).all()
    # once the response is fed, continuations cannot come from this cache any more
    tiny_lm.internals_from(state, RESPONSE)
    assert tiny_lm.score_continuations_from(state, texts) is None


def test_sample_hidden_states_from_the_prompt_cache(tiny_lm):
    gens = tiny_lm.generate([MESSAGE], max_new_tokens=5, n=3, temperature=1.0, answer_cue=True)[0]
    samples = [
        SampleRecord(
            text=g.text,
            letter=None,
            token_ids=list(g.token_ids),
            token_logprobs=list(g.token_logprobs),
            temperature=1.0,
        )
        for g in gens
    ]
    layer = tiny_lm.n_layers // 2
    shared = tiny_lm.last_hidden_from(
        tiny_lm.open_prompt(MESSAGE), [s.token_ids for s in samples], layer
    )
    separate = sample_embeddings(tiny_lm, MESSAGE, samples, layer)
    assert shared.shape == separate.shape and shared.shape[0] == 3
    assert np.allclose(shared, separate, atol=ATOL)


def test_a_pass_that_does_not_match_the_response_falls_back_to_the_separate_pass(tiny_lm):
    state = tiny_lm.open_prompt(MESSAGE)
    tiny_lm.feed(state, [state.prompt[-1], 5, 6])  # not the response's tokens
    shared = tiny_lm.internals_from(state, RESPONSE, lens="none")
    separate = tiny_lm.internals(MESSAGE, RESPONSE, lens="none")
    assert torch.allclose(shared.logits, separate.logits, atol=ATOL)


# ------------------------------------------------------------------ the runner
def _config(model_dir: Path, out: Path, detection: bool):
    text = f"""
name: shared
models:
  - name: tiny
    spec: {model_dir}
corpora: [retina-rules]
conditions: [clean_evidence, conflict_evidence]
answer: {{formulation: cloze_pmi}}
compute: {{detection_samples: 3}}
detection:
  enabled: {str(detection).lower()}
bootstrap: {{replicates: 50}}
limit: 15
"""
    return parse_config(text).with_overrides(output_dir=out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from safescale.experiments import run_experiment

    root = tmp_path_factory.mktemp("shared")
    model_dir = save_tiny_model(root / "model")
    shared = _config(model_dir, root / "shared", detection=True)
    plain = _config(model_dir, root / "plain", detection=False)
    run_experiment(shared, progress=False)
    run_experiment(plain, progress=False)
    return model_dir, shared, plain


def _numeric_close(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    for column in a.columns:
        x, y = a[column].to_list(), b[column].to_list()
        if isinstance(x[0], list):
            assert np.allclose(np.array(x), np.array(y), rtol=1e-4, atol=1e-5), column
        elif isinstance(x[0], float):
            assert np.allclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True), column
        else:
            assert x == y, column


def test_shared_answers_equal_the_unshared_answers(runs):
    _, shared, plain = runs
    a = {(r.condition, r.item): r for r in load_responses(shared.run_dir)[0]}
    b = {(r.condition, r.item): r for r in load_responses(plain.run_dir)[0]}
    assert a.keys() == b.keys() and len(a) == 30
    for key, record in a.items():
        assert record.chosen == b[key].chosen
        assert record.response == b[key].response
        assert np.allclose(record.option_logits, b[key].option_logits, atol=ATOL)
        assert [s.token_ids for s in record.samples] == [s.token_ids for s in b[key].samples]


def test_stored_inputs_equal_the_separate_teacher_forced_features(runs):
    from safescale.experiments.runner import _model_loader

    _, shared, _ = runs
    records = load_responses(shared.run_dir)[0]
    store = DetectionInputStore(Path(shared.run_dir) / DETECTION_INPUTS_DIR)
    lm = _model_loader(shared.models)("tiny", None)
    assert all(store.get(lm.model_hash, record_key(r)) is not None for r in records)
    plan = ExtractionPlan.for_detectors(shared.detection.detectors)
    assert plan.attentions and plan.ptrue and plan.sample_hidden

    def no_model():
        raise AssertionError("every response has stored inputs: no model is needed")

    from_store = extract_features(records, no_model, plan, stored=store, model_hash=lm.model_hash)
    separate = extract_features(records, lm, plan)
    _numeric_close(from_store, separate)
    assert from_store["lookback"].map(len).iloc[0] == lm.n_layers * 4  # tiny model: 4 heads


def test_detect_train_refits_from_the_stored_inputs_without_the_model(runs, tmp_path):
    from safescale.experiments.runner import detect_run

    model_dir, shared, _ = runs
    run_copy = tmp_path / "run"
    shutil.copytree(shared.run_dir, run_copy)
    hidden = model_dir.with_name("gone")
    model_dir.rename(hidden)  # the model cannot be loaded while detection re-fits
    try:
        reports, _ = detect_run(run_copy, shared.detection.detection_config(), models=shared.models)
    finally:
        hidden.rename(model_dir)
    (report,) = reports
    assert report.n_records == 30
    assert report.row("ecrt").status == "ok"
    assert report.row("ptrue").status == "ok", report.row("ptrue").reason


def test_kl_lens_mode_gives_the_same_kl_without_the_entropy(tiny_lm):
    full = tiny_lm.internals(MESSAGE, RESPONSE, lens="none")
    kl = tiny_lm.internals(MESSAGE, RESPONSE, lens="kl")
    assert torch.allclose(full.lens_kl_to_final, kl.lens_kl_to_final, atol=1e-6)
    assert kl.lens_entropy is None and full.lens_entropy is not None
    # the batched lens equals the per-layer definition log_softmax(head(norm(h_l)))
    ref = tiny_lm.internals(MESSAGE, RESPONSE, lens="full")
    head, norm = tiny_lm.model.get_output_embeddings(), tiny_lm._final_norm()
    with torch.inference_mode():
        layer0 = torch.log_softmax(head(norm(ref.hidden_states[0])).float(), dim=-1)
    assert torch.allclose(ref.logit_lens[0], layer0, atol=1e-5)
    final = torch.log_softmax(ref.logits, dim=-1)
    kl0 = (final.exp() * (final - layer0)).sum(-1)
    assert torch.allclose(kl.lens_kl_to_final[0], kl0, atol=1e-5)


def test_prompts_with_a_common_prefix_share_its_prefill(tiny_lm):
    from safescale.agents import prompts

    question = "Which treatment is first line for centre-involving macular oedema with vision loss?"
    messages = [
        prompts.RELEVANCE.render(question=question, passage=f"[P1] Source {i}: finding {i}.")
        for i in range(3)
    ]
    ids = [tiny_lm.prompt_ids(m, answer_cue=True) for m in messages]
    prefix = tiny_lm._shared_prefix(ids)
    assert prefix is not None and len(prefix[0]) >= tiny_lm.MIN_SHARED_PREFIX
    answers = list(prompts.RELEVANCE_ANSWERS)
    together = tiny_lm.score_continuations(messages, answers).logprob
    alone = np.vstack([tiny_lm.score_continuations([m], answers).logprob for m in messages])
    assert np.allclose(together, alone, atol=ATOL)
    from safescale.agents.lmcache import CachedLM

    cached = CachedLM(tiny_lm)
    assert np.allclose(cached.score_continuations(messages, answers).logprob, alone, atol=ATOL)
    assert cached.misses == 6
    assert np.allclose(cached.score_continuations(messages, answers).logprob, alone, atol=ATOL)
    assert cached.hits == 6
