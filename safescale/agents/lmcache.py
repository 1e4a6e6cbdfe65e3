"""A persistent cache of LM calls keyed by (model hash, prompt, decoding settings).

Replaying a trace or resuming a run re-executes graph nodes; every LM call they make
is answered from this cache when the same model saw the same prompt with the same
decoding settings, so replay reruns no model. Stored in SQLite (one row per call;
JSON values; each insert is its own transaction, so a crash loses at most the call in
flight).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from safescale.models import ContinuationScores, Generation, Internals
from safescale.models.backend import PromptPass, continuation_arrays
from safescale.models.interface import BlackBoxModel, LensMode, is_whitebox

__all__ = ["CachedLM", "add_rows", "read_rows"]


class CachedLM:
    """Wraps a model (:class:`~safescale.models.interface.BlackBoxModel` or
    :class:`~safescale.models.interface.WhiteBoxModel`); ``score_options``,
    ``score_continuations``, ``generate`` and ``generate_from`` are cached
    (continuations one row per (prompt, continuation), so a neutral-prompt PMI score is
    computed once per option text); every other method of the model interface is the
    model's own, delegated explicitly. It offers the white-box surface exactly when the
    wrapped model does (:func:`~safescale.models.interface.is_whitebox`).

    Args:
        lm: the model (or a :class:`~safescale.models.MicroBatchedLM` over it).
        path: SQLite file, or None for an in-memory cache (tests).
    """

    def __init__(self, lm: BlackBoxModel, path: str | Path | None = None) -> None:
        self.lm = lm
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT)")
        self._db.commit()
        self.hits = 0
        self.misses = 0
        self._journal: dict[str, str] | None = None

    # ---------------------------------------------------------------- identity
    # The model's own identity, prompt format and white-box surface, delegated
    # explicitly (see :mod:`safescale.models.interface`).
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
    def model(self) -> Any:
        return self.lm.model

    @property
    def device(self) -> Any:
        return self.lm.device

    @property
    def pad_token_id(self) -> int:
        return self.lm.pad_token_id

    # ---------------------------------------------------------------- prompting
    def prompt_text(self, message: str, *, answer_cue: bool = False) -> str:
        return self.lm.prompt_text(message, answer_cue=answer_cue)

    def prompt_ids(self, message: str, *, answer_cue: bool = False) -> list[int]:
        return self.lm.prompt_ids(message, answer_cue=answer_cue)

    def count_tokens(self, text: str) -> int:
        return self.lm.count_tokens(text)

    def letter_token_ids(self, letters: Sequence[str]) -> list[int]:
        return self.lm.letter_token_ids(letters)

    def continuation_ids(self, text: str) -> list[int]:
        return self.lm.continuation_ids(text)

    def cue_ids(self, message: str) -> list[int] | None:
        return self.lm.cue_ids(message)

    def _key(self, kind: str, payload: object) -> str:
        blob = json.dumps(
            [kind, self.lm.model_hash, self.lm.prompt_format_id, payload], sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _get(self, key: str) -> object | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _put(self, key: str, value: object) -> None:
        blob = json.dumps(value)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)", (key, blob))
            self._db.commit()
            if self._journal is not None:
                self._journal[key] = blob

    # ---------------------------------------------------------------- shipping rows
    # A Ray worker keeps its cache in its own scratch directory; the driver seeds it
    # with the run's rows and takes back the rows each shard added (see
    # :mod:`safescale.experiments.ray_backend`).
    def start_journal(self) -> None:
        """From now on, remember every row stored (read back by :meth:`take_journal`)."""
        with self._lock:
            self._journal = {}

    def take_journal(self) -> list[tuple[str, str]]:
        """The rows stored since the journal was started or last taken, as (key, JSON
        value) pairs; the journal starts empty again."""
        with self._lock:
            rows = list((self._journal or {}).items())
            if self._journal is not None:
                self._journal = {}
        return rows

    def seed(self, rows: Sequence[tuple[str, str]]) -> int:
        """Add rows read from another cache (:func:`read_rows`); rows this cache holds
        already are kept. Returns how many rows were new."""
        with self._lock:
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO calls (key, value) VALUES (?, ?)", rows)
            self._db.commit()
            return self._db.total_changes - before

    def lookup(self, kind: str, payload: object) -> object | None:
        """A cached JSON value of a composite call (e.g. an answer read from a shared
        prompt pass), or None."""
        value = self._get(self._key(kind, payload))
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def store(self, kind: str, payload: object, value: object) -> None:
        """Cache the JSON value of a composite call (see :meth:`lookup`)."""
        self._put(self._key(kind, payload), value)

    def score_options(self, messages: Sequence[str], letters: Sequence[str]) -> np.ndarray:
        """Cached :meth:`LanguageModel.score_options` (per message)."""
        keys = [self._key("score", [m, list(letters)]) for m in messages]
        out = np.zeros((len(messages), len(letters)), dtype=np.float32)
        missing = []
        for i, key in enumerate(keys):
            value = self._get(key)
            if value is None:
                missing.append(i)
            else:
                out[i] = value
        self.hits += len(messages) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self.lm.score_options([messages[i] for i in missing], letters)
            for row, i in enumerate(missing):
                out[i] = fresh[row]
                self._put(keys[i], [float(x) for x in fresh[row]])
        return out

    def score_continuations(
        self,
        messages: Sequence[str],
        continuations: Sequence[Sequence[str]] | Sequence[str],
        *,
        answer_cue: bool = True,
    ) -> ContinuationScores:
        """Cached :meth:`LanguageModel.score_continuations` (per prompt x continuation)."""
        per_message, logprob, n_tokens, n_chars = continuation_arrays(messages, continuations)
        pending: list[tuple[int, list[int]]] = []
        for row, (message, texts) in enumerate(zip(messages, per_message, strict=True)):
            keys = [self._key("continuation", [message, text, answer_cue]) for text in texts]
            missing = []
            for col, key in enumerate(keys):
                value = self._get(key)
                if value is None:
                    missing.append(col)
                else:
                    logprob[row, col], n_tokens[row, col], n_chars[row, col] = value
            self.hits += len(texts) - len(missing)
            self.misses += len(missing)
            if missing:
                pending.append((row, missing))
        # rows missing the same continuations go to the model in one call (so prompts
        # with a common prefix share its prefill)
        groups: dict[tuple[str, ...], list[tuple[int, list[int]]]] = {}
        for row, missing in pending:
            texts = tuple(per_message[row][c] for c in missing)
            groups.setdefault(texts, []).append((row, missing))
        for texts, rows in groups.items():
            fresh = self.lm.score_continuations(
                [messages[row] for row, _ in rows], [list(texts)] * len(rows), answer_cue=answer_cue
            )
            for i, (row, missing) in enumerate(rows):
                for j, col in enumerate(missing):
                    value = [
                        float(fresh.logprob[i, j]),
                        int(fresh.n_tokens[i, j]),
                        int(fresh.n_chars[i, j]),
                    ]
                    logprob[row, col], n_tokens[row, col], n_chars[row, col] = value
                    self._put(
                        self._key("continuation", [messages[row], texts[j], answer_cue]), value
                    )
        return ContinuationScores(logprob=logprob, n_tokens=n_tokens, n_chars=n_chars)

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
        """Cached :meth:`LanguageModel.generate` (per message; results are seed-exact)."""
        settings = self._generate_settings(max_new_tokens, n, temperature, seed, answer_cue)
        results: list[list[Generation] | None] = []
        missing = []
        for i, message in enumerate(messages):
            value = self._get(self._key("generate", [message, settings]))
            if value is None:
                missing.append(i)
                results.append(None)
            else:
                results.append(_generations(value))
        self.hits += len(messages) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self.lm.generate(
                [messages[i] for i in missing],
                max_new_tokens=max_new_tokens,
                n=n,
                temperature=temperature,
                seed=seed,
                answer_cue=answer_cue,
            )
            for gens, i in zip(fresh, missing, strict=True):
                results[i] = gens
                self._put(self._key("generate", [messages[i], settings]), _generation_values(gens))
        return [r for r in results if r is not None]

    def generate_from(
        self,
        state: PromptPass,
        *,
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        """Cached :meth:`LanguageModel.generate_from`, under the key of
        ``generate([state.message], answer_cue=True, ...)`` (both give the same samples,
        so a cached value serves either call)."""
        settings = self._generate_settings(max_new_tokens, n, temperature, seed, True)
        key = self._key("generate", [state.message, settings])
        value = self._get(key)
        if value is not None:
            self.hits += 1
            return _generations(value)
        self.misses += 1
        gens = self.lm.generate_from(
            state, n=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
        )
        self._put(key, _generation_values(gens))
        return gens

    # ---------------------------------------------------------------- white box
    # Not cached: their values are tensors and pass states (detection caches what
    # it reads from them).
    def sequence_logprob(self, message: str, ids: Sequence[int], n_scored: int) -> float:
        return self.lm.sequence_logprob(message, ids, n_scored)

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
        return self.lm.internals(
            message, response, attentions=attentions, lens=lens, topk=topk, ffn=ffn
        )

    def open_prompt(
        self, message: str, *, attentions: bool = False, ffn: bool = False
    ) -> PromptPass:
        return self.lm.open_prompt(message, attentions=attentions, ffn=ffn)

    def feed(self, state: PromptPass, ids: Sequence[int]) -> None:
        self.lm.feed(state, ids)

    def answer_logits(self, state: PromptPass) -> Any:
        return self.lm.answer_logits(state)

    def score_options_from(self, state: PromptPass, letters: Sequence[str]) -> np.ndarray | None:
        return self.lm.score_options_from(state, letters)

    def score_continuations_from(
        self, state: PromptPass, texts: Sequence[str]
    ) -> ContinuationScores | None:
        return self.lm.score_continuations_from(state, texts)

    def internals_from(
        self,
        state: PromptPass,
        response: str | Sequence[int],
        *,
        lens: LensMode = "none",
        topk: int = 20,
    ) -> Internals:
        return self.lm.internals_from(state, response, lens=lens, topk=topk)

    def sequence_logprob_from(self, state: PromptPass, ids: Sequence[int], n_scored: int) -> float:
        return self.lm.sequence_logprob_from(state, ids, n_scored)

    def last_hidden_from(
        self, state: PromptPass, sequences: Sequence[Sequence[int]], layer: int
    ) -> np.ndarray:
        return self.lm.last_hidden_from(state, sequences, layer)

    def prefill(
        self, ids: Sequence[int], *, logits: bool = True, **forward_kwargs: Any
    ) -> tuple[Any, Any]:
        return self.lm.prefill(ids, logits=logits, **forward_kwargs)

    def continuations_over_cache(
        self,
        last_logits: Any,
        cache: Any,
        prompt_length: int,
        conts: list[list[int]],
        **forward_kwargs: Any,
    ) -> list[float]:
        return self.lm.continuations_over_cache(
            last_logits, cache, prompt_length, conts, **forward_kwargs
        )

    def check_continuation_room(self, prompt_length: int, conts: list[list[int]]) -> None:
        self.lm.check_continuation_room(prompt_length, conts)

    def _generate_settings(
        self, max_new_tokens: int, n: int, temperature: float, seed: int, answer_cue: bool
    ) -> list:
        settings: list = [max_new_tokens, n, temperature, seed, answer_cue]
        if answer_cue:  # cued samples changed pass layout with this version
            settings.append(self.lm.CUED_SAMPLING_LAYOUT)
        return settings

    def copy(self) -> CachedLM:
        """An in-memory cache over the same model holding a snapshot of this one's
        entries (e.g. a warm cache several independent measurements start from)."""
        clone = CachedLM(self.lm)
        with self._lock:
            self._db.backup(clone._db)
        return clone

    def close(self) -> None:
        with self._lock:
            self._db.close()


def read_rows(path: str | Path) -> list[tuple[str, str]]:
    """Every (key, JSON value) row of an LM cache file (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(str(k), str(v)) for k, v in db.execute("SELECT key, value FROM calls")]
    except sqlite3.OperationalError:  # a file without the table: nothing cached yet
        return []
    finally:
        db.close()


def add_rows(path: str | Path, rows: Sequence[tuple[str, str]]) -> int:
    """Add (key, JSON value) rows to an LM cache file in one transaction (existing keys
    are kept); returns how many rows were new. Every value must be valid JSON."""
    for key, value in rows:
        if not isinstance(key, str) or len(key) != 64:
            raise ValueError(f"{path}: an LM cache row with a malformed key {key!r:.80}")
        json.loads(value)
    db = sqlite3.connect(str(path))
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT)")
        before = db.total_changes
        with db:
            db.executemany("INSERT OR IGNORE INTO calls (key, value) VALUES (?, ?)", rows)
        return db.total_changes - before
    finally:
        db.close()


def _generations(value: list[dict]) -> list[Generation]:
    return [Generation(g["text"], tuple(g["ids"]), tuple(g["lps"])) for g in value]


def _generation_values(gens: Sequence[Generation]) -> list[dict]:
    return [{"text": g.text, "ids": list(g.token_ids), "lps": list(g.token_logprobs)} for g in gens]
