"""ECRT features and pass-based baseline scores on hand-made tensors with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safescale.detection.baselines import (
    ctx_noctx_pmi,
    eigenscore,
    ln_entropy,
    lookback_ratios,
    mean_token_entropy,
    msp_seq,
    msp_step,
    nll_mean,
    probe_vector,
    selfcheck_inconsistency,
)
from safescale.detection.ecrt_features import (
    deviation_features,
    discrepancy_features,
    ecrt_features,
    incoherence_features,
    js_divergence,
    kl_divergence,
)
from safescale.models.internals import Internals
from safescale.rundir import SampleRecord


def make_internals(
    logits: torch.Tensor,
    response_ids: list[int],
    hidden: torch.Tensor | None = None,
    lens_kl: torch.Tensor | None = None,
    attentions: torch.Tensor | None = None,
    prompt_length: int = 3,
) -> Internals:
    R, _V = logits.shape
    L1 = 3
    hidden = torch.ones(L1, R, 4) if hidden is None else hidden
    lens_kl = torch.zeros(hidden.shape[0], R) if lens_kl is None else lens_kl
    return Internals(
        input_ids=torch.arange(prompt_length + R),
        prompt_length=prompt_length,
        response_ids=torch.tensor(response_ids),
        logits=logits.float(),
        hidden_states=hidden.float(),
        logit_lens=None,
        lens_topk_logprobs=None,
        lens_topk_ids=None,
        lens_kl_to_final=lens_kl.float(),
        lens_entropy=torch.zeros(hidden.shape[0], R),
        attentions=attentions,
    )


def probs_logits(*rows: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(rows, dtype=torch.float64))


def test_identical_passes_give_zero_discrepancy_and_deviation():
    torch.manual_seed(0)
    logits = torch.randn(5, 11)
    hidden = torch.randn(4, 5, 8)
    kl = torch.rand(4, 5)
    kl[-1] = 0
    a = make_internals(logits, [1, 2, 3, 4, 5], hidden, kl)
    b = make_internals(logits.clone(), [1, 2, 3, 4, 5], hidden.clone(), kl.clone())
    feats = ecrt_features(a, b)
    for name, value in feats.items():
        if name.startswith(("disc_", "dev_")) and name != "disc_top1_agree":
            assert value == pytest.approx(0.0, abs=1e-6), name
    assert feats["disc_top1_agree"] == 1.0
    assert feats["inc_delta_mean"] == pytest.approx(0.0, abs=1e-12)
    # incoherence itself is not zero: it describes each pass, not their difference
    assert feats["inc_ctx_mean"] == pytest.approx(float(kl[:-1].mean()), rel=1e-6)


def test_discrepancy_known_values():
    ctx = make_internals(probs_logits([0.5, 0.5], [0.2, 0.8]), [0, 1])
    noctx = make_internals(probs_logits([0.9, 0.1], [0.2, 0.8]), [0, 1])
    f = discrepancy_features(ctx, noctx)
    kl0 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert f["disc_kl_mean"] == pytest.approx(kl0 / 2, rel=1e-5)
    assert f["disc_kl_max"] == pytest.approx(kl0, rel=1e-5)
    assert f["disc_kl_first"] == pytest.approx(kl0, rel=1e-5)
    m = [0.7, 0.3]
    js0 = 0.5 * sum(p * math.log(p / q) for p, q in zip([0.5, 0.5], m, strict=True)) + 0.5 * sum(
        p * math.log(p / q) for p, q in zip([0.9, 0.1], m, strict=True)
    )
    assert f["disc_js_max"] == pytest.approx(js0, rel=1e-5)
    # token 0 is id 0: log 0.5 - log 0.9; token 1 identical
    shift0 = math.log(0.5) - math.log(0.9)
    assert f["disc_logp_shift_mean"] == pytest.approx(shift0 / 2, rel=1e-5)
    assert f["disc_logp_shift_min"] == pytest.approx(shift0, rel=1e-5)
    assert f["disc_logp_shift_absmean"] == pytest.approx(abs(shift0) / 2, rel=1e-5)
    # argmax of [0.5, 0.5] is index 0 (first max) == argmax of [0.9, 0.1]
    assert f["disc_top1_agree"] == 1.0
    flipped = make_internals(probs_logits([0.1, 0.9], [0.2, 0.8]), [0, 1])
    assert discrepancy_features(flipped, noctx)["disc_top1_agree"] == 0.5


def test_js_is_symmetric_and_bounded():
    torch.manual_seed(1)
    p = torch.log_softmax(torch.randn(6, 9, dtype=torch.float64) * 5, -1)
    q = torch.log_softmax(torch.randn(6, 9, dtype=torch.float64) * 5, -1)
    assert torch.allclose(js_divergence(p, q), js_divergence(q, p))
    assert (js_divergence(p, q) <= math.log(2) + 1e-12).all()
    assert (kl_divergence(p, q) >= 0).all()


def test_deviation_known_values():
    R, _D = 2, 4
    base = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    hc = torch.stack([base, base, base])  # [L+1=3, R, D]
    orth = torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    hn = torch.stack([base, 2 * base, orth])
    logits = torch.zeros(R, 3)
    f = deviation_features(make_internals(logits, [0, 1], hc), make_internals(logits, [0, 1], hn))
    assert set(k for k in f if k.startswith("dev_cos_l")) == {"dev_cos_l1", "dev_cos_l2"}
    assert f["dev_cos_l1"] == pytest.approx(0.0, abs=1e-9)  # same direction, double norm
    assert f["dev_cos_l2"] == pytest.approx(1.0)  # orthogonal
    assert f["dev_cos_mean"] == pytest.approx(0.5)
    assert f["dev_cos_max"] == pytest.approx(1.0)
    # rel L2: layer 1 -> |h| / 1.5|h| = 2/3; layer 2 -> sqrt(2) / 1
    assert f["dev_rel_l2_max"] == pytest.approx(math.sqrt(2), rel=1e-6)
    assert f["dev_rel_l2_mean"] == pytest.approx((2 / 3 + math.sqrt(2)) / 2, rel=1e-6)


def test_incoherence_known_values():
    kl_c = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.0, 0.0]])
    kl_n = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.0, 0.0]])
    logits = torch.zeros(2, 3)
    f = incoherence_features(
        make_internals(logits, [0, 1], lens_kl=kl_c), make_internals(logits, [0, 1], lens_kl=kl_n)
    )
    assert f["inc_ctx_l0"] == pytest.approx(2.0)
    assert f["inc_ctx_l1"] == pytest.approx(2.0)
    assert "inc_ctx_l2" not in f  # the final layer is zero by definition and omitted
    assert f["inc_ctx_mean"] == pytest.approx(2.0)
    assert f["inc_ctx_tokmax"] == pytest.approx(2.5)  # token 1: (3 + 2) / 2
    assert f["inc_noctx_mean"] == pytest.approx(0.5)
    assert f["inc_delta_mean"] == pytest.approx(1.5)


def test_mismatched_response_ids_are_rejected():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same response token ids"):
        ecrt_features(make_internals(logits, [0, 1]), make_internals(logits, [0, 2]))


def test_pass_baselines_known_values():
    V = 4
    uniform = make_internals(torch.zeros(3, V), [0, 1, 2])
    assert nll_mean(uniform) == pytest.approx(math.log(V), rel=1e-6)
    assert msp_seq(uniform) == pytest.approx(3 * math.log(V), rel=1e-6)
    assert msp_step(uniform) == pytest.approx(1 - 1 / V, rel=1e-6)
    assert mean_token_entropy(uniform) == pytest.approx(math.log(V), rel=1e-6)
    peaked = make_internals(probs_logits([0.97, 0.01, 0.01, 0.01]), [0])
    assert mean_token_entropy(peaked) < mean_token_entropy(uniform)
    assert msp_step(peaked) == pytest.approx(0.03, rel=1e-5)
    # PMI: CTX makes token 0 more likely (0.97 vs 0.25)
    assert ctx_noctx_pmi(peaked, make_internals(torch.zeros(1, V), [0])) == pytest.approx(
        math.log(0.97 / 0.25), rel=1e-5
    )


def test_probe_vector_reads_last_row_of_layer():
    hidden = torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4)
    ctx = make_internals(torch.zeros(2, 3), [0, 1], hidden)
    np.testing.assert_array_equal(probe_vector(ctx, 2), hidden[2, 1].numpy())


def test_lookback_ratios_known_pattern():
    # L=1, H=2, R=2, P=3, S=5. Head 0 attends only to the prompt; head 1 at row 1 puts
    # half its mass on the prompt (spread over 3 keys) and half on the one new token.
    att = torch.zeros(1, 2, 2, 5)
    att[0, 0, 0, :3] = 1 / 3
    att[0, 0, 1, :3] = 1 / 3
    att[0, 1, 0, :3] = 1 / 3
    att[0, 1, 1, :3] = 0.5 / 3
    att[0, 1, 1, 3] = 0.5
    ctx = make_internals(torch.zeros(2, 3), [0, 1], attentions=att, prompt_length=3)
    ratios = lookback_ratios(ctx)
    assert ratios.shape == (2,)
    assert ratios[0] == pytest.approx(1.0)
    # row 0 -> 1; row 1 -> (0.5/3) / (0.5/3 + 0.5) = 0.25
    assert ratios[1] == pytest.approx((1.0 + 0.25) / 2)


def test_sample_scores_known_values():
    samples = [
        SampleRecord(text="A", letter="A", token_ids=[1], token_logprobs=[-1.0], temperature=0.5),
        SampleRecord(
            text="B x", letter="B", token_ids=[2, 3], token_logprobs=[-2.0, -4.0], temperature=0.5
        ),
        SampleRecord(text="A", letter="A", token_ids=[1], token_logprobs=[-3.0], temperature=0.5),
    ]
    assert ln_entropy(samples) == pytest.approx((1.0 + 3.0 + 3.0) / 3)
    assert selfcheck_inconsistency("A", samples) == pytest.approx(1 / 3)
    assert selfcheck_inconsistency("C", samples) == pytest.approx(1.0)
    assert math.isnan(ln_entropy([]))
    assert math.isnan(selfcheck_inconsistency("A", []))


def test_eigenscore_grows_with_sample_diversity():
    same = np.tile(np.array([[1.0, 2.0, 3.0, 4.0]]), (4, 1))
    # identical samples: centred Gram is rank <= 1 with equal rows -> eigenvalues
    # {4·|z - mean|², α, α, α}
    c = same[0] - same[0].mean()
    expected = (math.log(4 * c @ c + 1e-3) + 3 * math.log(1e-3)) / 4
    assert eigenscore(same) == pytest.approx(expected, rel=1e-6)
    rng = np.random.default_rng(0)
    diverse = rng.normal(size=(4, 16)) * 3
    assert eigenscore(diverse) > eigenscore(same)
    with pytest.raises(ValueError):
        eigenscore(same[:1])
