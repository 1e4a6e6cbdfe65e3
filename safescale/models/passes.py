"""Prompt passes of the in-process backend: one prompt prefill shared by the answer,
the samples and the teacher-forced detection record (the ``*_from`` family)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from safescale.models.interface import LensMode
from safescale.models.internals import Internals
from safescale.models.scoring import ContinuationScores, target_logprob

__all__ = ["PromptPass", "PromptPassMixin", "cache_prefix"]


@dataclass
class PromptPass:
    """A prompt held in the model's KV cache and extended token by token.

    Made by :meth:`LanguageModel.open_prompt`: the cache holds every prompt token but the
    last; :meth:`LanguageModel.feed` runs new tokens (the first fed token is the prompt's
    last) and keeps, per fed position, its final logits, hidden states and (with
    ``attentions``) attention weights. Row ``i`` of those is the prediction position
    ``P - 1 + i``, as in :class:`~safescale.models.internals.Internals`.

    Attributes:
        message: the user turn.
        prompt: ``prompt_ids(message)`` (``P`` ids, no answer cue).
        cache: the KV cache over ``prompt[:-1] + fed`` (None before the first feed of a
            one-token prompt).
        attentions: feeds run with eager attention and keep the weights.
        ffn: feeds also keep each layer's residual stream before its feed-forward block
            (``mid``), and the prefill kept the final-layer states of the prompt
            (``context_hidden``); see :meth:`LanguageModel.open_prompt`.
        fed: the ids fed so far.
        logits / hidden / attention / mid: per feed, ``[n, V]``, ``[L+1, n, D]``,
            ``[L, H, n, keys]``, ``[L, n, D]``.
        context_hidden: ``[P - 1, D]`` final-layer (post-norm) states of the prefilled
            prompt positions when ``ffn``, else None.
    """

    message: str
    prompt: list[int]
    cache: object | None
    attentions: bool = False
    ffn: bool = False
    fed: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    hidden: list[torch.Tensor] = field(default_factory=list)
    attention: list[torch.Tensor] = field(default_factory=list)
    mid: list[torch.Tensor] = field(default_factory=list)
    context_hidden: torch.Tensor | None = None

    def row_logits(self) -> torch.Tensor:
        """``[len(fed), V]`` final logits of every fed position."""
        return torch.cat(self.logits, dim=0)

    def prompt_cache(self) -> object | None:
        """A view of the cache over the prefilled prompt only (``prompt[:-1]``), or None
        when the cache cannot be cut back (e.g. sliding-window layers); updating it
        never changes this pass."""
        return cache_prefix(self.cache, len(self.prompt) - 1)

    def fork(self) -> PromptPass:
        """An independent copy (the cache is copied; recorded rows are shared)."""
        return PromptPass(
            message=self.message,
            prompt=list(self.prompt),
            cache=copy.deepcopy(self.cache),
            attentions=self.attentions,
            ffn=self.ffn,
            fed=list(self.fed),
            logits=list(self.logits),
            hidden=list(self.hidden),
            attention=list(self.attention),
            mid=list(self.mid),
            context_hidden=self.context_hidden,
        )


class PromptPassMixin:
    """:meth:`open_prompt`, :meth:`feed` and the ``*_from`` readings of an open prompt
    (needs the :class:`~safescale.models.backend.LanguageModel` core, scoring,
    internals and the layer access)."""

    @torch.inference_mode()
    def open_prompt(
        self, message: str, *, attentions: bool = False, ffn: bool = False
    ) -> PromptPass:
        """Prefill ``prompt_ids(message)`` but its last token into a KV cache (over its
        longest cached prefix when the model has a prefix cache).

        The returned :class:`PromptPass` is then extended (:meth:`feed`) with the last
        prompt token and whatever follows (the answer cue, the response); every fed
        position keeps its logits and hidden states (and attention weights when
        ``attentions``), so the answer (:meth:`answer_logits`,
        :meth:`score_continuations_from`) and the teacher-forced record of the response
        (:meth:`internals_from`) come from one prompt prefill.

        With ``ffn`` the prefill also keeps the final-layer states of the prompt
        positions and every feed the residual stream before each layer's feed-forward
        block, so :meth:`internals_from` can return ``ffn_js`` and ``context_hidden``
        (what ReDeEP's scores read; raises when the model's layers have no recognizable
        feed-forward block, see :meth:`ffn_modules`).
        """
        prompt = self.prompt_ids(message)
        if ffn:
            self.ffn_modules()  # fail before any work on an unsupported layout
        cache, context = None, None
        if len(prompt) > 1:
            if ffn:
                # the prompt's final-layer states are needed, so the whole prompt runs
                # (a cached prefix holds no hidden states); the prefix cache still
                # learns it
                out = self.model(
                    input_ids=torch.tensor([prompt[:-1]], device=self.device),
                    use_cache=True,
                    logits_to_keep=1,
                    output_hidden_states=True,
                )
                cache = out.cache
                context = out.hidden_states[-1][0].float()
                if self.prefix_cache_active():
                    self.prefix_cache.insert(prompt[:-1], cache)
            else:
                cache = self.prefill(prompt[:-1], logits=False)[1]
        return PromptPass(
            message=message,
            prompt=prompt,
            cache=cache,
            attentions=attentions,
            ffn=ffn,
            context_hidden=context,
        )

    @torch.inference_mode()
    def feed(self, state: PromptPass, ids: Sequence[int]) -> None:
        """Extend ``state`` by ``ids`` (in place): one forward over the new tokens only."""
        ids = [int(t) for t in ids]
        if not ids:
            return
        if not state.fed and ids[0] != state.prompt[-1]:
            raise ValueError("the first fed token must be the prompt's last token")
        self.check_room(len(state.prompt) - 1 + len(state.fed) + len(ids))
        with (
            self.attention_mode("eager" if state.attentions else None),
            self.capture_ffn(state.ffn) as captured,
        ):
            out = self.model(
                input_ids=torch.tensor([ids], device=self.device),
                cache=state.cache,
                use_cache=True,
                output_hidden_states=True,
                output_attentions=state.attentions,
            )
        if state.ffn:
            state.mid.append(torch.stack(captured).float())
        state.cache = out.cache
        state.fed.extend(ids)
        state.logits.append(out.logits[0].float())
        state.hidden.append(torch.stack([h[0] for h in out.hidden_states]).float())
        if state.attentions:
            if not out.attentions or out.attentions[0] is None:
                raise RuntimeError(f"model {self.name!r} returned no attention weights")
            state.attention.append(torch.stack([a[0] for a in out.attentions]).float())

    @torch.inference_mode()
    def answer_logits(self, state: PromptPass) -> torch.Tensor | None:
        """``[V]`` logits at the answer position (after the answer cue) of ``state``,
        feeding the cue if needed; None when the cue cannot extend this prompt."""
        cue = self.cue_ids(state.message)
        if cue is None:
            return None
        head = [state.prompt[-1], *cue]
        if not state.fed:
            self.feed(state, head)
        if state.fed[: len(head)] != head:
            return None
        return state.row_logits()[len(cue)]

    @torch.inference_mode()
    def score_options_from(self, state: PromptPass, letters: Sequence[str]) -> np.ndarray | None:
        """:meth:`score_options` of ``state``'s message from its cache (``[n]``), or None
        (see :meth:`answer_logits`)."""
        logits = self.answer_logits(state)
        if logits is None:
            return None
        ids = torch.tensor(self.letter_token_ids(letters), device=logits.device)
        return logits[ids].float().cpu().numpy()

    @torch.inference_mode()
    def score_continuations_from(
        self, state: PromptPass, texts: Sequence[str]
    ) -> ContinuationScores | None:
        """:meth:`score_continuations` of ``state``'s message (one row) over a view of its
        cache after the answer cue (``state`` is not changed); None when ``state`` is not
        exactly there."""
        cue = self.cue_ids(state.message)
        logits = self.answer_logits(state)
        if logits is None or cue is None or len(state.fed) != len(cue) + 1:
            return None
        conts = [self.continuation_ids(t) for t in texts]
        self.check_continuation_room(len(state.prompt) + len(cue), conts)
        scores = self.continuations_over_cache(
            logits, _cache_view(state.cache), len(state.prompt) + len(cue), conts
        )
        return ContinuationScores(
            logprob=np.asarray([scores], dtype=np.float64),
            n_tokens=np.asarray([[len(c) for c in conts]], dtype=np.int64),
            n_chars=np.asarray([[len(t.strip()) for t in texts]], dtype=np.int64),
        )

    @torch.inference_mode()
    def internals_from(
        self,
        state: PromptPass,
        response: str | Sequence[int],
        *,
        lens: LensMode = "none",
        topk: int = 20,
    ) -> Internals:
        """:meth:`internals` of ``state``'s message and ``response`` from its cache.

        Feeds only the response tokens ``state`` has not seen (its attention weights
        are returned when it was opened with ``attentions``). When what ``state`` has
        fed is not the start of ``last prompt token + response``, falls back to the
        separate pass :meth:`internals`.
        """
        response_ids = self.response_token_ids(response)
        target = [state.prompt[-1], *response_ids[:-1]]
        done = len(state.fed)
        if done > len(target) or state.fed != target[:done]:
            return self.internals(
                state.message, response_ids, attentions=state.attentions, lens=lens, topk=topk
            )
        self.feed(state, target[done:])
        R, P = len(response_ids), len(state.prompt)
        logits = state.row_logits()[:R]
        hidden = torch.cat(state.hidden, dim=1)[:, :R]
        att = None
        if state.attentions:
            total = P + R
            rows = []
            for a in state.attention:  # [L, H, n, keys so far]
                rows.append(torch.nn.functional.pad(a, (0, total - a.shape[-1])))
            att = torch.cat(rows, dim=2)[:, :, :R]
        mid, context = None, None
        if state.ffn:
            mid = torch.cat(state.mid, dim=1)[:, :R]
            first = hidden[-1][:1]  # the last prompt token's final-layer state
            context = (
                first if state.context_hidden is None else torch.cat([state.context_hidden, first])
            )
        return self.build_internals(
            state.prompt, response_ids, logits, hidden, att, lens, topk, mid, context
        )

    @torch.inference_mode()
    def sequence_logprob_from(self, state: PromptPass, ids: Sequence[int], n_scored: int) -> float:
        """:meth:`sequence_logprob` of ``state``'s message, extending ``state`` (in
        place) by the ids it has not fed yet, e.g. a suffix after the response that
        :meth:`internals_from` has just fed; when what ``state`` has fed is not the start
        of ``last prompt token + ids``, the separate pass :meth:`sequence_logprob`."""
        ids = [int(t) for t in ids]
        if not 1 <= n_scored <= len(ids):
            raise ValueError(f"n_scored={n_scored} must be in [1, {len(ids)}]")
        target = [state.prompt[-1], *ids[:-1]]
        done = len(state.fed)
        if done > len(target) or state.fed != target[:done]:
            return self.sequence_logprob(state.message, ids, n_scored)
        self.feed(state, target[done:])
        rows = state.row_logits()[len(ids) - n_scored : len(ids)]
        return target_logprob(rows, ids[-n_scored:])

    @torch.inference_mode()
    def last_hidden_from(
        self, state: PromptPass, sequences: Sequence[Sequence[int]], layer: int
    ) -> np.ndarray:
        """``[K, D]`` layer-``layer`` hidden state at the last token of each of
        ``prompt + sequence`` (non-empty sequences), as one right-padded batch over the
        prompt part of ``state``'s cache (a view; ``state`` is not changed, whatever it
        has been fed). Caches that cannot be cut back (sliding windows) are copied, and
        then ``state`` must not have been fed yet."""
        cache = state.prompt_cache()
        if cache is None and state.fed:
            raise ValueError("last_hidden_from needs a prompt pass that has not been fed")
        if cache is None:
            cache = copy.deepcopy(state.cache)
        seqs = [[state.prompt[-1], *map(int, s)] for s in sequences if len(s)]
        if not seqs:
            return np.zeros((0, 0))
        past = len(state.prompt) - 1
        width = max(len(s) for s in seqs)
        self.check_room(past + width)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), past + width), dtype=torch.long)
        mask[:, :past] = 1
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, past : past + len(seq)] = 1
        if cache is not None and len(seqs) > 1:
            cache.batch_repeat_interleave(len(seqs))
        inputs = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "cache": cache,
            "use_cache": True,
        }
        hidden = self._hidden_state(inputs, layer)
        last = torch.tensor([len(s) - 1 for s in seqs], device=hidden.device)
        return hidden[torch.arange(len(seqs), device=hidden.device), last].float().cpu().numpy()

    def _hidden_state(self, inputs: dict[str, Any], layer: int) -> torch.Tensor:
        """``hidden_states[layer]`` of a forward of ``inputs``, running only the decoder
        layers below ``layer``: the output of decoder layer ``layer - 1`` is taken by a
        hook that stops the pass there (the layers above and the LM head would be
        wasted work). The same tensor as the full pass's ``hidden_states[layer]``; the
        full pass when the layer stack is not found or ``layer`` is the embedding or
        the final (normed) state."""
        layers = self.decoder_layers()
        if layers is None or not 1 <= layer < len(layers):
            out = self.model(**inputs, output_hidden_states=True, logits_to_keep=1)
            return out.hidden_states[layer]
        taken: list[torch.Tensor] = []

        def stop(_module, _args, output):
            taken.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        handle = layers[layer - 1].register_forward_hook(stop)
        try:
            self.model(**inputs, logits_to_keep=1)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not taken:  # pragma: no cover - the hooked layer always runs
            raise RuntimeError(f"decoder layer {layer - 1} did not run")
        return taken[0]


def cache_prefix(cache, length: int):
    """A cache holding the first ``length`` positions of ``cache`` (views of its
    tensors; later updates concatenate into new tensors, so ``cache`` is unchanged), or
    None when ``cache`` has layers that cannot be cut back (sliding windows, ...)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if cache is None or layers is None or cache.get_seq_length() < length:
        return None
    if any(type(layer) is not DynamicLayer for layer in layers):
        return None
    prefix = copy.copy(cache)
    prefix.layers = []
    for layer in layers:
        part = copy.copy(layer)
        if part.is_initialized:
            part.keys = layer.keys[..., :length, :]
            part.values = layer.values[..., :length, :]
        prefix.layers.append(part)
    return prefix


def _cache_view(cache):
    """A cache to extend without changing ``cache``: a view of all of it when its layers
    allow (:func:`cache_prefix`), else a copy."""
    if cache is None:
        return None
    view = cache_prefix(cache, cache.get_seq_length())
    return copy.deepcopy(cache) if view is None else view


class _StopForward(Exception):
    """Raised by a forward hook to end a pass once the wanted layer has run."""
