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

import numpy as np

from safescale.models import ContinuationScores, Generation, LanguageModel
from safescale.models.backend import PromptPass, continuation_arrays

__all__ = ["CachedLM"]


class CachedLM:
    """Wraps a :class:`LanguageModel`; ``score_options``, ``score_continuations``,
    ``generate`` and ``generate_from`` are cached (continuations one row per (prompt,
    continuation), so a neutral-prompt PMI score is computed once per option text).

    Args:
        lm: the model.
        path: SQLite file, or None for an in-memory cache (tests).
    """

    def __init__(self, lm: LanguageModel, path: str | Path | None = None) -> None:
        self.lm = lm
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    # pass-through attributes used by prompts and token accounting
    def __getattr__(self, name: str):
        return getattr(self.lm, name)

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
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )
            self._db.commit()

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


def _generations(value: list[dict]) -> list[Generation]:
    return [Generation(g["text"], tuple(g["ids"]), tuple(g["lps"])) for g in value]


def _generation_values(gens: Sequence[Generation]) -> list[dict]:
    return [{"text": g.text, "ids": list(g.token_ids), "lps": list(g.token_logprobs)} for g in gens]
