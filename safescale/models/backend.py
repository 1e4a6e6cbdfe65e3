"""The language-model backend: the one way the rest of safescale talks to an LM.

Prompt format
-------------
Every call takes *messages*: the text of one user turn (question, lettered options and
any evidence). The backend wraps it in the model's prompt format:

* models with a chat template (and registered as chat models): the template applied to
  ``[{"role": "system", ...}?, {"role": "user", "content": message}]`` with the
  generation prompt, i.e. the text up to the start of the assistant turn;
* base models (no chat template, e.g. Gemma-3-270M): the **plain template**
  ``"{message}\\n"`` tokenized with the tokenizer's special tokens and always starting
  with BOS, the assistant's text following directly.

When an *answer cue* is requested, ``"Answer:"`` is appended to the assistant turn: the
option letter is the next token, which is where :meth:`LanguageModel.score_options`
reads the letter logits.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from safescale.models.internals import Internals
from safescale.models.prefix_cache import PrefixCache

__all__ = [
    "ANSWER_CUE",
    "NEUTRAL_MESSAGE",
    "ContinuationScores",
    "Generation",
    "LanguageModel",
    "PromptError",
    "PromptPass",
]

ANSWER_CUE = "Answer:"
#: The user turn of the unconditional (PMI) prompt: no question, no evidence, the same
#: prompt format and answer cue, so ``log p(text | neutral)`` is the model's prior for an
#: answer text in this position.
NEUTRAL_MESSAGE = "Question:"
LensMode = Literal["full", "topk", "none", "kl", "off"]


class PromptError(ValueError):
    """An empty or unusable prompt or response."""


@dataclass(frozen=True)
class Generation:
    """One generated continuation.

    Attributes:
        text: decoded continuation (special tokens removed, stops at EOS).
        token_ids: the generated token ids (EOS excluded).
        token_logprobs: log p of each generated token under the *raw* logits (before
            temperature or any other processing).
    """

    text: str
    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]

    @property
    def logprob(self) -> float:
        """Sum of the token log-probabilities."""
        return float(sum(self.token_logprobs))


@dataclass(frozen=True)
class ContinuationScores:
    """Log-probabilities of continuations, one row per prompt.

    Attributes:
        logprob: ``float64 [n_prompts, n_continuations]``: ``sum_t log p(c_t | prompt,
            c_<t)`` under the raw logits.
        n_tokens: ``int [n_prompts, n_continuations]``: tokens of each continuation.
        n_chars: ``int [n_prompts, n_continuations]``: characters of each continuation.
    """

    logprob: np.ndarray
    n_tokens: np.ndarray
    n_chars: np.ndarray


def continuation_arrays(
    messages: Sequence[str], continuations: Sequence[Sequence[str]] | Sequence[str]
) -> tuple[list[list[str]], np.ndarray, np.ndarray, np.ndarray]:
    """The continuations per message (one list per message, or one list shared by all)
    and empty ``logprob`` / ``n_tokens`` / ``n_chars`` arrays to fill."""
    if continuations and isinstance(continuations[0], str):
        per_message = [list(continuations)] * len(messages)  # type: ignore[list-item]
    else:
        per_message = [list(c) for c in continuations]  # type: ignore[arg-type]
    if len(per_message) != len(messages):
        raise ValueError("give one list of continuations per message (or one shared list)")
    width = max((len(c) for c in per_message), default=0)
    return (
        per_message,
        np.full((len(messages), width), np.nan),
        np.zeros((len(messages), width), dtype=np.int64),
        np.zeros((len(messages), width), dtype=np.int64),
    )


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
        return _cache_prefix(self.cache, len(self.prompt) - 1)

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


class LanguageModel:
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
        self._letter_cache: dict[tuple[str, ...], list[int]] = {}
        self.prefix_cache: PrefixCache | None = PrefixCache.from_megabytes(prefix_cache_mb)

    # ------------------------------------------------------------------ prefix cache
    def set_prefix_cache(self, megabytes: float) -> None:
        """Bound the cross-call prefix cache at ``megabytes`` MiB (a new, empty cache),
        or turn it off with ``0``. With a cache, every prompt prefill (letters, cloze
        continuations and their neutral prompt, :meth:`open_prompt`, generation,
        :meth:`internals`, :meth:`sequence_logprob`) reads the longest stored prefix of
        its token ids and computes only the rest (:meth:`prefill`)."""
        self.prefix_cache = PrefixCache.from_megabytes(megabytes)

    def _prefix_cache_active(self) -> bool:
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
        store = self.prefix_cache if self._prefix_cache_active() else None
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

    @property
    def prompt_format_id(self) -> str:
        """A short hash of the prompt format (template + system prompt + cue)."""
        payload = "\x1f".join(
            [
                "chat" if self.use_chat_template else "plain",
                str(getattr(self.tokenizer, "chat_template", "")) if self.use_chat_template else "",
                self.system_prompt or "",
                ANSWER_CUE,
            ]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ prompts
    def prompt_text(self, message: str, *, answer_cue: bool = False) -> str:
        """The full prompt string for one user turn (see the module docstring)."""
        if not isinstance(message, str) or not message.strip():
            raise PromptError("the prompt message is empty")
        if self.use_chat_template:
            turns = []
            if self.system_prompt is not None:
                turns.append({"role": "system", "content": self.system_prompt})
            turns.append({"role": "user", "content": message})
            text = self.tokenizer.apply_chat_template(
                turns, tokenize=False, add_generation_prompt=True
            )
        else:
            text = f"{message}\n"
        return text + ANSWER_CUE if answer_cue else text

    def prompt_ids(self, message: str, *, answer_cue: bool = False) -> list[int]:
        """Token ids of :meth:`prompt_text` (special tokens as the format requires)."""
        text = self.prompt_text(message, answer_cue=answer_cue)
        ids = list(self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if not self.use_chat_template and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)  # base models expect BOS; some tokenizers do not add it
        return ids

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def letter_token_ids(self, letters: Sequence[str]) -> list[int]:
        """The token id of each option letter as it follows the answer cue.

        After ``"Answer:"`` a tokenizer normally emits the letter with a leading space
        (``" A"``). The id is found by tokenizing ``cue + " " + letter`` and taking the
        token that follows the cue's own tokens; if that is not a single token the
        bare letter is used. Letters must map to distinct single tokens.
        """
        key = tuple(letters)
        if key in self._letter_cache:
            return self._letter_cache[key]
        cue_ids = self.tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
        ids: list[int] = []
        for letter in letters:
            chosen = None
            for variant in (f" {letter}", letter):
                full = self.tokenizer(ANSWER_CUE + variant, add_special_tokens=False)["input_ids"]
                if full[: len(cue_ids)] == cue_ids and len(full) == len(cue_ids) + 1:
                    chosen = full[-1]
                    break
            if chosen is None:
                raise PromptError(
                    f"option letter {letter!r} is not a single token for model {self.name!r}"
                )
            ids.append(int(chosen))
        if len(set(ids)) != len(ids):
            raise PromptError(f"option letters {list(letters)} share a token id: {ids}")
        self._letter_cache[key] = ids
        return ids

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def score_options(self, messages: Sequence[str], letters: Sequence[str]) -> np.ndarray:
        """Raw logits of the option letters at the answer position.

        One forward pass per message (batched with left padding, ``batch_size`` at a
        time, sorted by length to limit padding); with a prefix cache, one message at a
        time over its longest cached prefix (:meth:`prefill`).

        Returns:
            ``float32`` array ``[len(messages), len(letters)]``.
        """
        if not messages:
            return np.zeros((0, len(letters)), dtype=np.float32)
        letter_ids = torch.tensor(self.letter_token_ids(letters))
        encoded = [self.prompt_ids(m, answer_cue=True) for m in messages]
        out = np.zeros((len(messages), len(letters)), dtype=np.float32)
        if self._prefix_cache_active():
            # one prompt at a time over its longest cached prefix (the n cyclic
            # orderings of an item share everything up to the option list)
            for i, ids in enumerate(encoded):
                last, _ = self.prefill(ids)
                out[i] = last[letter_ids.to(last.device)].float().cpu().numpy()
            return out
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            batch_idx = order[start : start + self.batch_size]
            input_ids, attention_mask, position_ids = self._left_pad(
                [encoded[i] for i in batch_idx]
            )
            logits = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=1,
            ).logits[:, -1, :]
            out[batch_idx] = logits[:, letter_ids.to(logits.device)].float().cpu().numpy()
        return out

    def continuation_ids(self, text: str) -> list[int]:
        """Token ids of a continuation as it follows the answer cue: ``" " + text``
        tokenized on its own (no special tokens), as lm-evaluation-harness does with its
        target delimiter; ids are concatenated to the prompt's, never re-tokenized
        together."""
        if not isinstance(text, str) or not text.strip():
            raise PromptError("a continuation is empty")
        return list(self.tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def score_continuations(
        self,
        messages: Sequence[str],
        continuations: Sequence[Sequence[str]] | Sequence[str],
        *,
        answer_cue: bool = True,
    ) -> ContinuationScores:
        """Log-probability of each continuation after each prompt (the cloze formulation).

        Each prompt is prefilled once; its continuations then run together as one
        right-padded batch over a copy of that KV cache (the continuation of a prompt
        never recomputes the prompt). Prompts that share a leading run of at least
        :attr:`MIN_SHARED_PREFIX` tokens (e.g. the critic's per-passage relevance
        prompts, which start with the question) prefill it once and extend a copy of
        its cache by their own suffix. With a prefix cache (:meth:`set_prefix_cache`)
        each prompt is prefilled over its longest cached prefix instead, which covers
        that sharing and prefixes of earlier calls. A one-token continuation costs no
        extra pass: its log-prob is read from the prefill's last position.

        Args:
            messages: user turns (see :meth:`prompt_text`).
            continuations: one list of texts per message, or one list shared by all.
            answer_cue: append the answer cue to the prompt (the continuation follows
                ``"Answer:"``).
        """
        per_message, logprob, n_tokens, n_chars = continuation_arrays(messages, continuations)
        prompts_ids = [self.prompt_ids(m, answer_cue=answer_cue) for m in messages]
        cached = self._prefix_cache_active()
        shared = None if cached else self._shared_prefix(prompts_ids)
        for row, (prompt, texts) in enumerate(zip(prompts_ids, per_message, strict=True)):
            conts = [self.continuation_ids(t) for t in texts]
            if cached:
                self.check_continuation_room(len(prompt), conts)
                last, cache = self.prefill(prompt)
                scores = self.continuations_over_cache(last, cache, len(prompt), conts)
            elif shared is None:
                scores = self._continuation_logprobs(prompt, conts)
            else:
                scores = self._continuation_logprobs_after(shared, prompt, conts)
            logprob[row, : len(texts)] = scores
            n_tokens[row, : len(texts)] = [len(c) for c in conts]
            n_chars[row, : len(texts)] = [len(t.strip()) for t in texts]
        return ContinuationScores(logprob=logprob, n_tokens=n_tokens, n_chars=n_chars)

    #: Shortest common prompt prefix (tokens) worth one shared prefill.
    MIN_SHARED_PREFIX = 8

    def _shared_prefix(self, prompts: list[list[int]]) -> tuple[list[int], object] | None:
        """The common leading ids of ``prompts`` (each keeps at least one own token)
        and their KV cache, or None when there is nothing worth sharing."""
        if len(prompts) < 2:
            return None
        n = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for p in prompts[1:]:
            k = 0
            while k < n and p[k] == first[k]:
                k += 1
            n = k
        if n < self.MIN_SHARED_PREFIX:
            return None
        cache = self.model(
            input_ids=torch.tensor([first[:n]], device=self.device),
            use_cache=True,
            logits_to_keep=1,
        ).cache
        return first[:n], cache

    def _continuation_logprobs_after(
        self, shared: tuple[list[int], object], prompt: list[int], conts: list[list[int]]
    ) -> list[float]:
        prefix, cache = shared
        self.check_continuation_room(len(prompt), conts)
        out = self.model(
            input_ids=torch.tensor([prompt[len(prefix) :]], device=self.device),
            cache=copy.deepcopy(cache),
            use_cache=True,
            logits_to_keep=1,
        )
        return self.continuations_over_cache(out.logits[0, -1], out.cache, len(prompt), conts)

    def _continuation_logprobs(self, prompt: list[int], conts: list[list[int]]) -> list[float]:
        self.check_continuation_room(len(prompt), conts)
        out = self.model(
            input_ids=torch.tensor([prompt], device=self.device), use_cache=True, logits_to_keep=1
        )
        return self.continuations_over_cache(out.logits[0, -1], out.cache, len(prompt), conts)

    def check_continuation_room(self, prompt_length: int, conts: list[list[int]]) -> None:
        if prompt_length + max(len(c) for c in conts) > self.context_length:
            raise PromptError(
                f"prompt + continuation exceeds the context limit of {self.name!r} "
                f"({self.context_length} tokens)"
            )

    def continuations_over_cache(
        self,
        last_logits: torch.Tensor,
        cache,
        prompt_length: int,
        conts: list[list[int]],
        **forward_kwargs: Any,
    ) -> list[float]:
        """Continuation log-probs given the prompt's last logits and its KV cache (the
        cache is consumed: it is expanded in place for the batch); ``forward_kwargs``
        go to the continuations' forward (e.g. an attention block of
        :mod:`safescale.detection.masking`)."""
        dev = self.device
        first = torch.log_softmax(last_logits.float(), dim=-1)
        totals = [float(first[c[0]]) for c in conts]
        longer = [i for i, c in enumerate(conts) if len(c) > 1]
        if not longer:
            return totals
        if len(longer) > 1:
            cache.batch_repeat_interleave(len(longer))
        # Right padding: real tokens never attend to the pads that follow them.
        feed = [conts[i][:-1] for i in longer]
        width = max(len(f) for f in feed)
        ids = torch.full((len(longer), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(longer), prompt_length + width), dtype=torch.long)
        mask[:, :prompt_length] = 1
        for r, f in enumerate(feed):
            ids[r, : len(f)] = torch.tensor(f)
            mask[r, prompt_length : prompt_length + len(f)] = 1
        logits = self.model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            cache=cache,
            use_cache=True,
            **forward_kwargs,
        ).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for r, i in enumerate(longer):
            targets = torch.tensor(conts[i][1:], device=logp.device)
            totals[i] += float(logp[r, : len(targets)].gather(-1, targets[:, None]).sum())
        return totals

    def _left_pad(
        self, sequences: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.device
        return ids.to(dev), mask.to(dev), positions.to(dev)

    # ------------------------------------------------------------------ generation
    #: Version of how :meth:`generate` lays out the passes of a cued prompt (the prompt
    #: prefilled without its last token, then prompt end + cue fed with the samples).
    #: Part of :class:`~safescale.agents.lmcache.CachedLM`'s keys for cued generations.
    CUED_SAMPLING_LAYOUT = 2

    @torch.inference_mode()
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
        """Generate ``n`` continuations per message.

        ``temperature == 0`` is greedy (then ``n`` must be 1); otherwise pure sampling
        at that temperature (no top-k/top-p). Each message is generated on its own with
        a seed derived from ``seed`` and the prompt, so results do not depend on how
        messages are batched or ordered and are reproducible for a seed.

        With ``answer_cue`` (when the cue extends the plain prompt token-for-token) the
        plain prompt but its last token is prefilled once, exactly as
        :meth:`open_prompt` does, and its last token + the cue are fed with the first
        decoding step of the ``n`` samples; :meth:`generate_from` decodes from an open
        prompt's cache the same way, so both give the same tokens for a seed.

        Returns:
            One list of ``n`` :class:`Generation` per message.
        """
        config, stop_ids = self._generation_config(max_new_tokens, n, temperature)
        results: list[list[Generation]] = []
        for message in messages:
            prompt = self.prompt_ids(message, answer_cue=answer_cue)
            plain = self.prompt_ids(message) if answer_cue else prompt
            cache = None
            if answer_cue and len(plain) > 1 and prompt[: len(plain)] == plain:
                cache = self.prefill(plain[:-1], logits=False)[1]
            elif (n > 1 or self._prefix_cache_active()) and len(prompt) > 1:
                # Prefill the prompt once and share its KV cache across the n samples
                # (num_return_sequences would prefill it n times); with a prefix
                # cache, over its longest cached prefix.
                cache = self.prefill(prompt[:-1], logits=False)[1]
            results.append(self._sample(prompt, cache, n, seed, config, stop_ids))
        return results

    @torch.inference_mode()
    def generate_from(
        self,
        state: PromptPass,
        *,
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        """``generate([state.message], answer_cue=True, ...)[0]`` decoded from ``state``'s
        prompt cache: no prompt prefill, the same tokens (and log-probs) for a seed.

        Only the prefilled prompt part of the cache is used (a view of it; ``state`` is
        not changed), whatever ``state`` has been fed since; when the cache cannot be
        cut back to it (e.g. sliding-window layers) this is :meth:`generate`.
        """
        config, stop_ids = self._generation_config(max_new_tokens, n, temperature)
        prompt = self.prompt_ids(state.message, answer_cue=True)
        plain = state.prompt
        cache = None
        if len(plain) > 1 and prompt[: len(plain)] == plain:
            cache = state.prompt_cache()
        if cache is None:
            return self.generate(
                [state.message],
                max_new_tokens=max_new_tokens,
                n=n,
                temperature=temperature,
                seed=seed,
                answer_cue=True,
            )[0]
        return self._sample(prompt, cache, n, seed, config, stop_ids)

    def _generation_config(self, max_new_tokens: int, n: int, temperature: float):
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if temperature == 0 and n != 1:
            raise ValueError("greedy decoding (temperature=0) gives one answer; use n=1")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        from transformers import GenerationConfig

        eos = self.tokenizer.eos_token_id
        stop_ids = {eos} if eos is not None else set()
        for extra in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
            tid = self.tokenizer.convert_tokens_to_ids(extra)
            if isinstance(tid, int) and tid >= 0 and tid != self.tokenizer.unk_token_id:
                stop_ids.add(tid)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=None,
            top_p=None,
            num_return_sequences=1,
            pad_token_id=self.pad_token_id,
            eos_token_id=sorted(stop_ids) or None,
            return_dict_in_generate=True,
            output_logits=True,
        )
        return config, stop_ids

    def _sample(
        self, prompt: list[int], cache, n: int, seed: int, config, stop_ids: set[int]
    ) -> list[Generation]:
        """``n`` continuations of ``prompt`` over ``cache`` (a prefix of the prompt's
        KV cache for one row, or None; consumed), seeded from ``seed`` and the prompt."""
        if cache is not None and n > 1:
            cache.batch_repeat_interleave(n)
        input_ids = torch.tensor([prompt], device=self.device).repeat(n, 1)
        with _seeded(_derive_seed(seed, prompt)):
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                cache=cache,
                generation_config=config,
            )
        new_tokens = out.sequences[:, len(prompt) :]
        raw = torch.stack(out.logits, dim=1).float()  # [n, T, V] unprocessed
        logprobs = torch.log_softmax(raw, dim=-1).gather(-1, new_tokens.unsqueeze(-1))
        gens = []
        for row in range(new_tokens.shape[0]):
            ids, lps = [], []
            for tok, lp in zip(new_tokens[row].tolist(), logprobs[row, :, 0].tolist(), strict=True):
                if tok in stop_ids:
                    break
                ids.append(tok)
                lps.append(lp)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            gens.append(Generation(text=text, token_ids=tuple(ids), token_logprobs=tuple(lps)))
        return gens

    # ------------------------------------------------------------------ internals
    @torch.inference_mode()
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
        """One teacher-forced pass over ``prompt_ids(message) + response ids``.

        The response ids are concatenated to the prompt ids (a string response is
        tokenized on its own, without special tokens; the concatenated text is never
        re-tokenized). See :class:`~safescale.models.internals.Internals` for shapes.
        :meth:`internals_from` gives the same record (to float tolerance) from a
        prompt already held in a KV cache.

        Args:
            message: the user turn (prompt without answer cue).
            response: the assistant's text, or its token ids.
            attentions: also return the prediction rows' attention weights (the
                prompt but its last token is prefilled with the model's attention, the
                rest runs eager: :meth:`open_prompt` + :meth:`internals_from`).
            lens: ``"full"`` keeps every layer's logit-lens log-probabilities
                ``[L+1, R, V]``; ``"topk"`` keeps only the top ``topk`` per layer and
                token; ``"none"`` keeps neither (KL-to-final and entropy per layer are
                still computed in these three modes); ``"kl"`` computes only the
                KL-to-final per layer (what ECRT's incoherence features read; the
                cheapest lens); ``"off"`` skips the logit lens entirely (a plain
                forward with hidden states).
            ffn: also return the feed-forward statistics ``ffn_js`` and the prompt's
                final-layer states ``context_hidden`` (see :meth:`open_prompt`).
        """
        response_ids = self._response_ids(response)
        if attentions or ffn:
            # Only the prediction rows' weights are kept: the prompt is prefilled with
            # the model's own attention and just those rows run eager (a whole eager
            # pass would compute and return [L, H, T, T] weights).
            state = self.open_prompt(message, attentions=attentions, ffn=ffn)
            return self.internals_from(state, response_ids, lens=lens, topk=topk)
        if self._prefix_cache_active():
            # the prompt over its longest cached prefix, then the response rows
            state = self.open_prompt(message)
            return self.internals_from(state, response_ids, lens=lens, topk=topk)
        prompt = self.prompt_ids(message)
        self._check_room(len(prompt) + len(response_ids))
        ids = torch.tensor([prompt + response_ids], device=self.device)
        P, R = len(prompt), len(response_ids)
        positions = torch.arange(P - 1, P + R - 1, device=self.device)
        out = self.model(
            input_ids=ids,
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=positions,  # only the prediction positions need the LM head
        )
        logits = out.logits[0].float()
        hidden = torch.stack([h[0, positions] for h in out.hidden_states]).float()
        return self._build_internals(prompt, response_ids, logits, hidden, None, lens, topk)

    def _response_ids(self, response: str | Sequence[int]) -> list[int]:
        if isinstance(response, str):
            if not response.strip():
                raise PromptError("the response is empty")
            response_ids = list(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        else:
            response_ids = [int(t) for t in response]
        if not response_ids:
            raise PromptError("the response has no tokens")
        return response_ids

    def _check_room(self, total: int) -> None:
        if total > self.context_length:
            raise PromptError(
                f"prompt + response is {total} tokens; the context limit of "
                f"{self.name!r} is {self.context_length}"
            )

    def _build_internals(
        self,
        prompt: list[int],
        response_ids: list[int],
        logits: torch.Tensor,
        hidden: torch.Tensor,
        att: torch.Tensor | None,
        lens: LensMode,
        topk: int,
        mid: torch.Tensor | None = None,
        context_hidden: torch.Tensor | None = None,
    ) -> Internals:
        """An :class:`Internals` from the prediction rows of a pass (logit lens here)."""
        stats = None if lens == "off" else self._lens_statistics(hidden, logits, lens, topk)
        ffn_js = None if mid is None else self._ffn_js(mid, hidden, logits)
        return Internals(
            input_ids=torch.tensor(prompt + response_ids),
            prompt_length=len(prompt),
            response_ids=torch.tensor(response_ids),
            logits=logits.cpu(),
            hidden_states=hidden.cpu(),
            logit_lens=None if stats is None else stats.get("full"),
            lens_topk_logprobs=None if stats is None else stats.get("topk_values"),
            lens_topk_ids=None if stats is None else stats.get("topk_ids"),
            lens_kl_to_final=None if stats is None else stats["kl"],
            lens_entropy=None if stats is None else stats.get("entropy"),
            attentions=None if att is None else att.cpu(),
            ffn_js=ffn_js,
            context_hidden=None if context_hidden is None else context_hidden.cpu(),
        )

    @torch.inference_mode()
    def _ffn_js(
        self, mid: torch.Tensor, hidden: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        """``[L, R]`` Jensen-Shannon divergence (nats) between the logit lens of each
        layer's residual stream before its feed-forward block (``mid[l]``) and after
        it (``hidden[l + 1]``; the last layer's "after" is the model's own logits): how
        much the feed-forward block moved the next-token distribution (the parametric
        knowledge score of ReDeEP, Sun et al. 2024)."""
        norm = self._final_norm()
        head = self.model.get_output_embeddings()
        cfg = self.model.config.get_text_config()
        softcap = getattr(cfg, "final_logit_softcapping", None)
        n_layers, R = mid.shape[0], mid.shape[1]
        V = logits.shape[-1]

        def lens_logp(h: torch.Tensor) -> torch.Tensor:
            z = head(norm(h.to(head.weight.dtype))).float()
            if softcap:
                z = torch.tanh(z / softcap) * softcap
            return torch.log_softmax(z, dim=-1)

        per_chunk = max(1, self.LENS_CHUNK_ELEMENTS // max(1, 2 * R * V))
        out = []
        for start in range(0, n_layers, per_chunk):
            stop = min(n_layers, start + per_chunk)
            before = lens_logp(mid[start:stop])
            after_rows = [
                torch.log_softmax(logits.float(), dim=-1)[None]
                if layer == n_layers - 1
                else lens_logp(hidden[layer + 1][None])
                for layer in range(start, stop)
            ]
            after = torch.cat(after_rows)
            m = torch.logsumexp(torch.stack([before, after]), dim=0) - np.log(2.0)
            js = 0.5 * ((before.exp() * (before - m)).sum(-1) + (after.exp() * (after - m)).sum(-1))
            out.append(js.clamp(min=0.0))
        return torch.cat(out).cpu()

    #: Elements of the ``[layers x tokens, V]`` lens logits computed at once (bounds
    #: the temporaries to a few hundred MB whatever the vocabulary and response length).
    LENS_CHUNK_ELEMENTS = 32 * 1024 * 1024

    def _lens_statistics(
        self, hidden: torch.Tensor, logits: torch.Tensor, lens: LensMode, topk: int
    ) -> dict[str, torch.Tensor]:
        """Per-layer logit-lens statistics of the prediction rows.

        The final norm and LM head are applied to the rows of every layer ``l < L`` as
        one batched matmul (in chunks of layers); KL to the final layer and entropy are
        read from the lens logits ``z`` without materializing more than two
        ``[rows, V]`` tensors: with ``lse = logsumexp(z)``,
        ``KL(final || lens_l) = sum_v p_final log p_final - (sum_v p_final z - lse)``
        and ``H(lens_l) = lse - sum_v softmax(z) z``.

        Returns:
            ``kl`` and (unless ``lens="kl"``) ``entropy`` ``[L+1, R]`` (row ``L`` = the
            final layer: KL 0),
            plus ``full`` ``[L+1, R, V]`` or ``topk_values`` / ``topk_ids``
            ``[L+1, R, k]`` as ``lens`` asks.
        """
        norm = self._final_norm()
        head = self.model.get_output_embeddings()
        cfg = self.model.config.get_text_config()
        softcap = getattr(cfg, "final_logit_softcapping", None)
        final = torch.log_softmax(logits.float(), dim=-1)  # [R, V]
        p_final = final.exp()
        neg_h_final = (p_final * final).sum(-1)  # sum p log p  [R]
        n_layers, R = hidden.shape[0] - 1, hidden.shape[1]
        V = final.shape[-1]
        per_chunk = max(1, self.LENS_CHUNK_ELEMENTS // max(1, R * V))
        kls, entropies, kept, top_v, top_i = [], [], [], [], []
        for start in range(0, n_layers, per_chunk):
            h = hidden[start : min(n_layers, start + per_chunk)]  # [c, R, D]
            z = head(norm(h.to(head.weight.dtype))).float()  # [c, R, V]
            if softcap:
                z = torch.tanh(z / softcap) * softcap
            lse = torch.logsumexp(z, dim=-1)  # [c, R]
            cross = torch.einsum("crv,rv->cr", z, p_final)
            kls.append((neg_h_final - (cross - lse)).clamp(min=0.0))
            if lens == "kl":
                continue
            if lens == "full":
                logp = z - lse[..., None]
                kept.append(logp)
                entropies.append(-(logp.exp() * logp).sum(-1))
                continue
            p = torch.softmax(z, dim=-1)
            entropies.append(lse - torch.einsum("crv,crv->cr", p, z))
            del p
            if lens == "topk":
                t = z.topk(min(topk, V), dim=-1)
                top_v.append(t.values - lse[..., None])
                top_i.append(t.indices)
        kls.append(torch.zeros(1, R, device=final.device))
        entropies.append(-neg_h_final[None])
        out = {"kl": torch.cat(kls).cpu()}
        if lens != "kl":
            out["entropy"] = torch.cat(entropies).cpu()
        if lens == "full":
            out["full"] = torch.cat([*kept, final[None]]).cpu()
        elif lens == "topk":
            t = final.topk(min(topk, V), dim=-1)
            out["topk_values"] = torch.cat([*top_v, t.values[None]]).cpu()
            out["topk_ids"] = torch.cat([*top_i, t.indices[None]]).cpu()
        return out

    # ------------------------------------------------------------------ shared passes
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
        feed-forward block, see :meth:`_ffn_modules`).
        """
        prompt = self.prompt_ids(message)
        if ffn:
            self._ffn_modules()  # fail before any work on an unsupported layout
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
                if self._prefix_cache_active():
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
        self._check_room(len(state.prompt) - 1 + len(state.fed) + len(ids))
        with (
            self._attention_mode("eager" if state.attentions else None),
            self._capture_ffn(state.ffn) as captured,
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

    def cue_ids(self, message: str) -> list[int] | None:
        """The answer cue's ids as they follow ``prompt_ids(message)``, or None when the
        cued prompt does not extend the plain one token-for-token."""
        plain = self.prompt_ids(message)
        cued = self.prompt_ids(message, answer_cue=True)
        if len(cued) <= len(plain) or cued[: len(plain)] != plain:
            return None
        return cued[len(plain) :]

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
        response_ids = self._response_ids(response)
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
        return self._build_internals(
            state.prompt, response_ids, logits, hidden, att, lens, topk, mid, context
        )

    @torch.inference_mode()
    def sequence_logprob(self, message: str, ids: Sequence[int], n_scored: int) -> float:
        """``sum log p(t | prompt, ids before t)`` over the last ``n_scored`` of ``ids``
        following ``prompt_ids(message)``: one forward pass (the LM head only on the
        scored rows). :meth:`sequence_logprob_from` gives it from an open prompt."""
        prompt = self.prompt_ids(message)
        ids = [int(t) for t in ids]
        if not 1 <= n_scored <= len(ids):
            raise ValueError(f"n_scored={n_scored} must be in [1, {len(ids)}]")
        self._check_room(len(prompt) + len(ids))
        if self._prefix_cache_active() and len(prompt) > 1:
            _, past = self.prefill(prompt[:-1], logits=False)
            logits = self.model(
                input_ids=torch.tensor([[prompt[-1], *ids]], device=self.device),
                cache=past,
                use_cache=True,
                logits_to_keep=n_scored + 1,
            ).logits[0, :n_scored]
            return _target_logprob(logits, ids[-n_scored:])
        logits = self.model(
            input_ids=torch.tensor([prompt + ids], device=self.device),
            use_cache=False,
            logits_to_keep=n_scored + 1,
        ).logits[0, :n_scored]
        return _target_logprob(logits, ids[-n_scored:])

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
        return _target_logprob(rows, ids[-n_scored:])

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
        self._check_room(past + width)
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
        layers = self._decoder_layers()
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

    def _decoder_layers(self) -> torch.nn.ModuleList | None:
        """The model's decoder layer stack (``model.layers`` of the usual layouts)."""
        base = getattr(self.model, "model", None)
        for owner in (base, getattr(base, "language_model", None)):
            layers = getattr(owner, "layers", None) if owner is not None else None
            if isinstance(layers, torch.nn.ModuleList) and len(layers) == self.n_layers:
                return layers
        return None

    def _ffn_modules(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """Per decoder layer, (the layer, the module whose output is the feed-forward
        block's addition to the residual stream): ``post_feedforward_layernorm`` where
        the layer has one (Gemma 2/3), else ``mlp`` (Llama, Mistral, Qwen, ...).

        Raises:
            RuntimeError: the layers have neither (ReDeEP's parametric knowledge score
                cannot be read from this model).
        """
        layers = self._decoder_layers()
        found = []
        for layer in layers if layers is not None else []:
            delta = getattr(layer, "post_feedforward_layernorm", None)
            if not isinstance(delta, torch.nn.Module):
                delta = getattr(layer, "mlp", None)
            if not isinstance(delta, torch.nn.Module):
                break
            found.append((layer, delta))
        if layers is None or len(found) != len(layers):
            raise RuntimeError(
                f"model {self.name!r}: cannot find each decoder layer's feed-forward block "
                "(no 'mlp' / 'post_feedforward_layernorm' module)"
            )
        return found

    @contextmanager
    def _capture_ffn(self, enabled: bool):
        """While active, collects per decoder layer ``[n, D]`` residual stream before
        its feed-forward block (layer output minus the block's addition) of the fed
        positions (batch row 0), in layer order."""
        if not enabled:
            yield None
            return
        outputs: dict[int, torch.Tensor] = {}
        deltas: dict[int, torch.Tensor] = {}
        handles = []

        def keep(store: dict[int, torch.Tensor], index: int):
            def hook(_module, _args, output):
                tensor = output[0] if isinstance(output, tuple) else output
                store[index] = tensor[0].detach()

            return hook

        for index, (layer, delta) in enumerate(self._ffn_modules()):
            handles.append(layer.register_forward_hook(keep(outputs, index)))
            handles.append(delta.register_forward_hook(keep(deltas, index)))
        captured: list[torch.Tensor] = []
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()
        captured.extend(
            (outputs[i] - deltas[i]).float() for i in range(len(outputs)) if i in deltas
        )

    def _final_norm(self) -> torch.nn.Module:
        base = getattr(self.model, "model", None)
        for owner in (base, getattr(base, "language_model", None), self.model):
            norm = getattr(owner, "norm", None) if owner is not None else None
            if isinstance(norm, torch.nn.Module):
                return norm
        raise RuntimeError(f"cannot find the final norm of model {self.name!r} for the logit lens")

    @contextmanager
    def _attention_mode(self, implementation: str | None):
        if implementation is None:
            yield
            return
        previous = self.model.config._attn_implementation
        if previous == implementation:
            yield
            return
        self.model.set_attn_implementation(implementation)
        try:
            yield
        finally:
            self.model.set_attn_implementation(previous)


def _cache_prefix(cache, length: int):
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
    allow (:func:`_cache_prefix`), else a copy."""
    if cache is None:
        return None
    view = _cache_prefix(cache, cache.get_seq_length())
    return copy.deepcopy(cache) if view is None else view


def _target_logprob(logits: torch.Tensor, targets: Sequence[int]) -> float:
    """``sum_i log_softmax(logits[i])[targets[i]]`` (float32 rows, float64 sum)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    index = torch.tensor(list(targets), device=logp.device)[:, None]
    return float(logp.gather(-1, index).double().sum())


def _derive_seed(seed: int, prompt: Sequence[int]) -> int:
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, prompt))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


@contextmanager
def _seeded(seed: int):
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _StopForward(Exception):
    """Raised by a forward hook to end a pass once the wanted layer has run."""
