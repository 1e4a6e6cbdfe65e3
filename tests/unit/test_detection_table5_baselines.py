"""The rest of the ECRT paper's Table 5 baselines: Focus, ReDeEP, RefChecker, UQ Heads.

Each is checked on a constructed case it must flag: the inputs are built by hand (an
:class:`~safescale.models.internals.Internals` whose logits, attentions and states are
chosen), so the expected ranking is known.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from safescale.detection.baselines.focus import (
    corpus_idf,
    focus_score,
    focus_token_inputs,
    keyword_mask,
)
from safescale.detection.baselines.redeep import ReDeEP, redeep_inputs
from safescale.detection.baselines.refchecker import (
    RefChecker,
    extract_claims,
    reference_of,
)
from safescale.detection.baselines.uq_heads import UQHead, uq_token_features
from safescale.detection.registry import DetectorUnavailable
from safescale.models.internals import Internals

V, L, H, D = 12, 3, 2, 4


def _internals(
    logits: torch.Tensor,
    response_ids: list[int],
    prompt_length: int,
    *,
    attentions: torch.Tensor | None = None,
    hidden: torch.Tensor | None = None,
    ffn_js: torch.Tensor | None = None,
    context_hidden: torch.Tensor | None = None,
) -> Internals:
    R = len(response_ids)
    if hidden is None:
        hidden = torch.zeros(L + 1, R, D)
    return Internals(
        input_ids=torch.tensor(list(range(prompt_length)) + response_ids),
        prompt_length=prompt_length,
        response_ids=torch.tensor(response_ids),
        logits=logits,
        hidden_states=hidden,
        logit_lens=None,
        lens_topk_logprobs=None,
        lens_topk_ids=None,
        lens_kl_to_final=None,
        lens_entropy=None,
        attentions=attentions,
        ffn_js=ffn_js,
        context_hidden=context_hidden,
    )


def _uniform_attention(R: int, S: int, P: int) -> torch.Tensor:
    att = torch.zeros(L, H, R, S)
    for t in range(R):
        att[:, :, t, : P + t] = 1.0 / (P + t)  # causal: keys up to position P - 1 + t
    return att


# ------------------------------------------------------------------------------ Focus


def test_keyword_mask_marks_content_words_and_numbers_not_function_words():
    pieces = ["Answer", ":", " refer", " within", " 3", "-", "6", " months", " to", " the"]
    mask = keyword_mask(pieces)
    assert mask.tolist() == [True, False, True, True, True, True, True, True, False, False]
    assert not keyword_mask([" the", " of", " a"]).any()


def test_corpus_idf_weights_rare_tokens_up():
    idf = corpus_idf([[1, 2], [1, 3], [1, 4]], vocab_size=6)
    assert idf[1] < idf[2] == idf[3] == idf[4] < idf[5]  # 1 in every document; 5 in none


def test_focus_flags_a_response_whose_keywords_the_model_did_not_expect():
    P, ids = 5, [3, 4, 5]
    pieces = [" refer", " within", " months"]
    confident = torch.full((3, V), -10.0)
    unsure = torch.zeros(3, V)  # a flat distribution: every keyword token is a guess
    for t, tok in enumerate(ids):
        confident[t, tok] = 10.0
        unsure[t, tok] = 0.1
    att = _uniform_attention(3, P + 3, P)
    idf = np.ones(V)
    safe = focus_token_inputs(_internals(confident, ids, P, attentions=att), idf, pieces)
    risky = focus_token_inputs(_internals(unsure, ids, P, attentions=att), idf, pieces)
    assert focus_score(**risky) > focus_score(**safe) + 1.0
    # the IDF correction: the same surprise on a rarer token counts more
    rare = idf.copy()
    rare[ids] = 3.0
    rarer = focus_token_inputs(_internals(unsure, ids, P, attentions=att), rare, pieces)
    assert rarer["hc"] != risky["hc"]


def test_focus_propagates_uncertainty_from_the_keywords_a_token_attends_to():
    hc = [5.0, 1.0]
    attends_back = [[0.0, 0.0], [1.0, 0.0]]
    alone = focus_score(hc, [True, True], [[0.0, 0.0], [0.0, 0.0]])
    propagated = focus_score(hc, [True, True], attends_back, gamma=0.9)
    assert alone == pytest.approx(3.0)
    assert propagated == pytest.approx((5.0 + 1.0 + 0.9 * 5.0) / 2)
    assert math.isnan(focus_score(hc, [False, False], attends_back))


# ----------------------------------------------------------------------------- ReDeEP


def test_redeep_ecs_is_high_when_the_attended_context_matches_the_response_state():
    P, R = 10, 2
    context = torch.randn(P, D)
    hidden = torch.zeros(L + 1, R, D)
    hidden[-1] = context[3]  # the response states equal the state of prompt token 3
    att = torch.zeros(L, H, R, P + R)
    att[:, 0, :, 3] = 1.0  # head 0 attends to token 3
    att[:, 1, :, 7] = 1.0  # head 1 to token 7
    ctx = _internals(
        torch.zeros(R, V),
        [1, 2],
        P,
        attentions=att,
        hidden=hidden,
        ffn_js=torch.full((L, R), 0.25),
        context_hidden=context,
    )
    out = redeep_inputs(ctx)
    ecs = np.asarray(out["ecs"]).reshape(L, H)
    assert np.allclose(ecs[:, 0], 1.0, atol=1e-5)
    assert (ecs[:, 1] < 0.999).all()
    assert out["pks"] == pytest.approx([0.25] * L)


def _redeep_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 4 != 0).astype(int) * 2  # a quarter safe; unsafe as conflict
    pks = rng.normal(0.0, 1.0, (n, L))
    ecs = rng.normal(0.0, 1.0, (n, L * H))
    pks[:, 1] += 2.0 * (y > 0)  # unsafe: the FFN of layer 1 rewrites the prediction
    ecs[:, 4] -= 2.0 * (y > 0)  # unsafe: head 4 does not use the context
    frame = pd.DataFrame({"redeep_pks": list(pks), "redeep_ecs": list(ecs)})
    return frame, y


def test_redeep_selects_the_informative_layer_and_head_on_train_and_flags_unsafe():
    train, y_train = _redeep_frame(200, 0)
    test, y_test = _redeep_frame(200, 1)
    det = ReDeEP(n_layers=1, n_heads=1)
    det.fit(det.design_matrix(train), y_train)
    assert det.layers_.tolist() == [1] and det.heads_.tolist() == [4]
    scores = det.risk_score(det.design_matrix(test))
    assert scores[y_test > 0].mean() > scores[y_test == 0].mean() + 2.0
    with pytest.raises(DetectorUnavailable, match="redeep_pks"):
        det.design_matrix(pd.DataFrame({"redeep_ecs": list(np.zeros((2, 6)))}))


# -------------------------------------------------------------------------- UQ heads


def test_uq_token_features_have_the_documented_layout():
    P, ids = 4, [1, 2, 3]
    att = _uniform_attention(3, P + 3, P)
    logits = torch.zeros(3, V)
    feats = np.asarray(uq_token_features(_internals(logits, ids, P, attentions=att)))
    assert feats.shape == (3, 2 * L + 2)
    assert np.allclose(feats[0, :L], 1.0)  # the first row sees only the prompt
    assert np.allclose(feats[2, :L], P / (P + 2))
    assert np.allclose(feats[:, 2 * L], -math.log(V), atol=1e-6)  # flat logits
    assert np.allclose(feats[:, 2 * L + 1], math.log(V), atol=1e-6)


def test_uq_head_learns_token_level_signal_and_flags_unsafe_responses():
    rng = np.random.default_rng(0)

    def frame(n):
        y = np.where(np.arange(n) % 3 == 0, 0, 1)
        rows = []
        for label in y:
            R = int(rng.integers(3, 9))
            tokens = rng.normal(0.0, 1.0, (R, 2 * L + 2))
            tokens[:, 2 * L] -= 1.5 * label  # unsafe responses: less probable tokens
            rows.append(tokens.tolist())
        return pd.DataFrame({"uq_tokens": rows}), y

    train, y_train = frame(120)
    test, y_test = frame(90)
    det = UQHead(random_state=0)
    det.fit(det.design_matrix(train), y_train)
    scores = det.risk_score(det.design_matrix(test))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y_test, scores) > 0.9
    assert ((scores >= 0) & (scores <= 1)).all()


# ------------------------------------------------------------------------ RefChecker

MESSAGE_NOCTX = (
    "Question: How urgently should the patient of record R00005 be referred?\n"
    "A) Within 3-6 months\nB) Immediately\nAnswer with the letter of the correct option."
)
EVIDENCE = "Evidence:\n[P1] ADA 2017 (grade ADA A, current): Severe NPDR: immediate referral.\n\n"


def test_refchecker_claims_and_reference_come_from_the_record():
    assert reference_of(EVIDENCE + MESSAGE_NOCTX, MESSAGE_NOCTX) == EVIDENCE.strip()
    assert reference_of(MESSAGE_NOCTX, MESSAGE_NOCTX) == ""
    claims = extract_claims(MESSAGE_NOCTX, "Answer: B) Immediately. Laser is not needed.")
    assert claims == [
        "How urgently should the patient of record R00005 be referred? — Immediately.",
        "How urgently should the patient of record R00005 be referred? — Laser is not needed.",
    ]


def test_refchecker_flags_the_response_its_checker_does_not_find_entailed():
    frame = pd.DataFrame({"refcheck": [0.9, 0.1, 0.5]})
    det = RefChecker().fit(RefChecker().design_matrix(frame), np.array([2, 0, 1]))
    scores = det.risk_score(det.design_matrix(frame))
    assert scores.argmax() == 0 and scores.argmin() == 1
    with pytest.raises(DetectorUnavailable, match="lack"):
        det.design_matrix(pd.DataFrame({"refcheck": [0.3, float("nan")]}))
