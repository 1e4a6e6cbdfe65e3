"""Letter and continuation scoring of the in-process backend.

* :meth:`ScoringMixin.score_options`: the option letters' logits at the answer position
  (left-padded batches, or one prompt at a time over the prefix cache);
* :meth:`ScoringMixin.score_continuations`: ``log p(continuation | prompt)`` (the cloze
  formulations): one prefill per prompt, then its continuations as one packed row over
  that KV cache (:meth:`ScoringMixin.continuations_over_cache`);
* :meth:`ScoringMixin.sequence_logprob`: the log-prob of given ids after a prompt.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from safescale.models.prefix_cache import cacheable, sliding_window
from safescale.models.prompting import PromptError

__all__ = [
    "ContinuationScores",
    "ScoringMixin",
    "common_prefix_length",
    "continuation_arrays",
    "packed_mask",
    "target_logprob",
]


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


class ScoringMixin:
    """Letter, continuation and sequence scoring over the model's forward (needs the
    :class:`~safescale.models.backend.LanguageModel` core: ``model``, ``device``,
    :meth:`prefill`, :meth:`check_room`, and the prompting methods)."""

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
        if self.prefix_cache_active():
            # several prompts: packed over their common prefix, read through the
            # cache (the n cyclic orderings of an item share everything up to the
            # option list); one prompt: over its longest cached prefix
            if len(encoded) > 1:
                tokens = [[[int(t)] for t in letter_ids.tolist()]] * len(encoded)
                packed = self._packed_prompts(encoded, tokens, raw=True)
                if packed is not None:
                    return np.asarray(packed, dtype=np.float32)
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

    @torch.inference_mode()
    def score_continuations(
        self,
        messages: Sequence[str],
        continuations: Sequence[Sequence[str]] | Sequence[str],
        *,
        answer_cue: bool = True,
    ) -> ContinuationScores:
        """Log-probability of each continuation after each prompt (the cloze formulation).

        Each prompt is prefilled once; its continuations then run together over that
        KV cache (:meth:`continuations_over_cache`: the continuation of a prompt never
        recomputes the prompt). Prompts that share a leading run of at least
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
        all_conts = [[self.continuation_ids(t) for t in texts] for texts in per_message]
        if len(prompts_ids) > 1 and all(all_conts) and sliding_window(self) is None:
            for prompt, conts in zip(prompts_ids, all_conts, strict=True):
                self.check_continuation_room(len(prompt), conts)
            scores = self._packed_prompts(prompts_ids, all_conts)
            if scores is not None:
                for row, (conts, texts) in enumerate(zip(all_conts, per_message, strict=True)):
                    logprob[row, : len(texts)] = scores[row]
                    n_tokens[row, : len(texts)] = [len(c) for c in conts]
                    n_chars[row, : len(texts)] = [len(t.strip()) for t in texts]
                return ContinuationScores(logprob=logprob, n_tokens=n_tokens, n_chars=n_chars)
        cached = self.prefix_cache_active()
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

    #: Tokens of one packed forward of :meth:`_packed_prompts` (more prompts go in
    #: further packs over the same prefix).
    PACK_TOKENS = 1024

    def _packed_prompts(
        self, prompts: list[list[int]], conts: list[list[list[int]]], *, raw: bool = False
    ) -> list[list[float]] | None:
        """Continuation log-probs of several prompts, their suffixes and continuations
        packed into few forwards over their common prefix.

        The common leading ids of ``prompts`` (each keeps at least one own token) are
        prefilled once (:meth:`prefill`: through the prefix cache when there is one).
        Then each prompt's own suffix and, after it, every multi-token continuation
        (but its last token) go into one row: positions as in the prompt's own pass,
        and a 4D mask under which a suffix token sees the prefix and its own suffix so
        far, and a continuation token the prefix, its prompt's suffix and its own
        earlier tokens; so each prompt is read as if alone. Logits are computed only at
        each suffix's last position and at the continuation tokens. A forward reads
        every weight of the model, which costs a CPU about as much as a short prompt's
        arithmetic, so several short prompts in one forward (the critic's
        per-passage relevance prompts, their "N/A" baseline) cost little more than one.
        The suffixes are not stored in the prefix cache (a prompt's own tail is used
        once). With ``raw`` (one-token continuations only: the option letters) the raw
        logits of those tokens at each prompt's last position are returned instead. None
        when the prefix's cache cannot be cut (the caller then scores the prompts one at
        a time).
        """
        n = common_prefix_length(prompts)
        first = prompts[0]
        cache = None
        if n > 0:
            _, cache = self.prefill(first[:n], logits=False)
            if not cacheable(cache):
                return None
        store = self.prefix_cache if self.prefix_cache_active() else None
        if store is not None:
            store.note_computed(sum(len(p) - n for p in prompts))
            store.note_shared(n * (len(prompts) - 1))
        out: list[list[float]] = [[] for _ in prompts]
        packs: list[list[int]] = [[]]
        size = 0
        for r, (prompt, cs) in enumerate(zip(prompts, conts, strict=True)):
            seg = len(prompt) - n + sum(len(c) - 1 for c in cs)
            if packs[-1] and size + seg > self.PACK_TOKENS:
                packs.append([])
                size = 0
            packs[-1].append(r)
            size += seg
        for pack in packs:
            self._score_pack(
                cache,
                n,
                [prompts[r] for r in pack],
                [conts[r] for r in pack],
                [out[r] for r in pack],
                raw=raw,
            )
        return out

    def _score_pack(
        self,
        cache,
        n: int,
        prompts: list[list[int]],
        conts: list[list[list[int]]],
        out: list[list[float]],
        *,
        raw: bool = False,
    ) -> None:
        """One packed forward of :meth:`_packed_prompts` over ``cache`` (``n`` prefix
        positions, or None for ``n == 0``; cut back to them afterwards); appends each
        prompt's continuation log-probs to its list in ``out``."""
        ids: list[int] = []
        positions: list[int] = []
        spans: list[tuple[int, int]] = []  # (start, end) in the row of each segment
        owner: list[int] = []  # the segment (prompt suffix) a continuation belongs to
        keep: list[int] = []
        reads = []  # per prompt: (row of the suffix's last logits, [rows of each cont])
        for prompt, cs in zip(prompts, conts, strict=True):
            start = len(ids)
            ids += prompt[n:]
            positions += range(n, len(prompt))
            spans.append((start, len(ids)))
            owner.append(-1)
            suffix = len(spans) - 1
            keep.append(len(ids) - 1)
            last = len(keep) - 1
            cont_rows = []
            for c in cs:
                feed = c[:-1]
                c_start = len(ids)
                ids += feed
                positions += range(len(prompt), len(prompt) + len(feed))
                spans.append((c_start, len(ids)))
                owner.append(suffix)
                cont_rows.append(list(range(len(keep), len(keep) + len(feed))))
                keep += range(c_start, len(ids))
            reads.append((last, cont_rows))
        total = len(ids)
        dev = self.device
        logits = self.model(
            input_ids=torch.tensor([ids], device=dev),
            position_ids=torch.tensor([positions], device=dev),
            attention_mask=packed_mask(n, spans, owner, self.model.dtype).to(dev),
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=torch.tensor(keep, device=dev),
        ).logits[0]
        if cache is not None:
            cache.crop(-total)  # back to the prefix (a negative count drops the pack)
        if raw:
            for (last, _), cs, sink in zip(reads, conts, out, strict=True):
                sink.extend(float(logits[last, c[0]]) for c in cs)
            return
        logp = torch.log_softmax(logits.float(), dim=-1)
        for (last, cont_rows), cs, sink in zip(reads, conts, out, strict=True):
            for c, rows in zip(cs, cont_rows, strict=True):
                total_lp = float(logp[last, c[0]])
                for row, target in zip(rows, c[1:], strict=True):
                    total_lp += float(logp[row, target])
                sink.append(total_lp)

    #: Shortest common prompt prefix (tokens) worth one shared prefill.
    MIN_SHARED_PREFIX = 8

    def _shared_prefix(self, prompts: list[list[int]]) -> tuple[list[int], object] | None:
        """The common leading ids of ``prompts`` (each keeps at least one own token)
        and their KV cache, or None when there is nothing worth sharing."""
        if len(prompts) < 2:
            return None
        n = common_prefix_length(prompts)
        first = prompts[0]
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
        """Raise :class:`PromptError` when a prompt of ``prompt_length`` tokens and
        its longest continuation exceed the context."""
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
        """Continuation log-probs given the prompt's last logits and its KV cache (one
        row; consumed: it is extended in place).

        The multi-token continuations run in one forward: over a full-attention cache
        as one packed row (:meth:`_packed_continuations`: the prompt's keys and values
        are read once, not copied per continuation); otherwise (sliding-window layers,
        or ``forward_kwargs`` such as an attention block of
        :mod:`safescale.detection.masking`, which addresses query rows by position) as a
        right-padded batch over a per-continuation copy of the cache. Both give each
        continuation's own full-pass log-prob up to float rounding.
        """
        dev = self.device
        first = torch.log_softmax(last_logits.float(), dim=-1)
        totals = [float(first[c[0]]) for c in conts]
        longer = [i for i, c in enumerate(conts) if len(c) > 1]
        if not longer:
            return totals
        feed = [conts[i][:-1] for i in longer]
        if len(longer) > 1 and not forward_kwargs and cacheable(cache):
            logits = self._packed_continuations(cache, prompt_length, feed)
            rows = []
            start = 0
            for f in feed:
                rows.append(logits[start : start + len(f)])
                start += len(f)
        else:
            if len(longer) > 1:
                cache.batch_repeat_interleave(len(longer))
            # Right padding: real tokens never attend to the pads that follow them.
            width = max(len(f) for f in feed)
            ids = torch.full((len(longer), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(longer), prompt_length + width), dtype=torch.long)
            mask[:, :prompt_length] = 1
            for r, f in enumerate(feed):
                ids[r, : len(f)] = torch.tensor(f)
                mask[r, prompt_length : prompt_length + len(f)] = 1
            batch = self.model(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                cache=cache,
                use_cache=True,
                **forward_kwargs,
            ).logits.float()
            rows = [batch[r, : len(f)] for r, f in enumerate(feed)]
        for r, i in enumerate(longer):
            logp = torch.log_softmax(rows[r], dim=-1)
            targets = torch.tensor(conts[i][1:], device=logp.device)
            totals[i] += float(logp.gather(-1, targets[:, None]).sum())
        return totals

    def _packed_continuations(
        self, cache, prompt_length: int, feed: list[list[int]]
    ) -> torch.Tensor:
        """Logits ``[sum(len(f)), V]`` of several continuations fed as one packed row over
        a one-row prompt cache: each continuation's positions restart at
        ``prompt_length`` and a 4D mask lets its tokens see the prompt and their own
        earlier tokens only, so every continuation is scored as if alone, with the
        prompt's keys and values read once (no per-continuation copy of the cache)."""
        dev = self.device
        ids = torch.tensor([[t for f in feed for t in f]], dtype=torch.long, device=dev)
        positions = torch.tensor(
            [[prompt_length + j for f in feed for j in range(len(f))]], device=dev
        )
        spans = []
        for f in feed:
            start = spans[-1][1] if spans else 0
            spans.append((start, start + len(f)))
        mask = packed_mask(prompt_length, spans, [-1] * len(spans), self.model.dtype)
        return (
            self.model(
                input_ids=ids,
                position_ids=positions,
                attention_mask=mask.to(dev),
                cache=cache,
                use_cache=True,
            )
            .logits[0]
            .float()
        )

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

    @torch.inference_mode()
    def sequence_logprob(self, message: str, ids: Sequence[int], n_scored: int) -> float:
        """``sum log p(t | prompt, ids before t)`` over the last ``n_scored`` of ``ids``
        following ``prompt_ids(message)``: one forward pass (the LM head only on the
        scored rows). :meth:`sequence_logprob_from` gives it from an open prompt."""
        prompt = self.prompt_ids(message)
        ids = [int(t) for t in ids]
        if not 1 <= n_scored <= len(ids):
            raise ValueError(f"n_scored={n_scored} must be in [1, {len(ids)}]")
        self.check_room(len(prompt) + len(ids))
        if self.prefix_cache_active() and len(prompt) > 1:
            _, past = self.prefill(prompt[:-1], logits=False)
            logits = self.model(
                input_ids=torch.tensor([[prompt[-1], *ids]], device=self.device),
                cache=past,
                use_cache=True,
                logits_to_keep=n_scored + 1,
            ).logits[0, :n_scored]
            return target_logprob(logits, ids[-n_scored:])
        logits = self.model(
            input_ids=torch.tensor([prompt + ids], device=self.device),
            use_cache=False,
            logits_to_keep=n_scored + 1,
        ).logits[0, :n_scored]
        return target_logprob(logits, ids[-n_scored:])


def packed_mask(
    prefix: int, spans: Sequence[tuple[int, int]], owner: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """The additive 4D attention mask ``[1, 1, T, prefix + T]`` of one packed row of
    ``T`` tokens after ``prefix`` cached positions.

    ``spans`` are the ``(start, end)`` segments of the row; a segment's tokens see the
    whole prefix, their own segment causally and, when ``owner[seg] >= 0``, all of the
    segment it continues (a continuation after its prompt's suffix). No other segment
    is visible, so each is read as if it were alone after the prefix."""
    total = spans[-1][1] if spans else 0
    allowed = torch.zeros((total, prefix + total), dtype=torch.bool)
    allowed[:, :prefix] = True
    tril = torch.ones((total, total), dtype=torch.bool).tril()
    for seg, (a, b) in enumerate(spans):
        allowed[a:b, prefix + a : prefix + b] = tril[: b - a, : b - a]
        if owner[seg] >= 0:
            pa, pb = spans[owner[seg]]
            allowed[a:b, prefix + pa : prefix + pb] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the common leading ids of ``prompts``, leaving every prompt at least one
    own token."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def target_logprob(logits: torch.Tensor, targets: Sequence[int]) -> float:
    """``sum_i log_softmax(logits[i])[targets[i]]`` (float32 rows, float64 sum)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    index = torch.tensor(list(targets), device=logp.device)[:, None]
    return float(logp.gather(-1, index).double().sum())
