"""The model interface: what a language model provides to conditions and detectors.

Two runtime-checkable protocols, split by what a caller needs from the model:

* :class:`BlackBoxModel`: identity, prompt format, letter and continuation scoring,
  generation. Everything a condition (``safescale/agents/``), the answer readers and
  the black-box detectors call. A served model (:mod:`safescale.models.served`)
  implements this part only.
* :class:`WhiteBoxModel`: the black-box part plus the weights in this process: the
  prompt-pass family (one prefill shared by the answer and the detection inputs),
  teacher-forced internals (hidden states, logit lens, attention), hidden states of
  sampled answers, and the forward hooks the evidence-masking rereads use. The
  in-process :class:`~safescale.models.backend.LanguageModel` implements it.

The wrappers (:class:`~safescale.agents.lmcache.CachedLM`,
:class:`~safescale.models.microbatch.MicroBatchedLM`) define every method of both
protocols (delegating explicitly to the model they wrap), so whether a wrapped model
is white-box is a property of the model inside: every implementation has a
``whitebox`` flag and :func:`is_whitebox` combines it with the protocol check. Ask
:func:`is_whitebox` (never probe attributes) before a white-box call.

Shapes: ``n`` prompts (messages), ``k`` letters or continuations, ``V`` the
vocabulary, ``L`` transformer layers, ``D`` the hidden size, ``P`` prompt tokens,
``R`` response tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # the interface itself never imports torch
    import numpy as np
    import torch

    from safescale.models.backend import ContinuationScores, Generation, PromptPass
    from safescale.models.internals import Internals

__all__ = ["BlackBoxModel", "LensMode", "WhiteBoxModel", "is_whitebox", "protocol_members"]

#: How much of the logit lens :meth:`WhiteBoxModel.internals` keeps.
LensMode = Literal["full", "topk", "none", "kl", "off"]


@runtime_checkable
class BlackBoxModel(Protocol):
    """What every language model provides: identity, prompting, scoring, generation.

    A *message* is the text of one user turn (question, lettered options, any
    evidence); the model wraps it in its prompt format. The *answer cue*
    (``"Answer:"``) ends the assistant turn when a call asks for it: the option letter
    or the continuation follows it.
    """

    # ------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """Display / registry name (what records and reports call the model)."""

    @property
    def model_hash(self) -> str:
        """Digest of what the model is (weights, or a served model's identity): the
        LM cache and detection inputs are keyed by it."""

    @property
    def whitebox(self) -> bool:
        """Whether the weights are in this process (see :func:`is_whitebox`)."""

    @property
    def n_layers(self) -> int | None:
        """Transformer layers ``L`` (None when the model does not say: served)."""

    @property
    def n_parameters(self) -> int | None:
        """Parameters of the weights (None when unknown: served)."""

    @property
    def context_length(self) -> int:
        """Longest prompt + continuation in tokens."""

    @property
    def prompt_format_id(self) -> str:
        """Short hash of the prompt format (template, system prompt, cue): part of
        the LM cache keys."""

    @property
    def tokenizer(self) -> Any:
        """The (fast) tokenizer used to format and count prompts, or None for a
        served model without a local one (token counts are then estimated)."""

    @property
    def use_chat_template(self) -> bool:
        """Prompts are wrapped in the tokenizer's chat template (else the plain
        template ``"{message}\\n"``)."""

    @property
    def batch_size(self) -> int:
        """Prompts per forward (or request batch) the model runs at once."""

    @property
    def formulations(self) -> frozenset[str] | None:
        """The answer formulations the model can serve (a served model's probe
        decides), or None for all."""

    @property
    def CUED_SAMPLING_LAYOUT(self) -> int | str:
        """Version of how cued samples are produced: part of the LM cache keys of
        cued generations."""

    # ------------------------------------------------------------ prompting
    def prompt_text(self, message: str, *, answer_cue: bool = False) -> str:
        """The full prompt string for one user turn (with the cue when asked).

        Raises:
            PromptError: the message is empty.
        """

    def prompt_ids(self, message: str, *, answer_cue: bool = False) -> list[int]:
        """Token ids of :meth:`prompt_text` (``P`` ids, special tokens as the format
        requires)."""

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens (evidence budgets)."""

    def letter_token_ids(self, letters: Sequence[str]) -> list[int]:
        """The distinct single token id of each option letter as it follows the
        answer cue (usually ``" A"``)."""

    def continuation_ids(self, text: str) -> list[int]:
        """Token ids of a continuation after the answer cue (``" " + text`` on its
        own, never re-tokenized with the prompt)."""

    # ------------------------------------------------------------ scoring
    def score_options(self, messages: Sequence[str], letters: Sequence[str]) -> np.ndarray:
        """Scores of the option letters at the answer position of each cued prompt:
        ``float32 [n, k]`` (raw logits in process, log-probs from a server; both give
        the same softmax)."""

    def score_continuations(
        self,
        messages: Sequence[str],
        continuations: Sequence[Sequence[str]] | Sequence[str],
        *,
        answer_cue: bool = True,
    ) -> ContinuationScores:
        """``log p(continuation | prompt)`` of each continuation after each prompt
        (the cloze formulations, PMI's neutral prompt, the critic's judgements):
        ``logprob``, ``n_tokens``, ``n_chars`` each ``[n, k]``; ``continuations`` is
        one list per message or one list shared by all."""

    # ------------------------------------------------------------ generation
    def generate(
        self,
        messages: Sequence[str],
        *,
        max_new_tokens: int = 64,
        n: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
        answer_cue: bool = False,
    ) -> list[list[Generation]]:
        """``n`` continuations per message (temperature 0: greedy and ``n`` = 1),
        seeded per prompt from ``seed``; each :class:`Generation` carries its text,
        token ids and the raw-logit log-prob of each token."""


@runtime_checkable
class WhiteBoxModel(BlackBoxModel, Protocol):
    """A model whose weights are in this process: prompt passes, internals, hooks.

    A :class:`~safescale.models.backend.PromptPass` is a prompt held in the KV cache
    (every prompt token but the last) and extended token by token: the answer, the
    samples and the teacher-forced record of the response are read from one prefill.
    Each ``*_from`` method equals (to float tolerance) the separate-pass method it is
    named after.
    """

    # ------------------------------------------------------------ weights
    @property
    def model(self) -> torch.nn.Module:
        """The transformers causal-LM module (eval mode)."""

    @property
    def device(self) -> torch.device:
        """Where the weights are."""

    @property
    def pad_token_id(self) -> int:
        """The id used to pad batches (never attended to)."""

    # ------------------------------------------------------------ prompting
    def cue_ids(self, message: str) -> list[int] | None:
        """The answer cue's ids as they follow ``prompt_ids(message)``, or None when
        the cued prompt does not extend the plain one token for token."""

    # ------------------------------------------------------------ scoring
    def sequence_logprob(self, message: str, ids: Sequence[int], n_scored: int) -> float:
        """``sum log p(t | prompt, ids before t)`` over the last ``n_scored`` of
        ``ids`` after ``prompt_ids(message)`` (P(True))."""

    # ------------------------------------------------------------ internals
    def internals(
        self,
        message: str,
        response: str | Sequence[int],
        *,
        attentions: bool = False,
        lens: LensMode = "full",
        topk: int = 20,
        ffn: bool = False,
    ) -> Internals:
        """One teacher-forced pass over ``prompt + response``: logits ``[R, V]``,
        hidden states ``[L+1, R, D]``, logit-lens statistics per ``lens``, attention
        ``[L, H, R, P+R]`` with ``attentions``, ``ffn_js`` ``[L, R]`` and the prompt's
        final-layer states with ``ffn`` (see :class:`Internals`)."""

    # ------------------------------------------------------------ prompt passes
    def open_prompt(
        self, message: str, *, attentions: bool = False, ffn: bool = False
    ) -> PromptPass:
        """Prefill ``prompt_ids(message)`` but its last token into a KV cache."""

    def feed(self, state: PromptPass, ids: Sequence[int]) -> None:
        """Extend ``state`` by ``ids`` in place (one forward over the new tokens),
        keeping each fed position's logits ``[n, V]`` and hidden states."""

    def answer_logits(self, state: PromptPass) -> torch.Tensor | None:
        """``[V]`` logits after the answer cue of ``state`` (fed if needed), or None
        when the cue cannot extend this prompt."""

    def score_options_from(self, state: PromptPass, letters: Sequence[str]) -> np.ndarray | None:
        """:meth:`score_options` of ``state``'s message from its cache: ``[k]``, or
        None (see :meth:`answer_logits`)."""

    def score_continuations_from(
        self, state: PromptPass, texts: Sequence[str]
    ) -> ContinuationScores | None:
        """:meth:`score_continuations` of ``state``'s message (one row, ``[1, k]``)
        over a view of its cache after the cue; None when ``state`` is not there."""

    def internals_from(
        self,
        state: PromptPass,
        response: str | Sequence[int],
        *,
        lens: LensMode = "none",
        topk: int = 20,
    ) -> Internals:
        """:meth:`internals` of ``state``'s message and ``response``, feeding only the
        response tokens ``state`` has not seen."""

    def sequence_logprob_from(self, state: PromptPass, ids: Sequence[int], n_scored: int) -> float:
        """:meth:`sequence_logprob` of ``state``'s message, extending ``state``."""

    def last_hidden_from(
        self, state: PromptPass, sequences: Sequence[Sequence[int]], layer: int
    ) -> np.ndarray:
        """``[K, D]`` layer-``layer`` hidden state at the last token of each
        ``prompt + sequence`` (EigenScore's sample embeddings), over ``state``'s
        prompt cache."""

    def generate_from(
        self,
        state: PromptPass,
        *,
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        """``generate([state.message], answer_cue=True, ...)[0]`` decoded from
        ``state``'s prompt cache (the same tokens for a seed)."""

    # ------------------------------------------------------------ forward hooks
    def prefill(
        self, ids: Sequence[int], *, logits: bool = True, **forward_kwargs: Any
    ) -> tuple[torch.Tensor | None, Any]:
        """The KV cache over ``ids`` (one row) and, with ``logits``, the last
        position's ``[V]`` logits (over the longest prefix the prefix cache holds);
        ``forward_kwargs`` go to the forward (the masking span block)."""

    def continuations_over_cache(
        self,
        last_logits: torch.Tensor,
        cache: Any,
        prompt_length: int,
        conts: list[list[int]],
        **forward_kwargs: Any,
    ) -> list[float]:
        """``log p`` of each continuation (token ids) given the prompt's last
        ``[V]`` logits and its KV cache (consumed)."""

    def check_continuation_room(self, prompt_length: int, conts: list[list[int]]) -> None:
        """Raise :class:`PromptError` when the prompt and its longest continuation
        exceed :attr:`context_length`."""


def is_whitebox(lm: object) -> bool:
    """Whether ``lm`` (a model or a wrapper) offers the white-box surface: it
    implements :class:`WhiteBoxModel` and the model it is (or wraps) has its weights
    in this process."""
    return isinstance(lm, WhiteBoxModel) and bool(lm.whitebox)


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The names a model protocol asks for (its own and its bases'), sorted: what an
    implementation must define (tests check every implementation against them)."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (BlackBoxModel, WhiteBoxModel):
            names.update(n for n in vars(cls) if not n.startswith("_"))
            names.update(getattr(cls, "__annotations__", {}))
    return tuple(sorted(names))
