"""The end-of-sequence choice of the sequence-level baselines, on a real teacher-forced pass."""

from __future__ import annotations

import math

import pytest
import torch

from safescale.detection.baselines import (
    mean_token_entropy,
    msp_seq,
    msp_step,
    nll_mean,
    scored_positions,
)

MESSAGE = "Which follow-up fits a 7 mm solid nodule? A) CT at 6-12 months B) nothing"


@pytest.fixture(scope="module")
def passes(tiny_lm):
    eos = tiny_lm.tokenizer.eos_token_id
    assert eos is not None
    ids = list(
        tiny_lm.tokenizer("Answer: A) CT at 6-12 months", add_special_tokens=False)["input_ids"]
    )
    with_eos = tiny_lm.internals(MESSAGE, [*ids, eos], lens="none")
    without = tiny_lm.internals(MESSAGE, ids, lens="none")
    return eos, with_eos, without


def test_msp_seq_differs_by_exactly_minus_log_p_eos(passes) -> None:
    eos, with_eos, without = passes
    log_p_eos = float(torch.log_softmax(with_eos.logits[-1].double(), dim=-1)[eos])
    scored = msp_seq(with_eos)  # default: the final EOS is scored, as LM-Polygraph does
    dropped = msp_seq(with_eos, include_eos=False, eos_token_id=eos)
    assert scored - dropped == pytest.approx(-log_p_eos, abs=1e-6)
    assert -log_p_eos > 0.1  # a random model: the EOS term is not negligible
    # leaving EOS out equals scoring the response teacher-forced without it
    assert dropped == pytest.approx(msp_seq(without), abs=1e-5)


def test_every_sequence_baseline_follows_the_same_choice(passes) -> None:
    eos, with_eos, without = passes
    for score in (nll_mean, msp_step, mean_token_entropy):
        assert score(with_eos, include_eos=False, eos_token_id=eos) == pytest.approx(
            score(without), abs=1e-5
        )
        assert not math.isclose(score(with_eos), score(without), abs_tol=1e-6)


def test_a_response_without_eos_is_scored_whole_either_way(passes) -> None:
    eos, _, without = passes
    assert msp_seq(without, include_eos=False, eos_token_id=eos) == msp_seq(without)
    assert scored_positions(without.response_ids) == slice(None)
    with pytest.raises(ValueError, match="eos_token_id"):
        msp_seq(without, include_eos=False)
