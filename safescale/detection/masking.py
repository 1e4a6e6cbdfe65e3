"""Evidence-anchored attention masking: the causal influence of one evidence span.

The prompt (with the answer cue) is run once normally and once with attention from
chosen *query* positions to the chosen *key* span blocked in every layer (or chosen
layers / query heads); the change of the option distribution at the answer position
measures how much the answer depended on that span.

Modes (``P`` = prompt length with the answer cue, span = token positions ``[s, e)``):

* ``"answer"`` — only the answer position (query ``P − 1``) is blocked from the span.
  This removes the *direct* path; later tokens that already read the span still carry
  its information.
* ``"all_later"`` — every query at or after the end of the span (``q ≥ e``) is blocked
  from it. With the original ``position_ids`` kept, this equals deleting the span from
  the prompt (nothing downstream can read it), without the RoPE shift that deleting
  the tokens would cause.

Implementation: an attention function registered with transformers'
``AttentionInterface`` wraps the model's own ``eager_attention_forward`` and sets the
blocked (head, query, key) entries of the additive float mask to the dtype minimum; the
same name is registered with ``AttentionMaskInterface`` (as the eager mask) so that the
causal mask is still built. The block specification reaches the attention function as
an extra keyword argument of the forward call. Both the baseline and the masked pass run
through this function, so an empty block gives bit-identical results.

Reported: ``KL(p_before || p_after)`` over the option letters (softmax of the letter
logits), and whether the arg-max option flips.

:func:`masked_rereads` re-reads an answer the way its formulation read it (letter
logits, PriDe-debiased letters, or cloze continuation scores) once unmasked and once per
span. The prompt is prefilled once (through the same attention function, block empty);
each masked pass reuses that KV cache cropped to the span start (queries before the
span are never blocked, so their keys and values are unchanged) and recomputes the rest
of the prompt with the block (with a prefix cache on the model, the unmasked prefill
reads its longest cached prefix, and an empty block then reproduces the unmasked read
to float tolerance instead of bit for bit); cloze continuations then run as one right-padded batch
over that cache with every continuation query blocked from the span as well (they all
lie after it).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from safescale.models.backend import LanguageModel

__all__ = [
    "MASKABLE_FORMULATIONS",
    "MaskMode",
    "MaskedRereads",
    "MaskingResult",
    "SpanBlock",
    "find_token_span",
    "find_token_spans",
    "formulation_scores",
    "mask_evidence_span",
    "masked_rereads",
]

MaskMode = Literal["answer", "all_later"]
ATTENTION_NAME = "safescale_span_mask"
_KWARG = "safescale_span_block"


@dataclass(frozen=True)
class SpanBlock:
    """Which attention entries to block.

    Positions are absolute (in the prompt, continuation tokens after it); a forward pass
    over a KV cache maps them to its own rows.

    Attributes:
        queries: query positions blocked from the span.
        key_start, key_end: the span ``[key_start, key_end)`` of key positions.
        heads: query heads to block (None: all).
        layers: layer indices to block in (None: all).
        queries_from: also block every query at or after this position (None: none).
    """

    queries: tuple[int, ...]
    key_start: int
    key_end: int
    heads: tuple[int, ...] | None = None
    layers: tuple[int, ...] | None = None
    queries_from: int | None = None

    def rows(self, offset: int, q_len: int) -> list[int]:
        """The blocked rows of a pass whose first query is at position ``offset``."""
        absolute = set(self.queries)
        if self.queries_from is not None:
            absolute.update(range(max(self.queries_from, offset), offset + q_len))
        return sorted(q - offset for q in absolute if offset <= q < offset + q_len)


def _span_masked_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    block: SpanBlock | None = kwargs.pop(_KWARG, None)
    eager = sys.modules[type(module).__module__].eager_attention_forward
    layer = getattr(module, "layer_idx", None)
    active = block is not None and (block.queries or block.queries_from is not None)
    if active and (block.layers is None or layer in block.layers):
        batch, n_heads, q_len, _ = query.shape
        k_len = key.shape[2]
        blocked = torch.zeros((1, n_heads, q_len, k_len), dtype=torch.bool, device=query.device)
        heads = list(range(n_heads)) if block.heads is None else list(block.heads)
        # over a KV cache the pass's queries are the last q_len positions of the keys
        rows = torch.tensor(block.rows(k_len - q_len, q_len), dtype=torch.long)
        if rows.numel():
            for h in heads:
                blocked[0, h, rows, block.key_start : min(block.key_end, k_len)] = True
        if attention_mask is None:
            attention_mask = torch.zeros((batch, 1, q_len, k_len), dtype=query.dtype)
        attention_mask = torch.where(
            blocked, torch.finfo(query.dtype).min, attention_mask.to(query.dtype)
        )
    return eager(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, _span_masked_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


@contextmanager
def _span_attention(model: torch.nn.Module) -> Iterator[None]:
    _register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def find_token_span(
    lm: LanguageModel, message: str, text: str, *, answer_cue: bool = True
) -> tuple[int, int] | None:
    """Token positions ``[start, end)`` of the first occurrence of ``text`` in the prompt.

    Every token whose character range overlaps the text is included. Returns None when
    the text does not occur in the prompt.
    """
    return find_token_spans(lm, message, [text], answer_cue=answer_cue)[0]


def find_token_spans(
    lm: LanguageModel, message: str, texts: Sequence[str], *, answer_cue: bool = True
) -> list[tuple[int, int] | None]:
    """:func:`find_token_span` of several texts (the prompt is tokenized once)."""
    prompt = lm.prompt_text(message, answer_cue=answer_cue)
    enc = lm.tokenizer(
        prompt, add_special_tokens=not lm.use_chat_template, return_offsets_mapping=True
    )
    ids = list(enc["input_ids"])
    offsets = list(enc["offset_mapping"])
    expected = lm.prompt_ids(message, answer_cue=answer_cue)
    if ids != expected:
        if len(expected) == len(ids) + 1 and expected[1:] == ids:
            offsets = [(0, 0), *offsets]  # the BOS that prompt_ids inserts
        else:
            raise RuntimeError("the tokenizer's offsets do not match the prompt token ids")
    spans: list[tuple[int, int] | None] = []
    for text in texts:
        start_char = prompt.find(text) if text else -1
        if start_char < 0:
            spans.append(None)
            continue
        end_char = start_char + len(text)
        hits = [i for i, (a, b) in enumerate(offsets) if b > a and b > start_char and a < end_char]
        spans.append((hits[0], hits[-1] + 1) if hits else None)
    return spans


@dataclass(frozen=True)
class MaskingResult:
    """Option distribution before and after blocking attention to a span."""

    letters: tuple[str, ...]
    span: tuple[int, int] | None
    mode: str
    probs_before: np.ndarray
    probs_after: np.ndarray
    kl: float
    chosen_before: str
    chosen_after: str

    @property
    def flipped(self) -> bool:
        """Whether the most probable option changed."""
        return self.chosen_before != self.chosen_after


@torch.inference_mode()
def _letter_probs(
    lm: LanguageModel, ids: list[int], letters: Sequence[str], block: SpanBlock | None
):
    letter_ids = lm.letter_token_ids(letters)
    input_ids = torch.tensor([ids], device=lm.device)
    logits = lm.model(input_ids=input_ids, use_cache=False, **{_KWARG: block}).logits[0, -1]
    z = logits[letter_ids].double()
    return torch.softmax(z, dim=-1).cpu().numpy()


def mask_evidence_span(
    lm: LanguageModel,
    message: str,
    letters: Sequence[str],
    span: str | tuple[int, int] | None,
    *,
    mode: MaskMode = "answer",
    heads: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
) -> MaskingResult:
    """Block attention to an evidence span and measure the option-distribution shift.

    Args:
        lm: the model.
        message: the user turn (the prompt is built with the answer cue, as when the
            answer was scored).
        letters: option letters.
        span: the evidence text (located with :func:`find_token_span`), or token
            positions ``[start, end)`` in the prompt; a text not in the prompt (or None)
            blocks nothing and the result shows no change.
        mode: ``"answer"`` or ``"all_later"`` (see the module docstring).
        heads, layers: restrict the block to these query heads / layers.
    """
    if mode not in ("answer", "all_later"):
        raise ValueError(f"mode must be 'answer' or 'all_later', got {mode!r}")
    ids = lm.prompt_ids(message, answer_cue=True)
    P = len(ids)
    token_span = find_token_span(lm, message, span) if isinstance(span, str) else span
    block = None
    if token_span is not None:
        start, end = token_span
        if not 0 <= start < end:
            raise ValueError(f"bad token span {token_span}")
        queries = (P - 1,) if mode == "answer" else tuple(range(end, P))
        block = SpanBlock(
            queries=tuple(q for q in queries if q >= end),
            key_start=start,
            key_end=min(end, P),
            heads=None if heads is None else tuple(heads),
            layers=None if layers is None else tuple(layers),
        )
    with _span_attention(lm.model):
        before = _letter_probs(lm, ids, letters, None)
        after = _letter_probs(lm, ids, letters, block)
    kl = float(np.sum(before * (np.log(before + 1e-300) - np.log(after + 1e-300))))
    return MaskingResult(
        letters=tuple(letters),
        span=token_span,
        mode=mode,
        probs_before=before,
        probs_after=after,
        kl=max(kl, 0.0),
        chosen_before=letters[int(np.argmax(before))],
        chosen_after=letters[int(np.argmax(after))],
    )


# ------------------------------------------------------- re-reading under a formulation
#: Formulations :func:`masked_rereads` can re-read (``letter_cyclic`` reads ``n``
#: re-ordered prompts per answer and is not re-read under masking).
MASKABLE_FORMULATIONS = (
    "letter",
    "letter_pride",
    "cloze_none",
    "cloze_token",
    "cloze_char",
    "cloze_pmi",
)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def formulation_scores(
    formulation: str,
    raw: np.ndarray,
    *,
    n_tokens: Sequence[int] | None = None,
    n_chars: Sequence[int] | None = None,
    neutral_logprob: Sequence[float] | None = None,
    position_prior: Sequence[float] | None = None,
) -> np.ndarray:
    """A formulation's log-space option scores from the raw reads, as
    :func:`safescale.agents.answering.read_options` computes them (letter logits for
    ``letter*``, summed continuation log-probabilities for ``cloze_*``)."""
    raw = np.asarray(raw, dtype=np.float64)
    if formulation == "letter":
        return raw
    if formulation == "letter_pride":
        if position_prior is None:
            raise ValueError("letter_pride needs the position prior")
        return _log_softmax(_log_softmax(raw) - np.log(np.asarray(position_prior, np.float64)))
    if formulation == "cloze_none":
        return raw
    if formulation == "cloze_token":
        return raw / np.asarray(n_tokens, dtype=np.float64)
    if formulation == "cloze_char":
        return raw / np.asarray(n_chars, dtype=np.float64)
    if formulation == "cloze_pmi":
        if neutral_logprob is None:
            raise ValueError("cloze_pmi needs the neutral-prompt log-probabilities")
        return raw - np.asarray(neutral_logprob, dtype=np.float64)
    raise ValueError(
        f"formulation {formulation!r} cannot be re-read under masking; "
        f"supported: {MASKABLE_FORMULATIONS}"
    )


@dataclass(frozen=True)
class MaskedRereads:
    """An answer re-read unmasked and with each span masked.

    Attributes:
        formulation: the formulation re-read.
        spans: the token spans masked (None: not found, nothing masked).
        mode: the masking mode.
        baseline: the unmasked formulation scores (same route as the masked ones).
        masked: the formulation scores with each span masked (None for a None span).
    """

    formulation: str
    spans: tuple[tuple[int, int] | None, ...]
    mode: str
    baseline: np.ndarray
    masked: tuple[np.ndarray | None, ...]


def _cloze_over_cache(
    lm: LanguageModel,
    last_logits: torch.Tensor,
    cache: Any,
    prompt_length: int,
    conts: list[list[int]],
    block: SpanBlock | None,
) -> np.ndarray:
    """Summed continuation log-probs over a prompt's cache (consumed), every
    continuation query under ``block`` (the model's own continuation scoring)."""
    totals = lm.continuations_over_cache(
        last_logits, cache, prompt_length, conts, **{_KWARG: block}
    )
    return np.asarray(totals, dtype=np.float64)


@torch.inference_mode()
def masked_rereads(
    lm: LanguageModel,
    message: str,
    formulation: str,
    letters: Sequence[str],
    spans: Sequence[tuple[int, int] | None],
    *,
    option_texts: Sequence[str] | None = None,
    mode: MaskMode = "all_later",
    neutral_logprob: Sequence[float] | None = None,
    position_prior: Sequence[float] | None = None,
    layers: Sequence[int] | None = None,
) -> MaskedRereads:
    """Re-read an answer under its formulation, unmasked and with each span masked.

    Args:
        lm: the model.
        message: the user turn the answer was read from (with the answer cue appended,
            as when it was scored).
        formulation: one of :data:`MASKABLE_FORMULATIONS`.
        letters: option letters in the item's order.
        spans: token spans ``[start, end)`` of the prompt to mask, one pass each.
        option_texts: the option texts (cloze formulations), in ``letters`` order.
        mode: ``"all_later"`` (every query at or after the span end, continuation
            tokens included) or ``"answer"`` (the answer position and, for cloze, the
            continuation tokens).
        neutral_logprob: ``cloze_pmi``: the options' log-probabilities after the neutral
            prompt (it holds no evidence, so masking leaves it unchanged).
        position_prior: ``letter_pride``: the prior over option positions.
        layers: block only in these layers (None: all; empty: an empty block).
    """
    if mode not in ("answer", "all_later"):
        raise ValueError(f"mode must be 'answer' or 'all_later', got {mode!r}")
    if formulation not in MASKABLE_FORMULATIONS:
        raise ValueError(
            f"formulation {formulation!r} cannot be re-read under masking; "
            f"supported: {MASKABLE_FORMULATIONS}"
        )
    cloze = formulation.startswith("cloze_")
    ids = lm.prompt_ids(message, answer_cue=True)
    P = len(ids)
    conts: list[list[int]] = []
    if cloze:
        if option_texts is None or len(option_texts) != len(letters):
            raise ValueError("cloze formulations need one option text per letter")
        conts = [lm.continuation_ids(t) for t in option_texts]
        lm.check_continuation_room(P, conts)
    letter_ids = None if cloze else torch.tensor(lm.letter_token_ids(letters))

    def read(last_logits: torch.Tensor, cache: Any, block: SpanBlock | None) -> np.ndarray:
        if cloze:
            raw = _cloze_over_cache(lm, last_logits, cache, P, conts, block)
        else:
            raw = last_logits[letter_ids.to(last_logits.device)].double().cpu().numpy()
        return formulation_scores(
            formulation,
            raw,
            n_tokens=[len(c) for c in conts],
            n_chars=[len(t.strip()) for t in option_texts or []],
            neutral_logprob=neutral_logprob,
            position_prior=position_prior,
        )

    device = lm.device
    with _span_attention(lm.model):
        # the unmasked prefill (over the model's prefix cache when it has one)
        last_logits, prompt_cache = lm.prefill(ids, **{_KWARG: None})
        baseline = read(last_logits, copy.deepcopy(prompt_cache), None)
        masked: list[np.ndarray | None] = []
        for span in spans:
            if span is None:
                masked.append(None)
                continue
            start, end = span
            if not 0 <= start < end <= P:
                raise ValueError(f"bad token span {span} for a prompt of {P} tokens")
            block = SpanBlock(
                queries=(),
                key_start=start,
                key_end=end,
                queries_from=end if mode == "all_later" else max(P - 1, end),
                layers=None if layers is None else tuple(layers),
            )
            cache = copy.deepcopy(prompt_cache)
            cache.crop(start - P)  # keep the first `start` positions
            out = lm.model(
                input_ids=torch.tensor([ids[start:]], device=device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                **{_KWARG: block},
            )
            masked.append(read(out.logits[0, -1], out.cache, block))
    return MaskedRereads(
        formulation=formulation,
        spans=tuple(spans),
        mode=mode,
        baseline=baseline,
        masked=tuple(masked),
    )
