"""``kind: openai``: any OpenAI-compatible ``/v1/completions`` endpoint.

How each call is served (every prompt in the in-process backend's format, see
:mod:`.prompting`):

* **letters** (``score_options``): the cued prompt (``... Answer:``) with
  ``max_tokens=1, logprobs=top_logprobs, temperature=0``; each option letter's score is
  the log-prob of its token (``" A"``) among the first generated token's alternatives.
  A letter outside them is *censored*: it gets the smallest reported log-prob (an upper
  bound) and the ``letters_censored`` counter (recorded in the manifest) goes up.
* **continuations** (``score_continuations``, the cloze formulations, the critic's
  judgements, P(True)), two ways:

  - ``echo`` (servers whose prompt log-probs passed the probe): the prompt and the
    continuation as one text with ``echo=true, logprobs=1, max_tokens=1``; the
    continuation's tokens are found from the character offsets the server returns
    (``text_offset``), as lm-evaluation-harness reads them: every token that overlaps
    the continuation's characters, so a first token the server merged with the end of
    the prompt is counted whole; the generated token is left out;
  - ``generation`` (servers whose echoed log-probs are misaligned but whose
    generation log-probs are right, e.g. llama-cpp-python): each continuation token
    is read as the greedy step's alternatives after the prompt and the tokens before
    it (one request per token, in parallel). Used for short continuations only
    (:data:`STEPWISE_MAX_TOKENS`: the critic's answers, P(True)'s " True", a claim
    label); the cloze formulations are not offered (see :mod:`.probe`).

* **generation** (``generate``): ``max_tokens``, ``temperature`` (0 = greedy),
  ``top_p=1``, a seed per sample derived from the run seed and the prompt, and
  ``logprobs=1`` (each generated token's log-prob).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from safescale.models.backend import (
    ContinuationScores,
    Generation,
    PromptError,
    continuation_arrays,
)
from safescale.models.served.base import ServedModel
from safescale.models.served.client import ServerClient
from safescale.models.served.errors import ServedModelError
from safescale.models.served.settings import ServedSettings

__all__ = ["STEPWISE_MAX_TOKENS", "OpenAICompletionsModel", "TokenScores", "sample_seed"]

#: Longest continuation scored from generation log-probs (one request per token).
STEPWISE_MAX_TOKENS = 8


def sample_seed(seed: int, index: int, prompt: str) -> int:
    """The server seed of sample ``index`` of a prompt (31 bits: servers differ)."""
    digest = hashlib.sha256(f"{seed}:{index}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


class TokenScores:
    """Per-token log-probs of a text after a prefix, with the alternatives the server
    gave at each position.

    Attributes:
        tokens: the token strings.
        logprobs: ``log p(token | prefix, tokens before)``.
        top: the top alternatives at each position (token string -> log-prob).
        censored: positions whose token was not among the alternatives (their
            log-prob is the smallest alternative's: an upper bound).
    """

    def __init__(
        self,
        tokens: list[str],
        logprobs: list[float],
        top: list[dict[str, float]],
        censored: int = 0,
    ) -> None:
        self.tokens = tokens
        self.logprobs = logprobs
        self.top = top
        self.censored = censored


class OpenAICompletionsModel(ServedModel):
    """A model behind ``/v1/completions`` (see the module docstring).

    Built and probed by :func:`safescale.models.served.load_served`.
    """

    kind = "openai"

    def __init__(
        self, settings: ServedSettings, tokenizer: tuple[Any, bool | None], client: ServerClient
    ) -> None:
        super().__init__(settings, tokenizer)
        if self.fmt.tokenizer is None:
            raise ServedModelError(
                f"model {settings.name!r} ({settings.base_url}): kind: openai needs a local "
                "tokenizer (tokenizer: <registered name, directory, .gguf or HF id>) to "
                "format prompts and find continuation tokens"
            )
        self.client = client

    # ---------------------------------------------------------------- requests
    def complete(self, prompt: str, **params: Any) -> dict[str, Any]:
        """One ``/completions`` request; returns its first choice."""
        return self.first_choice("/completions", {"prompt": prompt, **params})

    def _one_step(self, prompt: str, k: int) -> dict[str, Any]:
        """The first generated token after ``prompt`` with ``k`` alternatives. When the
        greedy token ends the sequence, llama-cpp-python reports no token and no
        alternatives at all (``finish_reason: stop``, empty log-probs); the step is then
        asked again with ``min_tokens: 1`` (a vLLM and llama-cpp-python extension), which
        bars end-of-sequence from being *generated* while the reported alternatives stay
        the raw distribution's (end-of-sequence among them, as ``""``)."""
        choice = self.complete(prompt, max_tokens=1, logprobs=k)
        top = _logprobs(choice, self).get("top_logprobs") or [None]
        if not top[0] and choice.get("finish_reason") == "stop":
            self.count("end_of_sequence_retries")
            choice = self.complete(prompt, max_tokens=1, logprobs=k, min_tokens=1)
        return choice

    def _first_token_alternatives(self, prompt: str) -> dict[str, float]:
        choice = self._one_step(prompt, self.settings.top_logprobs)
        top = _logprobs(choice, self).get("top_logprobs") or [None]
        if not isinstance(top[0], dict) or not top[0]:
            raise ServedModelError(
                f"{self.client.url('/completions')}: model {self.settings.model!r}: no "
                "top_logprobs for the generated token"
            )
        return {str(k): float(v) for k, v in top[0].items()}

    # ---------------------------------------------------------------- letters
    def score_options(self, messages: Sequence[str], letters: Sequence[str]) -> np.ndarray:
        """Log-probs of the option letters at the answer position, ``[n, letters]``
        (``float32``; censored letters as described in the module docstring)."""
        letters = list(letters)
        out = np.zeros((len(messages), len(letters)), dtype=np.float32)
        if not messages:
            return out
        pieces = self.fmt.letter_pieces(letters)
        prompts = [self.prompt_text(m, answer_cue=True) for m in messages]
        tops = self.client.map(self._first_token_alternatives, prompts)
        for row, top in enumerate(tops):
            out[row] = self.censored_row(top, pieces)
        self.count("letter_prompts", len(messages))
        return out

    # ---------------------------------------------------------------- continuations
    def score_continuations(
        self,
        messages: Sequence[str],
        continuations: Sequence[Sequence[str]] | Sequence[str],
        *,
        answer_cue: bool = True,
    ) -> ContinuationScores:
        """Log-probability of each continuation after each prompt (``" " + text``
        after the prompt, as the in-process backend scores it)."""
        per_message, logprob, n_tokens, n_chars = continuation_arrays(messages, continuations)
        jobs = []
        for row, (message, texts) in enumerate(zip(messages, per_message, strict=True)):
            prefix = self.prompt_text(message, answer_cue=answer_cue)
            for col, text in enumerate(texts):
                if not isinstance(text, str) or not text.strip():
                    raise PromptError("a continuation is empty")
                jobs.append((row, col, prefix, text))
        if self.continuations == "generation":
            results = self._stepwise_many([(job[2], " " + job[3].strip()) for job in jobs])
        else:
            results = self.client.map(
                lambda job: self.score_text(job[2], " " + job[3].strip()), jobs
            )
        for (row, col, _, text), (value, count) in zip(jobs, results, strict=True):
            logprob[row, col] = value
            n_tokens[row, col] = count
            n_chars[row, col] = len(text.strip())
        return ContinuationScores(logprob=logprob, n_tokens=n_tokens, n_chars=n_chars)

    def score_text(self, prefix: str, text: str) -> tuple[float, int]:
        """``(sum log p(text tokens | prefix), number of tokens)`` for raw strings."""
        if self.continuations == "echo":
            scores = self._echo(prefix, text, top=1)
        elif self.continuations == "generation":
            ids = self._text_ids(text)
            if len(ids) > STEPWISE_MAX_TOKENS:
                raise PromptError(
                    f"model {self.name!r} ({self.settings.base_url}): a {len(ids)}-token "
                    "continuation cannot be scored: this server's prompt log-probs failed "
                    f"the probe ({self.probe_record.get('verdict', 'see the manifest')}), and "
                    f"only continuations of up to {STEPWISE_MAX_TOKENS} tokens are read from "
                    "generation log-probs"
                )
            scores = self._stepwise(prefix, ids, top=self.settings.top_logprobs)
        else:
            raise PromptError(
                f"model {self.name!r} ({self.settings.base_url}): this endpoint cannot score "
                "continuations (no usable prompt log-probs); use a letter formulation"
            )
        self.count("continuations")
        return float(sum(scores.logprobs)), len(scores.logprobs)

    def token_scores(self, prefix: str, text: str, *, top: int | None = None) -> TokenScores:
        """Per-token log-probs of ``text`` after ``prefix`` with ``top`` alternatives
        per position (the black-box detectors' input); any length."""
        k = self.settings.top_logprobs if top is None else top
        if self.continuations == "echo":
            return self._echo(prefix, text, top=k)
        if self.continuations == "generation":
            return self._stepwise(prefix, self._text_ids(text), top=k)
        raise PromptError(
            f"model {self.name!r} ({self.settings.base_url}): this endpoint cannot score a "
            "text's tokens (no usable prompt log-probs)"
        )

    def _text_ids(self, text: str) -> list[int]:
        return list(self.fmt.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _echo(self, prefix: str, text: str, *, top: int) -> TokenScores:
        full = prefix + text
        choice = self.complete(full, max_tokens=1, echo=True, logprobs=max(1, top))
        lp = _logprobs(choice, self)
        tokens = list(lp.get("tokens") or [])
        values = list(lp.get("token_logprobs") or [])
        offsets = list(lp.get("text_offset") or [])
        alternatives = list(lp.get("top_logprobs") or [None] * len(tokens))
        if not (len(tokens) == len(values) == len(offsets)):
            raise ServedModelError(
                f"{self.client.url('/completions')}: model {self.settings.model!r}: echoed "
                f"log-probs do not line up ({len(tokens)} tokens, {len(values)} log-probs, "
                f"{len(offsets)} offsets)"
            )
        start, end = len(prefix), len(full)
        span = [
            i
            for i, (tok, off) in enumerate(zip(tokens, offsets, strict=True))
            if off < end and off + max(1, len(tok)) > start
        ]
        if not span or any(values[i] is None for i in span):
            raise ServedModelError(
                f"{self.client.url('/completions')}: model {self.settings.model!r}: the echo "
                "holds no log-probs for the continuation's tokens"
            )
        top_rows = [{str(k): float(v) for k, v in (alternatives[i] or {}).items()} for i in span]
        return TokenScores([tokens[i] for i in span], [float(values[i]) for i in span], top_rows)

    def _stepwise(self, prefix: str, ids: list[int], *, top: int) -> TokenScores:
        return self._stepwise_rows([(prefix, ids)], top=top)[0]

    def _stepwise_many(self, texts: list[tuple[str, str]]) -> list[tuple[float, int]]:
        """:meth:`score_text` of many (prefix, text) pairs from generation log-probs;
        a step prompt shared by several texts (the first token after a prefix) is sent
        once."""
        pairs = []
        for prefix, text in texts:
            ids = self._text_ids(text)
            if len(ids) > STEPWISE_MAX_TOKENS:
                raise PromptError(
                    f"model {self.name!r} ({self.settings.base_url}): a {len(ids)}-token "
                    "continuation cannot be scored: this server's prompt log-probs failed "
                    f"the probe ({self.probe_record.get('verdict', 'see the manifest')}), and "
                    f"only continuations of up to {STEPWISE_MAX_TOKENS} tokens are read from "
                    "generation log-probs"
                )
            pairs.append((prefix, ids))
        rows = self._stepwise_rows(pairs, top=self.settings.top_logprobs)
        self.count("continuations", len(pairs))
        return [(float(sum(r.logprobs)), len(r.logprobs)) for r in rows]

    def _stepwise_rows(self, pairs: list[tuple[str, list[int]]], *, top: int) -> list[TokenScores]:
        decode = self.fmt.tokenizer.decode
        steps: list[list[str]] = []
        for prefix, ids in pairs:
            if not ids:
                raise PromptError("a continuation has no tokens")
            steps.append([prefix + (decode(ids[:t]) if t else "") for t in range(len(ids))])
        unique = list(dict.fromkeys(p for row in steps for p in row))
        k = max(1, top)

        def step(prompt: str) -> dict[str, float]:
            choice = self._one_step(prompt, k)
            row = (_logprobs(choice, self).get("top_logprobs") or [None])[0]
            return {str(a): float(b) for a, b in (row or {}).items()}

        answered = dict(zip(unique, self.client.map(step, unique), strict=True))
        self.count("stepwise_requests", len(unique))
        out = []
        for (_, ids), prompts in zip(pairs, steps, strict=True):
            pieces = [self.fmt.piece(ids, t) for t in range(len(ids))]
            rows = [answered[p] for p in prompts]
            values, censored = [], 0
            for piece, row in zip(pieces, rows, strict=True):
                value = row.get(piece)
                if value is None:
                    censored += 1
                    value = min(row.values()) if row else -math.inf
                values.append(float(value))
            if censored:
                self.count("tokens_censored", censored)
            out.append(TokenScores(pieces, values, rows, censored))
        return out

    # ---------------------------------------------------------------- generation
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
        """``n`` generations per message (temperature 0: greedy, then ``n`` = 1)."""
        check_decoding(max_new_tokens, n, temperature)
        jobs = []
        for row, message in enumerate(messages):
            prompt = self.prompt_text(message, answer_cue=answer_cue)
            for index in range(n):
                jobs.append((row, prompt, index))

        def one(job: tuple[int, str, int]) -> Generation:
            _, prompt, index = job
            params: dict[str, Any] = {
                "max_tokens": max_new_tokens,
                "temperature": float(temperature),
                "top_p": 1.0,
                "logprobs": 1,
            }
            if temperature > 0:
                params["seed"] = sample_seed(seed, index, prompt)
            choice = self.complete(prompt, **params)
            return self._generation(choice)

        gens = self.client.map(one, jobs)
        out: list[list[Generation]] = [[] for _ in messages]
        for (row, _, _), gen in zip(jobs, gens, strict=True):
            out[row].append(gen)
        self.count("generations", len(jobs))
        return out

    def _generation(self, choice: dict[str, Any]) -> Generation:
        text = str(choice.get("text") or "")
        lp = choice.get("logprobs") or {}
        values = [float(v) for v in (lp.get("token_logprobs") or []) if v is not None]
        ids = tuple(self._text_ids(text)) if text else ()
        return Generation(text=text, token_ids=ids, token_logprobs=tuple(values))

    def close(self) -> None:
        self.client.close()


def _logprobs(choice: dict[str, Any], model: OpenAICompletionsModel) -> dict[str, Any]:
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        raise ServedModelError(
            f"{model.client.url('/completions')}: model {model.settings.model!r}: the answer "
            "has no logprobs (does the server return log-probs? llama-cpp-python needs "
            "--logits_all true)"
        )
    return lp


def check_decoding(max_new_tokens: int, n: int, temperature: float) -> None:
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if temperature == 0 and n != 1:
        raise ValueError("greedy decoding (temperature=0) gives one answer; use n=1")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
