"""The answer's prompt pass shared with detection, on the tiny random Llama.

Tolerance: float32 on CPU; a prompt prefilled in one chunk and extended by the response
differs from one teacher-forced pass only by summation order, measured here at ~1e-6.
The tests allow ``atol = 1e-4`` on logits, hidden states and lens statistics, and a
relative ``1e-4`` (plus ``atol = 1e-5``) on derived features.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from safescale.corpora import load_corpus
from safescale.detection.baselines.eigenscore import sample_embeddings
from safescale.detection.extraction import (
    DETECTION_INPUTS_DIR,
    DetectionInputStore,
    ExtractionPlan,
    extract_features,
    record_key,
    token_idf,
)
from safescale.experiments.config import parse_config
from safescale.models.passes import cache_prefix
from safescale.models.tiny import save_tiny_model
from safescale.rundir import SampleRecord, load_responses

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
    keys = [layer.keys.clone() for layer in state.cache.layers]
    shared = tiny_lm.score_continuations_from(state, texts)
    # the continuations ran over a view of the cache: the pass itself is unchanged
    layers = state.cache.layers
    assert all(torch.equal(k, layer.keys) for k, layer in zip(keys, layers, strict=True))
    assert tiny_lm.score_continuations_from(state, texts[1:2]) is not None
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
    # the pass stops after decoder layer `layer - 1` (the layers above are not run)
    assert tiny_lm.decoder_layers() is not None and 1 <= layer < tiny_lm.n_layers
    shared = tiny_lm.last_hidden_from(
        tiny_lm.open_prompt(MESSAGE), [s.token_ids for s in samples], layer
    )
    separate = sample_embeddings(tiny_lm, MESSAGE, samples, layer)
    assert shared.shape == separate.shape and shared.shape[0] == 3
    assert np.allclose(shared, separate, atol=ATOL)


@pytest.mark.parametrize("attentions", [False, True])
@pytest.mark.parametrize("n", [1, 4])
def test_samples_from_the_answer_pass_are_the_generated_samples(tiny_lm, attentions, n):
    settings = {"max_new_tokens": 6, "n": n, "temperature": 1.0, "seed": 7}
    state = tiny_lm.open_prompt(MESSAGE, attentions=attentions)
    assert tiny_lm.answer_logits(state) is not None  # the answer is read first
    cached = state.cache.get_seq_length()
    # decoded from a view of the prompt part of the answer's cache (no fallback prefill)
    assert cache_prefix(state.cache, len(state.prompt) - 1) is not None
    shared = tiny_lm.generate_from(state, **settings)
    plain = tiny_lm.generate([MESSAGE], answer_cue=True, **settings)[0]
    assert len(shared) == n
    assert [g.token_ids for g in shared] == [g.token_ids for g in plain]
    assert [g.token_logprobs for g in shared] == [g.token_logprobs for g in plain]
    assert [g.text for g in shared] == [g.text for g in plain]
    # the answer pass is untouched: the response still extends it
    assert state.cache.get_seq_length() == cached
    record = tiny_lm.internals_from(state, RESPONSE, lens="none")
    assert torch.allclose(
        record.logits, tiny_lm.internals(MESSAGE, RESPONSE, lens="none").logits, atol=ATOL
    )
    # and after the response was fed, sampling still decodes from the prompt part
    again = tiny_lm.generate_from(state, **settings)
    assert [g.token_ids for g in again] == [g.token_ids for g in plain]


def test_samples_differ_across_seeds_and_match_the_cached_generate(tiny_lm):
    from safescale.agents.lmcache import CachedLM

    settings = {"max_new_tokens": 6, "n": 3, "temperature": 1.0}
    state = tiny_lm.open_prompt(MESSAGE)
    a = tiny_lm.generate_from(state, seed=1, **settings)
    b = tiny_lm.generate_from(state, seed=2, **settings)
    assert [g.token_ids for g in a] != [g.token_ids for g in b]
    cached = CachedLM(tiny_lm)
    first = cached.generate_from(state, seed=1, **settings)
    assert cached.misses == 1 and [g.token_ids for g in first] == [g.token_ids for g in a]
    # the cached value is the one generate() reads: same key, same samples
    second = cached.generate([MESSAGE], answer_cue=True, seed=1, **settings)[0]
    assert cached.hits == 1
    assert [(g.token_ids, g.token_logprobs) for g in second] == [
        (g.token_ids, g.token_logprobs) for g in a
    ]
    third = cached.generate_from(tiny_lm.open_prompt(MESSAGE), seed=2, **settings)
    assert [g.token_ids for g in third] == [g.token_ids for g in b]


@pytest.mark.parametrize("attentions", [False, True])
def test_ptrue_from_the_ctx_pass_equals_the_separate_pass(tiny_lm, attentions):
    from safescale.detection.baselines.ptrue import ptrue_ids, ptrue_nll_for, ptrue_nll_from

    state = tiny_lm.open_prompt(MESSAGE, attentions=attentions)
    tiny_lm.answer_logits(state)
    ctx = tiny_lm.internals_from(state, RESPONSE, lens="kl")
    response_ids = ctx.response_ids.tolist()
    ids, n_target = ptrue_ids(tiny_lm, response_ids)
    # the P(True) sequence starts with exactly the CTX pass's sequence
    assert ids[: len(response_ids)] == response_ids and n_target >= 1
    assert len(state.fed) == len(response_ids)  # last prompt token + response[:-1]
    shared = ptrue_nll_from(tiny_lm, state, response_ids)
    # then only the last response token, the suffix and the target but its last
    assert len(state.fed) == len(ids)
    separate = ptrue_nll_for(tiny_lm, MESSAGE, RESPONSE)
    assert shared > 0 and math.isfinite(shared)
    assert shared == pytest.approx(separate, rel=1e-4, abs=1e-5)
    # the definition: -log p(target | prompt + response + suffix) of one plain forward
    full = tiny_lm.internals(MESSAGE, ids, lens="off")
    assert separate == pytest.approx(
        float(-full.response_logprobs[-n_target:].double().sum()), rel=1e-4, abs=1e-5
    )


def test_feed_forward_states_from_the_answer_pass_equal_the_separate_pass(tiny_lm):
    state = tiny_lm.open_prompt(MESSAGE, attentions=True, ffn=True)
    assert tiny_lm.answer_logits(state) is not None
    shared = tiny_lm.internals_from(state, RESPONSE, lens="kl")
    separate = tiny_lm.internals(MESSAGE, RESPONSE, attentions=True, ffn=True, lens="kl")
    P, R = shared.prompt_length, shared.response_ids.numel()
    assert shared.ffn_js.shape == (tiny_lm.n_layers, R)
    assert shared.context_hidden.shape == (P, tiny_lm.model.config.hidden_size)
    assert torch.allclose(shared.ffn_js, separate.ffn_js, atol=ATOL)
    assert torch.allclose(shared.context_hidden, separate.context_hidden, atol=ATOL)
    # the definition, from one plain forward with the pre-FFN residual read by a hook
    ids = shared.input_ids[None].clone()
    layers = tiny_lm.model.model.layers
    before: dict[int, torch.Tensor] = {}
    hooks = [
        layer.post_attention_layernorm.register_forward_pre_hook(
            lambda _m, args, i=i: before.__setitem__(i, args[0][0])
        )
        for i, layer in enumerate(layers)
    ]
    with torch.inference_mode():
        out = tiny_lm.model(input_ids=ids, output_hidden_states=True)
    for hook in hooks:
        hook.remove()
    rows = torch.arange(P - 1, P + R - 1)
    norm, head = tiny_lm.model.model.norm, tiny_lm.model.lm_head
    with torch.inference_mode():
        for i in range(len(layers)):
            pre = torch.log_softmax(head(norm(before[i][rows])).float(), -1)
            post_h = (
                out.logits[0, rows]
                if i == len(layers) - 1
                else head(norm(out.hidden_states[i + 1][0, rows]))
            )
            post = torch.log_softmax(post_h.float(), -1)
            m = torch.logsumexp(torch.stack([pre, post]), 0) - math.log(2.0)
            js = 0.5 * ((pre.exp() * (pre - m)).sum(-1) + (post.exp() * (post - m)).sum(-1))
            assert torch.allclose(js, shared.ffn_js[i], atol=1e-5), i
        assert torch.allclose(out.hidden_states[-1][0, :P], shared.context_hidden, atol=ATOL)


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
        if isinstance(x[0], list):  # vectors, or ragged per-token rows
            for u, v in zip(x, y, strict=True):
                assert np.allclose(np.array(u), np.array(v), rtol=1e-4, atol=1e-5), column
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
    from safescale.experiments.runner import model_loader

    _, shared, _ = runs
    records = load_responses(shared.run_dir)[0]
    store = DetectionInputStore(Path(shared.run_dir) / DETECTION_INPUTS_DIR)
    lm = model_loader(shared.models)("tiny", None)
    assert all(store.get(lm.model_hash, record_key(r)) is not None for r in records)
    plan = ExtractionPlan.for_detectors(shared.detection.detectors)
    assert plan.attentions and plan.ptrue and plan.sample_hidden
    assert plan.ffn and plan.focus and plan.refcheck  # the paper's whole Table 5

    def no_model():
        raise AssertionError("every response has stored inputs: no model is needed")

    from_store = extract_features(records, no_model, plan, stored=store, model_hash=lm.model_hash)
    corpus = load_corpus("retina-rules")
    separate = extract_features(records, lm, plan, idf=lambda m: token_idf(m, [corpus]))
    _numeric_close(from_store, separate)
    assert from_store["lookback"].map(len).iloc[0] == lm.n_layers * 4  # tiny model: 4 heads
    assert from_store["redeep_ecs"].map(len).iloc[0] == lm.n_layers * 4
    assert from_store["redeep_pks"].map(len).iloc[0] == lm.n_layers
    assert from_store["uq_tokens"].map(lambda t: len(t[0])).iloc[0] == 2 * lm.n_layers + 2
    assert from_store["focus"].notna().all() and from_store["refcheck"].notna().all()


def test_stored_ptrue_of_another_prompt_version_is_recomputed(runs, tmp_path):
    import json

    from safescale.experiments.runner import model_loader

    _, shared, _ = runs
    record = load_responses(shared.run_dir)[0][0]
    lm = model_loader(shared.models)("tiny", None)
    source = DetectionInputStore(Path(shared.run_dir) / DETECTION_INPUTS_DIR)
    payload = source.get(lm.model_hash, record_key(record))
    assert payload["ptrue"]["prompt"] == 2
    store = DetectionInputStore(tmp_path)
    plan = ExtractionPlan(ptrue=True)
    current = extract_features([record], lm, plan, stored=source)["ptrue_nll"].iloc[0]
    assert current == payload["ptrue"]["ptrue_nll"]
    stale = json.loads(json.dumps(payload))
    stale["ptrue"] = {"ptrue_nll": 999.0}  # a version-1 group (no prompt version)
    store.put(lm.model_hash, record_key(record), stale)
    row = extract_features([record], lm, plan, stored=store).iloc[0]
    assert row["ptrue_nll"] == pytest.approx(current, rel=1e-4, abs=1e-5)


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


def test_attention_rows_equal_one_whole_eager_pass(tiny_lm):
    record = tiny_lm.internals(MESSAGE, RESPONSE, attentions=True, lens="off")
    ids = record.input_ids[None]
    P, R = record.prompt_length, record.response_ids.numel()
    with torch.inference_mode(), tiny_lm.attention_mode("eager"):
        out = tiny_lm.model(input_ids=ids, output_attentions=True, output_hidden_states=True)
    rows = torch.stack([a[0][:, P - 1 : P + R - 1, :] for a in out.attentions])
    assert record.attentions.shape == rows.shape
    assert torch.allclose(record.attentions, rows, atol=ATOL)
    assert torch.allclose(record.logits, out.logits[0, P - 1 : P + R - 1], atol=ATOL)
    # without attentions: one plain pass, the LM head only on the prediction rows
    plain = tiny_lm.internals(MESSAGE, RESPONSE, lens="off")
    assert plain.attentions is None
    assert torch.allclose(plain.logits, record.logits, atol=ATOL)
    assert torch.allclose(plain.hidden_states, record.hidden_states, atol=ATOL)


def test_kl_lens_mode_gives_the_same_kl_without_the_entropy(tiny_lm):
    full = tiny_lm.internals(MESSAGE, RESPONSE, lens="none")
    kl = tiny_lm.internals(MESSAGE, RESPONSE, lens="kl")
    assert torch.allclose(full.lens_kl_to_final, kl.lens_kl_to_final, atol=1e-6)
    assert kl.lens_entropy is None and full.lens_entropy is not None
    # the batched lens equals the per-layer definition log_softmax(head(norm(h_l)))
    ref = tiny_lm.internals(MESSAGE, RESPONSE, lens="full")
    head, norm = tiny_lm.model.get_output_embeddings(), tiny_lm.final_norm()
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


def test_the_detection_stage_measures_transfer_between_conditions(runs, tmp_path):
    from safescale.experiments.runner import detect_run
    from safescale.rundir import RunDir

    _, shared, _ = runs
    run_copy = tmp_path / "run"
    shutil.copytree(shared.run_dir, run_copy)
    detect_run(run_copy, shared.detection.detection_config(), models=shared.models)
    (report,) = RunDir(run_copy).triage()
    keys = {f"tiny · retina-rules · {c}" for c in ("clean_evidence", "conflict_evidence")}
    cells = report.transfer
    assert {(c["train"], c["test"]) for c in cells} == {(a, b) for a in keys for b in keys}
    for cell in cells:
        assert cell["method"] == "ecrt"
        if cell["s1_ba"] is None:  # a cell that cannot be measured says why
            assert cell["reason"]
            continue
        # every response of the test set, scored once, but those of a fold whose
        # training part lacked a class (said in the cell's note)
        assert cell["n_test"] == 15 or "could not be fitted" in cell["note"]
        assert 0 < cell["n_test"] <= 15
        ba = cell["s1_ba"]
        if ba["lo"] is None:  # no interval: too few responses of a class, and said so
            assert cell["n_safe"] < 20
        else:
            assert ba["lo"] <= ba["estimate"] <= ba["hi"]
    md = (run_copy / "detection" / "triage.md").read_text()
    assert "Transfer of ecrt (rows: trained on; columns: tested on" in md
    assert "(no interval: too few responses)" in md or "[" in md.split("Transfer of ecrt")[1]
