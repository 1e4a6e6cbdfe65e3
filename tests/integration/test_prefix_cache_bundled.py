"""The prefix cache on the real bundled SmolLM2-135M (slow tier): items that share an
evidence set, and max-context items that share the corpus-order block, read the same
option scores over a cached prefix as from a cold prefill.

Tolerance: float32 on CPU; the cached prompt is prefilled in two chunks instead of one,
which changes summation order only. Measured on these prompts: at most ~1e-5 on
summed continuation log-probabilities and letter logits (30 layers, 49,152-word
head). The test allows ``ATOL = 1e-3`` (the reliance stage's own tolerance between a
re-read and the recorded scores) and asks every chosen option to be equal.
"""

from __future__ import annotations

import numpy as np
import pytest

from safescale.agents.answering import message_for, read_options
from safescale.agents.nodes import max_context_block
from safescale.corpora import load_corpus

pytestmark = pytest.mark.slow

ATOL = 1e-3


def test_cached_prefixes_give_the_cold_scores_on_smollm2(bundled_lm):
    corpus = load_corpus("radiology-guidelines")
    items = [corpus.item(f"rad-000{i}") for i in (1, 2, 3)]  # one clean evidence set
    block = max_context_block(bundled_lm, corpus, limit=1008, formulation="cloze_token")
    block_passages = [corpus.passage(p) for p in block.kept]
    reads = [
        (item, [corpus.passage(p) for p in item.evidence.clean], formulation)
        for item in items
        for formulation in ("cloze_token", "letter")
    ] + [(item, block_passages, "cloze_token") for item in items[:2]]
    assert bundled_lm.prefix_cache is None
    cold = [read_options(bundled_lm, i, p, None, f).scores for i, p, f in reads]
    bundled_lm.set_prefix_cache(256)
    try:
        warm = [read_options(bundled_lm, i, p, None, f).scores for i, p, f in reads[:-1]]
        stats = bundled_lm.prefix_cache.stats
        before = stats.computed_tokens
        warm.append(read_options(bundled_lm, *reads[-1][:2], None, "cloze_token").scores)
        computed = stats.computed_tokens - before
    finally:
        bundled_lm.set_prefix_cache(0)
    for a, b in zip(warm, cold, strict=True):
        np.testing.assert_allclose(a, b, atol=ATOL)
        assert int(np.argmax(a)) == int(np.argmax(b))
    # the second max-context item prefilled only what follows the first one's prompt
    first, second = (
        bundled_lm.prompt_ids(message_for("cloze_token", item, block_passages), answer_cue=True)
        for item in items[:2]
    )
    shared = next(n for n, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert shared > 0.8 * len(second)  # the block is most of the prompt
    assert computed == len(second) - shared
