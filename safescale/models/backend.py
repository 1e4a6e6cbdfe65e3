"""The language-model backend: the one way the rest of safescale talks to an LM.

:class:`LanguageModel` is the in-process implementation of
:class:`~safescale.models.interface.WhiteBoxModel`, composed of one mixin per part of
the interface:

* :mod:`safescale.models.prompting`: the prompt format (chat template or plain
  template, the ``"Answer:"`` cue), prompt ids, letter and continuation ids;
* :mod:`safescale.models.scoring`: letter, continuation and sequence scoring;
* :mod:`safescale.models.generation`: greedy and sampled generation;
* :mod:`safescale.models.lens`: teacher-forced internals and the logit lens;
* :mod:`safescale.models.passes`: prompt passes and the ``*_from`` family;
* :mod:`safescale.models.layers`: the layer stack the passes and the lens hook into.

This module holds the core they share (the weights, the tokenizer, the prefix cache
and its prefill hook, the model's dimensions) and re-exports the public names of the
parts, so ``safescale.models.backend`` keeps its names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from safescale.models.generation import Generation, GenerationMixin
from safescale.models.interface import LensMode
from safescale.models.layers import LayersMixin
from safescale.models.lens import LensMixin
from safescale.models.passes import PromptPass, PromptPassMixin
from safescale.models.prefix_cache import PrefixCache
from safescale.models.prompting import ANSWER_CUE, NEUTRAL_MESSAGE, PromptError, PromptingMixin
from safescale.models.scoring import ContinuationScores, ScoringMixin, continuation_arrays

__all__ = [
    "ANSWER_CUE",
    "NEUTRAL_MESSAGE",
    "ContinuationScores",
    "Generation",
    "LanguageModel",
    "LensMode",
    "PromptError",
    "PromptPass",
    "continuation_arrays",
]


class LanguageModel(
    PromptingMixin, ScoringMixin, GenerationMixin, LensMixin, PromptPassMixin, LayersMixin
):
    """A causal LM with its tokenizer and prompt format.

    Build it with :func:`safescale.models.load_model` (or
    :func:`safescale.models.tiny.build_tiny_model` in tests).

    Args:
        model: a transformers causal-LM module (eval mode is set here).
        tokenizer: its fast tokenizer.
        name: display / registry name.
        model_hash: content hash of the weights (cache keys depend on it).
        use_chat_template: wrap prompts in the chat template (needs one on the
            tokenizer); False selects the plain template.
        system_prompt: optional system turn for chat templates (None keeps the
            template's own default).
        batch_size: maximum prompts per forward pass in :meth:`score_options`.
        prefix_cache_mb: bound of the cross-call prefix cache in MiB
            (:mod:`safescale.models.prefix_cache`); ``0`` (the default here) prefills
            every prompt from scratch. See :meth:`set_prefix_cache`.
    """

    #: The weights are in this process: the white-box surface is available.
    whitebox = True
    #: Every answer formulation can be read from this model.
    formulations: frozenset[str] | None = None

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        name: str,
        model_hash: str,
        use_chat_template: bool | None = None,
        system_prompt: str | None = None,
        batch_size: int = 8,
        prefix_cache_mb: float = 0,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.model_hash = model_hash
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        if self.use_chat_template and not has_template:
            raise ValueError(f"model {name!r}: chat template requested but the tokenizer has none")
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        if self.pad_token_id is None:
            self.pad_token_id = 0
        self.prefix_cache: PrefixCache | None = PrefixCache.from_megabytes(prefix_cache_mb)

    # ------------------------------------------------------------------ prefix cache
    def set_prefix_cache(self, megabytes: float) -> None:
        """Bound the cross-call prefix cache at ``megabytes`` MiB (a new, empty cache),
        or turn it off with ``0``. With a cache, every prompt prefill (letters, cloze
        continuations and their neutral prompt, :meth:`open_prompt`, generation,
        :meth:`internals`, :meth:`sequence_logprob`) reads the longest stored prefix of
        its token ids and computes only the rest (:meth:`prefill`)."""
        self.prefix_cache = PrefixCache.from_megabytes(megabytes)

    def prefix_cache_active(self) -> bool:
        """A prefix cache is set and the model's KV cache can be cut (no sliding-window
        layers seen so far)."""
        return self.prefix_cache is not None and self.prefix_cache.supported

    @torch.inference_mode()
    def prefill(
        self, ids: Sequence[int], *, logits: bool = True, **forward_kwargs: Any
    ) -> tuple[torch.Tensor | None, Any]:
        """The KV cache over ``ids`` (one row) and, with ``logits``, the last position's
        ``[V]`` logits: the one prefill hook of the prefix cache.

        Without an active prefix cache this is one forward over ``ids``. With one, the
        longest stored prefix of ``ids`` is read (at most ``len(ids) - 1`` tokens when
        the last position's logits are needed), only the rest is run over it, and the
        new positions are stored. ``forward_kwargs`` go to that forward (e.g. the span
        block of :mod:`safescale.detection.masking`). The returned cache is the caller's
        to extend; the store is never changed by it.
        """
        ids = [int(t) for t in ids]
        store = self.prefix_cache if self.prefix_cache_active() else None
        reused, past = 0, None
        if store is not None:
            reused, past = store.lookup(ids, len(ids) - 1 if logits else len(ids))
            if reused == len(ids):
                return None, past
        out = self.model(
            input_ids=torch.tensor([ids[reused:]], device=self.device),
            cache=past,
            use_cache=True,
            logits_to_keep=1,
            **forward_kwargs,
        )
        if store is not None:
            store.note_computed(len(ids) - reused)
            store.insert(ids, out.cache)
            if not store.supported:
                store.note_cold()
        return (out.logits[0, -1] if logits else None), out.cache

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_layers(self) -> int:
        """Number of transformer layers ``L``."""
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def n_parameters(self) -> int:
        """Number of parameters of the weights (tied embeddings counted once; a GGUF
        file counts its dequantized weights)."""
        return int(sum(p.numel() for p in self.model.parameters()))

    @property
    def context_length(self) -> int:
        """Maximum sequence length the model was trained for (tokens)."""
        cfg = self.model.config.get_text_config()
        return int(getattr(cfg, "max_position_embeddings", 2048))

    def check_room(self, total: int) -> None:
        """Raise :class:`PromptError` when ``total`` tokens exceed the context."""
        if total > self.context_length:
            raise PromptError(
                f"prompt + response is {total} tokens; the context limit of "
                f"{self.name!r} is {self.context_length}"
            )
