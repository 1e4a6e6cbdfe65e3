"""Cross-item micro-batching: several items of a shard in flight share padded forwards.

The runner can answer up to ``items_in_flight`` items of a shard at once, each in its
own thread running the item's condition graph. Those threads do not run the model
concurrently: a :class:`MicroBatcher` lets exactly one of them run at a time (it holds
the *turn*), and a thread gives up the turn only when it asks for an LM call that can
be merged with other items' calls. When every item in flight is waiting for such a
call (or the pending calls fill ``batch_size`` rows), the pending calls of one kind are
answered by one padded forward, their threads become runnable again, and one of them
takes the turn. So:

* everything else an item does (tokenizing, generation with its seeded RNG, the
  detection pass with its attention-mode switch, SQLite caches) runs exactly as in a
  single-threaded run: there is never a second thread inside the model;
* the flush rule needs no timeout: a batch runs as soon as nothing else can run, and
  a thread that finishes its item (or fails) hands on the turn the same way, so items
  that finish at different times never leave the others waiting;
* the requests of a batch are sorted by their content before they are merged, so a
  given set of pending calls gives the same result whatever order they arrived in.

What is merged: :meth:`LanguageModel.score_continuations` (cloze answers, the PMI
neutral prompt, the agentic critic's judgements; :func:`score_continuations_batched`:
one right-padded prefill of all the prompts, then every multi-token continuation over
a per-row copy of its prompt's cache) and :meth:`LanguageModel.score_options` (its own
left-padded batching, over the merged messages). ``generate`` is not merged: it runs
per request in the caller's turn (its sampling seeds are per prompt already).

Every model call of an item thread (merged or not) runs on the thread that made the
batcher, which serves them while it waits for the items (:meth:`MicroBatcher.serve`):
torch's CPU thread pool belongs to the calling thread, and a second calling thread
slows every forward that follows.

Batched results equal the one-at-a-time ones up to float rounding of the padded
matmuls (``tests/integration/test_microbatch_tiny.py`` states the tolerance).
"""

from __future__ import annotations

import functools
import inspect
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from safescale.models.backend import (
    ContinuationScores,
    Generation,
    LanguageModel,
    PromptPass,
    continuation_arrays,
)
from safescale.models.interface import BlackBoxModel, LensMode, is_whitebox
from safescale.models.internals import Internals
from safescale.models.prefix_cache import sliding_window as _sliding_window

__all__ = ["MicroBatchedLM", "MicroBatcher", "score_continuations_batched"]


# ---------------------------------------------------------------- batched primitives
@torch.inference_mode()
def score_continuations_batched(
    lm: LanguageModel,
    messages: Sequence[str],
    continuations: Sequence[Sequence[str]] | Sequence[str],
    *,
    answer_cue: bool = True,
    batch_size: int | None = None,
) -> ContinuationScores:
    """:meth:`LanguageModel.score_continuations`, with the prompts prefilled together.

    Prompts are taken ``batch_size`` at a time (sorted by length, then text): one
    right-padded forward prefills them (under the causal mask a real token never sees
    the pads that follow it, so its keys and values are those of an unpadded pass);
    each prompt's last real position gives the first continuation token. The
    multi-token continuations of all those prompts then run as one right-padded batch
    over per-row copies of the prefill cache, with an attention mask that hides the
    prompt pads and explicit position ids (``prompt length + offset``).

    A model with sliding-window layers whose window a padded batch would exceed is
    scored one prompt at a time (the window would be cut at the padded width).

    With a prefix cache on the model (:meth:`LanguageModel.set_prefix_cache`), a prompt
    whose cached prefix covers at least :data:`CACHED_SHARE` of it is scored alone over
    that prefix (:meth:`LanguageModel.score_continuations`); the others are prefilled
    together as above and their prompt positions stored in the prefix cache for later
    prompts.

    Args:
        lm: the model.
        messages: user turns.
        continuations: one list of texts per message, or one list shared by all.
        answer_cue: append the answer cue to each prompt.
        batch_size: prompts per prefill (default ``lm.batch_size``).

    Returns:
        The same arrays as :meth:`LanguageModel.score_continuations`.
    """
    per_message, logprob, n_tokens, n_chars = continuation_arrays(messages, continuations)
    prompts = [lm.prompt_ids(m, answer_cue=answer_cue) for m in messages]
    conts = [[lm.continuation_ids(t) for t in texts] for texts in per_message]
    rows = [r for r in range(len(messages)) if conts[r]]
    window = _sliding_window(lm)
    longest = max((len(prompts[r]) + max(map(len, conts[r])) for r in rows), default=0)
    if window is not None and longest > window:
        return lm.score_continuations(messages, continuations, answer_cue=answer_cue)
    for r in rows:
        lm.check_continuation_room(len(prompts[r]), conts[r])
        n_tokens[r, : len(conts[r])] = [len(c) for c in conts[r]]
        n_chars[r, : len(conts[r])] = [len(t.strip()) for t in per_message[r]]
    size = max(1, batch_size or lm.batch_size)
    if lm.prefix_cache_active():
        store = lm.prefix_cache
        assert store is not None
        alone = [r for r in rows if store.peek(prompts[r], len(prompts[r]) - 1)
                 >= CACHED_SHARE * len(prompts[r])]  # fmt: skip
        for r in alone:
            one = lm.score_continuations(
                [messages[r]], [per_message[r]], answer_cue=answer_cue
            ).logprob[0]
            logprob[r, : len(one)] = one
        rows = [r for r in rows if r not in set(alone)]
    rows.sort(key=lambda r: (len(prompts[r]), messages[r]))
    for chunk in length_chunks([len(prompts[r]) for r in rows], size):
        chunk = [rows[i] for i in chunk]
        scores = _prefill_and_continue(lm, [prompts[r] for r in chunk], [conts[r] for r in chunk])
        for r, row_scores in zip(chunk, scores, strict=True):
            logprob[r, : len(row_scores)] = row_scores
    return ContinuationScores(logprob=logprob, n_tokens=n_tokens, n_chars=n_chars)


#: With a prefix cache, a prompt whose cached prefix covers at least this share of it
#: is scored over that prefix rather than in a padded cold prefill.
CACHED_SHARE = 0.5

#: A padded prefill holds prompts whose lengths are within this factor (plus a few
#: tokens) of its shortest: a short prompt (e.g. the neutral PMI prompt) padded to a long
#: one would cost a whole long forward for nothing.
PAD_SLACK = 1.25
PAD_TOKENS = 16


def length_chunks(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Positions of ascending ``lengths`` cut into runs of at most ``size`` whose longest
    is within ``PAD_SLACK`` x (+ ``PAD_TOKENS``) of their shortest."""
    chunks: list[list[int]] = []
    for i, n in enumerate(lengths):
        if (
            chunks
            and len(chunks[-1]) < size
            and n <= PAD_SLACK * lengths[chunks[-1][0]] + PAD_TOKENS
        ):
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def _prefill_and_continue(
    lm: LanguageModel, prompts: list[list[int]], conts: list[list[list[int]]]
) -> list[list[float]]:
    """Continuation log-probs of several prompts (see :func:`score_continuations_batched`)."""
    dev = lm.device
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    ids = torch.full((len(prompts), width), lm.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        mask[row, : len(prompt)] = 1
    # the LM head only at each row's last real position
    last = sorted({n - 1 for n in lengths})
    column = {pos: i for i, pos in enumerate(last)}
    out = lm.model(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        use_cache=True,
        logits_to_keep=torch.tensor(last, device=dev),
    )
    if lm.prefix_cache_active():
        # right padding: row r's first len(prompt) positions are its unpadded prefill
        store = lm.prefix_cache
        assert store is not None
        for row, prompt in enumerate(prompts):
            store.note_computed(len(prompt))
            store.insert(prompt, out.cache, row=row)
    picked = torch.stack([out.logits[row, column[n - 1]] for row, n in enumerate(lengths)])
    first = torch.log_softmax(picked.float(), dim=-1)
    totals = [[float(first[row, c[0]]) for c in row_conts] for row, row_conts in enumerate(conts)]
    longer = [(row, j) for row, row_conts in enumerate(conts) for j, c in enumerate(row_conts)
              if len(c) > 1]  # fmt: skip
    if not longer:
        return totals
    cache = out.cache
    cache.batch_select_indices(torch.tensor([row for row, _ in longer], device=dev))
    feed = [conts[row][j][:-1] for row, j in longer]
    extra = max(len(f) for f in feed)
    ids = torch.full((len(longer), extra), lm.pad_token_id, dtype=torch.long)
    cont_mask = torch.zeros((len(longer), width + extra), dtype=torch.long)
    positions = torch.zeros((len(longer), extra), dtype=torch.long)
    for i, ((row, _), f) in enumerate(zip(longer, feed, strict=True)):
        ids[i, : len(f)] = torch.tensor(f, dtype=torch.long)
        cont_mask[i, :width] = mask[row]
        cont_mask[i, width : width + len(f)] = 1
        positions[i] = lengths[row] + torch.arange(extra)
    logits = lm.model(
        input_ids=ids.to(dev),
        attention_mask=cont_mask.to(dev),
        position_ids=positions.to(dev),
        cache=cache,
        use_cache=True,
    ).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    for i, (row, j) in enumerate(longer):
        targets = torch.tensor(conts[row][j][1:], device=logp.device)
        totals[row][j] += float(logp[i, : len(targets)].gather(-1, targets[:, None]).sum())
    return totals


# ---------------------------------------------------------------- the batcher
@dataclass
class _Request:
    """One pending LM call of an item thread."""

    kind: str  # "continuations" | "options"
    group: tuple  # what must be equal for two requests to share a forward
    messages: list[str]
    payload: list  # per-message continuations ("continuations") or letters ("options")
    order: str = ""
    done: bool = False
    result: Any = None
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.order = json.dumps([self.kind, list(self.group), self.messages, self.payload])


@dataclass
class _State:
    active: int = 0  # registered item threads
    runnable: int = 0  # registered threads not waiting for a request
    holder: int | None = None  # the thread holding the turn
    pending: list[_Request] = field(default_factory=list)
    batches: int = 0
    merged_requests: int = 0


class MicroBatcher:
    """Turns and merged LM calls of the item threads of one model (see the module
    docstring).

    Args:
        lm: the model.
        batch_size: rows (prompts) per merged forward; a single request with more rows
            still runs (in chunks of this size).
    """

    def __init__(self, lm: LanguageModel, batch_size: int | None = None) -> None:
        self.lm = lm
        self.batch_size = max(1, batch_size or lm.batch_size)
        self._cv = threading.Condition(threading.Lock())
        self._state = _State()
        self._local = threading.local()
        # Every model call of the item threads runs on one thread, the one that made
        # the batcher (the runner's): torch's OpenMP pool belongs to the thread that
        # calls it, and once two threads have run torch their pools slow every later
        # forward on a small CPU (measured on 2 cores: 0.43 s -> 0.56 s per call).
        # That thread serves the calls (:meth:`serve`) while it waits for results.
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._server = threading.get_ident()

    def on_lm_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` on the serving thread and wait for its result."""
        if threading.get_ident() == self._server:
            return fn(*args, **kwargs)
        future: Future = Future()
        self._calls.put((fn, args, kwargs, future))
        return future.result()

    def wake(self) -> None:
        """Make :meth:`serve` check its condition again."""
        self._calls.put(None)

    def serve(self, done: Callable[[], bool], *, timeout: float | None = None) -> None:
        """Run the item threads' model calls on this (the serving) thread until
        ``done()`` holds; ``done`` is checked at the start and after every :meth:`wake`.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        if threading.get_ident() != self._server:
            raise RuntimeError("only the thread that made the batcher serves its calls")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            try:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                call = self._calls.get(timeout=wait)
            except queue.Empty:
                raise TimeoutError("the item threads did not finish in time") from None
            if call is None:
                continue
            fn, args, kwargs, future = call
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # goes to the calling item thread
                    future.set_exception(exc)

    @property
    def batches(self) -> int:
        """Merged forwards run so far."""
        return self._state.batches

    @property
    def merged_requests(self) -> int:
        """Requests answered by merged forwards so far."""
        return self._state.merged_requests

    def registered(self) -> bool:
        """Whether the calling thread is an item thread of this batcher."""
        return bool(getattr(self._local, "registered", False))

    @contextmanager
    def worker(self) -> Iterator[None]:
        """Register the calling thread as an item thread for the ``with`` body: it
        runs only while it holds the turn (taken here, handed on at exit)."""
        if self.registered():
            raise RuntimeError("this thread is already an item thread of the batcher")
        me = threading.get_ident()
        with self._cv:
            self._state.active += 1
            self._state.runnable += 1
            self._take_turn(me)
        self._local.registered = True
        try:
            yield
        finally:
            self._local.registered = False
            with self._cv:
                self._state.active -= 1
                self._state.runnable -= 1
                self._hand_on(me)

    def submit(self, kind: str, group: tuple, messages: list[str], payload: list) -> Any:
        """Queue one LM call of the calling item thread and wait for its result (the
        turn is given up while waiting and taken back before returning)."""
        me = threading.get_ident()
        request = _Request(kind, group, list(messages), payload)
        with self._cv:
            self._state.pending.append(request)
            self._state.runnable -= 1
            self._hand_on(me)
            while not request.done:
                self._cv.wait()
            self._take_turn(me)
        if request.error is not None:
            raise request.error
        return request.result

    # -------------------------------------------------------------- internals
    def _take_turn(self, me: int) -> None:
        while self._state.holder is not None:
            self._cv.wait()
        self._state.holder = me

    def _pending_rows(self) -> int:
        return sum(len(r.messages) for r in self._state.pending)

    def _hand_on(self, me: int) -> None:
        """Give up the turn (the caller holds the condition's lock): while nothing else
        can run, or a full batch is pending, run the pending batches first."""
        state = self._state
        state.holder = me
        while state.pending and (state.runnable == 0 or self._pending_rows() >= self.batch_size):
            batch = self._take_batch()
            self._cv.release()
            try:
                self.on_lm_thread(self._run, batch)
            finally:
                self._cv.acquire()
            state.batches += 1
            state.merged_requests += len(batch)
            for request in batch:
                request.done = True
            state.runnable += len(batch)
        state.holder = None
        self._cv.notify_all()

    def _take_batch(self) -> list[_Request]:
        """The first group (in content order) of pending requests, up to
        ``batch_size`` rows (at least one request), sorted by content."""
        pending = sorted(self._state.pending, key=lambda r: r.order)
        group = (pending[0].kind, pending[0].group)
        batch: list[_Request] = []
        rows = 0
        for request in pending:
            if (request.kind, request.group) != group:
                continue
            if batch and rows + len(request.messages) > self.batch_size:
                break
            batch.append(request)
            rows += len(request.messages)
        taken = {id(r) for r in batch}
        self._state.pending = [r for r in self._state.pending if id(r) not in taken]
        return batch

    def _run(self, batch: list[_Request]) -> None:
        """One merged call for ``batch``; when it fails, each request runs alone (so an
        error reaches only the caller whose request caused it)."""
        messages = [m for r in batch for m in r.messages]
        try:
            if batch[0].kind == "continuations":
                (answer_cue,) = batch[0].group
                per_message = [c for r in batch for c in r.payload]
                scores = score_continuations_batched(
                    self.lm,
                    messages,
                    per_message,
                    answer_cue=answer_cue,
                    batch_size=self.batch_size,
                )
                start = 0
                for r in batch:
                    stop = start + len(r.messages)
                    width = max((len(c) for c in r.payload), default=0)
                    r.result = ContinuationScores(
                        logprob=scores.logprob[start:stop, :width].copy(),
                        n_tokens=scores.n_tokens[start:stop, :width].copy(),
                        n_chars=scores.n_chars[start:stop, :width].copy(),
                    )
                    start = stop
            elif batch[0].kind == "options":
                logits = self.lm.score_options(messages, batch[0].payload)
                start = 0
                for r in batch:
                    r.result = np.array(logits[start : start + len(r.messages)])
                    start += len(r.messages)
            else:  # pragma: no cover - submit() only queues the kinds above
                raise ValueError(f"unknown request kind {batch[0].kind!r}")
        except Exception as exc:  # goes to the caller(s) whose request failed
            if len(batch) == 1:
                batch[0].error = exc
                return
            for r in batch:  # one bad request must not fail the others: each alone
                r.result = None
                self._run([r])


class OnServingThread:
    """Any object (e.g. an evidence store, whose query embedding runs torch) whose own
    methods, called from an item thread of ``batcher``, run on its serving thread;
    other attributes and calls from other threads are the object's own."""

    def __init__(self, target: Any, batcher: MicroBatcher) -> None:
        self.target = target
        self.batcher = batcher

    def __len__(self) -> int:  # max-context asks the store for its size
        return len(self.target)

    def __getattr__(self, name: str):
        value = getattr(self.target, name)
        if inspect.ismethod(value) and value.__self__ is self.target:

            @functools.wraps(value)
            def on_serving_thread(*args: Any, **kwargs: Any) -> Any:
                if not self.batcher.registered():
                    return value(*args, **kwargs)
                return self.batcher.on_lm_thread(value, *args, **kwargs)

            return on_serving_thread
        return value


class MicroBatchedLM:
    """A model whose ``score_continuations`` and ``score_options`` calls from item
    threads go through a :class:`MicroBatcher`; every other method of the model
    interface (:mod:`safescale.models.interface`) is the model's own, delegated
    explicitly, and runs on the batcher's model thread when an item thread calls it
    (any call from a thread that is not an item thread runs where it is made).
    It offers the white-box surface exactly when the wrapped model does.

    Wrap it in :class:`~safescale.agents.CachedLM` like the model itself.
    """

    def __init__(self, lm: BlackBoxModel, batcher: MicroBatcher) -> None:
        self.lm = lm
        self.batcher = batcher

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, on the batcher's model thread for item threads."""
        if not self.batcher.registered():
            return fn(*args, **kwargs)
        return self.batcher.on_lm_thread(fn, *args, **kwargs)

    # -------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        return self.lm.name

    @property
    def model_hash(self) -> str:
        return self.lm.model_hash

    @property
    def whitebox(self) -> bool:
        """Whether the wrapped model is white-box (:func:`is_whitebox`)."""
        return is_whitebox(self.lm)

    @property
    def n_layers(self) -> int | None:
        return self.lm.n_layers

    @property
    def n_parameters(self) -> int | None:
        return self.lm.n_parameters

    @property
    def context_length(self) -> int:
        return self.lm.context_length

    @property
    def prompt_format_id(self) -> str:
        return self.lm.prompt_format_id

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    @property
    def use_chat_template(self) -> bool:
        return self.lm.use_chat_template

    @property
    def batch_size(self) -> int:
        return self.lm.batch_size

    @property
    def formulations(self) -> frozenset[str] | None:
        return self.lm.formulations

    @property
    def CUED_SAMPLING_LAYOUT(self) -> int | str:
        return self.lm.CUED_SAMPLING_LAYOUT

    @property
    def model(self) -> torch.nn.Module:
        return self.lm.model

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def pad_token_id(self) -> int:
        return self.lm.pad_token_id

    # -------------------------------------------------------------- prompting
    def prompt_text(self, message: str, *, answer_cue: bool = False) -> str:
        return self._call(self.lm.prompt_text, message, answer_cue=answer_cue)

    def prompt_ids(self, message: str, *, answer_cue: bool = False) -> list[int]:
        return self._call(self.lm.prompt_ids, message, answer_cue=answer_cue)

    def count_tokens(self, text: str) -> int:
        return self._call(self.lm.count_tokens, text)

    def letter_token_ids(self, letters: Sequence[str]) -> list[int]:
        return self._call(self.lm.letter_token_ids, letters)

    def continuation_ids(self, text: str) -> list[int]:
        return self._call(self.lm.continuation_ids, text)

    def cue_ids(self, message: str) -> list[int] | None:
        return self._call(self.lm.cue_ids, message)

    # -------------------------------------------------------------- generation
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
        """:meth:`LanguageModel.generate` (not merged: per request, in the caller's
        turn, on the model thread)."""
        return self._call(
            self.lm.generate,
            messages,
            max_new_tokens=max_new_tokens,
            n=n,
            temperature=temperature,
            seed=seed,
            answer_cue=answer_cue,
        )

    # -------------------------------------------------------------- white box
    def sequence_logprob(self, message: str, ids: Sequence[int], n_scored: int) -> float:
        return self._call(self.lm.sequence_logprob, message, ids, n_scored)

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
        return self._call(
            self.lm.internals,
            message,
            response,
            attentions=attentions,
            lens=lens,
            topk=topk,
            ffn=ffn,
        )

    def open_prompt(
        self, message: str, *, attentions: bool = False, ffn: bool = False
    ) -> PromptPass:
        return self._call(self.lm.open_prompt, message, attentions=attentions, ffn=ffn)

    def feed(self, state: PromptPass, ids: Sequence[int]) -> None:
        self._call(self.lm.feed, state, ids)

    def answer_logits(self, state: PromptPass) -> torch.Tensor | None:
        return self._call(self.lm.answer_logits, state)

    def score_options_from(self, state: PromptPass, letters: Sequence[str]) -> np.ndarray | None:
        return self._call(self.lm.score_options_from, state, letters)

    def score_continuations_from(
        self, state: PromptPass, texts: Sequence[str]
    ) -> ContinuationScores | None:
        return self._call(self.lm.score_continuations_from, state, texts)

    def internals_from(
        self,
        state: PromptPass,
        response: str | Sequence[int],
        *,
        lens: LensMode = "none",
        topk: int = 20,
    ) -> Internals:
        return self._call(self.lm.internals_from, state, response, lens=lens, topk=topk)

    def sequence_logprob_from(self, state: PromptPass, ids: Sequence[int], n_scored: int) -> float:
        return self._call(self.lm.sequence_logprob_from, state, ids, n_scored)

    def last_hidden_from(
        self, state: PromptPass, sequences: Sequence[Sequence[int]], layer: int
    ) -> np.ndarray:
        return self._call(self.lm.last_hidden_from, state, sequences, layer)

    def generate_from(
        self,
        state: PromptPass,
        *,
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        return self._call(
            self.lm.generate_from,
            state,
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )

    def prefill(
        self, ids: Sequence[int], *, logits: bool = True, **forward_kwargs: Any
    ) -> tuple[torch.Tensor | None, Any]:
        return self._call(self.lm.prefill, ids, logits=logits, **forward_kwargs)

    def continuations_over_cache(
        self,
        last_logits: torch.Tensor,
        cache: Any,
        prompt_length: int,
        conts: list[list[int]],
        **forward_kwargs: Any,
    ) -> list[float]:
        return self._call(
            self.lm.continuations_over_cache,
            last_logits,
            cache,
            prompt_length,
            conts,
            **forward_kwargs,
        )

    def check_continuation_room(self, prompt_length: int, conts: list[list[int]]) -> None:
        self._call(self.lm.check_continuation_room, prompt_length, conts)

    # -------------------------------------------------------------- merged calls
    def score_continuations(
        self,
        messages: Sequence[str],
        continuations: Sequence[Sequence[str]] | Sequence[str],
        *,
        answer_cue: bool = True,
    ) -> ContinuationScores:
        """:meth:`LanguageModel.score_continuations`, merged with other items' calls."""
        if not self.batcher.registered() or not messages:
            return self.lm.score_continuations(messages, continuations, answer_cue=answer_cue)
        per_message, *_ = continuation_arrays(messages, continuations)
        return self.batcher.submit(
            "continuations", (bool(answer_cue),), list(messages), [list(c) for c in per_message]
        )

    def score_options(self, messages: Sequence[str], letters: Sequence[str]) -> np.ndarray:
        """:meth:`LanguageModel.score_options`, merged with other items' calls."""
        if not self.batcher.registered() or not messages:
            return self.lm.score_options(messages, letters)
        return self.batcher.submit("options", tuple(letters), list(messages), list(letters))
