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
"""

from __future__ import annotations

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
    "MaskMode",
    "MaskingResult",
    "SpanBlock",
    "find_token_span",
    "mask_evidence_span",
]

MaskMode = Literal["answer", "all_later"]
ATTENTION_NAME = "safescale_span_mask"
_KWARG = "safescale_span_block"


@dataclass(frozen=True)
class SpanBlock:
    """Which attention entries to block.

    Attributes:
        queries: query positions blocked from the span.
        key_start, key_end: the span ``[key_start, key_end)`` of key positions.
        heads: query heads to block (None: all).
        layers: layer indices to block in (None: all).
    """

    queries: tuple[int, ...]
    key_start: int
    key_end: int
    heads: tuple[int, ...] | None = None
    layers: tuple[int, ...] | None = None


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
    if block is not None and block.queries and (block.layers is None or layer in block.layers):
        batch, n_heads, q_len, _ = query.shape
        k_len = key.shape[2]
        blocked = torch.zeros((1, n_heads, q_len, k_len), dtype=torch.bool, device=query.device)
        heads = list(range(n_heads)) if block.heads is None else list(block.heads)
        rows = torch.tensor([q for q in block.queries if q < q_len], dtype=torch.long)
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
    prompt = lm.prompt_text(message, answer_cue=answer_cue)
    start_char = prompt.find(text) if text else -1
    if start_char < 0:
        return None
    end_char = start_char + len(text)
    enc = lm.tokenizer(
        prompt, add_special_tokens=not lm.use_chat_template, return_offsets_mapping=True
    )
    if list(enc["input_ids"]) != lm.prompt_ids(message, answer_cue=answer_cue):
        raise RuntimeError("the tokenizer's offsets do not match the prompt token ids")
    hits = [
        i
        for i, (a, b) in enumerate(enc["offset_mapping"])
        if b > a and b > start_char and a < end_char
    ]
    return (hits[0], hits[-1] + 1) if hits else None


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
