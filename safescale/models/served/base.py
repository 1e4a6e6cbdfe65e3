"""What every served model shares: prompt format, identity, capabilities, counters.

A served model implements :class:`~safescale.models.interface.BlackBoxModel`: the calls
conditions and black-box detectors make on an LM (``score_options``,
``score_continuations``, ``generate``, ``prompt_text``, ``prompt_ids``,
``count_tokens``, ``name``, ``model_hash``, ...). It has no weights in this process, so
it has none of the white-box surface (prompt passes, internals, hidden states,
attention): ``whitebox`` is False, it does not implement
:class:`~safescale.models.interface.WhiteBoxModel`, and callers ask
:func:`~safescale.models.interface.is_whitebox` first (a detector or stage that needs
the weights says in one line that it is unavailable for this model, or uses the local
``whitebox:`` model the config names).

**Identity.** ``model_hash`` (what the LM cache and detection inputs are keyed by) is a
digest of what the model *is*, not where it is served: the kind, the served model's
name, what the server reports about it (its ``/v1/models`` entry without timestamps)
and the local tokenizer's vocabulary and template. The same weights behind a
restarted server (another port, another host) have the same identity, so a resumed
study reuses every cached call.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from typing import Any

from safescale.models.backend import PromptError
from safescale.models.served.errors import ServedModelError
from safescale.models.served.prompting import CHARS_PER_TOKEN, PromptFormat, tokenizer_hash
from safescale.models.served.settings import ServedSettings

__all__ = ["ALL_FORMULATIONS", "LETTER_FORMULATIONS", "ServedModel"]

LETTER_FORMULATIONS = frozenset({"letter", "letter_cyclic", "letter_pride"})
ALL_FORMULATIONS = LETTER_FORMULATIONS | {"cloze_none", "cloze_token", "cloze_char", "cloze_pmi"}


class _LockedTokenizer:
    """A tokenizer whose calls are serialized (item threads share one tokenizer)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.RLock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._tokenizer.decode(*args, **kwargs)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._tokenizer.apply_chat_template(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._tokenizer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


class ServedModel:
    """Base of the served backends (see the module docstring).

    Args:
        settings: the served settings.
        tokenizer: the local tokenizer (or None) and its template setting.
    """

    #: Served models have no weights here: no prompt passes, internals or hidden states.
    whitebox = False
    served = True
    #: Part of the LM cache keys of cued samples (the in-process backend has its own).
    CUED_SAMPLING_LAYOUT = "served-1"
    batch_size = 1
    n_layers = None
    n_parameters = None
    kind = "served"

    def __init__(self, settings: ServedSettings, tokenizer: tuple[Any, bool | None]) -> None:
        tok, registry_chat = tokenizer
        chat = (
            settings.use_chat_template if settings.use_chat_template is not None else registry_chat
        )
        self.settings = settings
        self.name = settings.name
        self.fmt = PromptFormat(
            None if tok is None else _LockedTokenizer(tok),
            name=settings.name,
            use_chat_template=chat,
            system_prompt=settings.system_prompt,
        )
        self.tokenizer = self.fmt.tokenizer
        self._tokenizer_hash = tokenizer_hash(tok)
        self.identity: dict[str, Any] = {}
        self.probe_record: dict[str, Any] = {}
        #: Formulations this endpoint can serve (what the probe found).
        self.formulations: frozenset[str] = LETTER_FORMULATIONS
        #: How continuations are scored: "echo", "generation" (short ones), or None.
        self.continuations: str | None = None
        self._context_length = settings.context_length
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = {}

    def censored_row(self, top: dict[Any, float], keys: Sequence[Any]) -> list[float]:
        """Each key's log-prob among the ``top`` alternatives of one position; a key
        outside them gets the smallest reported value (an upper bound), counted as
        ``letters_censored``."""
        floor = min(top.values())
        row = []
        for key in keys:
            value = top.get(key)
            if value is None:
                self.count("letters_censored")
                value = floor
            row.append(value)
        return row

    def first_choice(self, route: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` (the model name, temperature 0 and the config's
        ``extra_body`` under it) to ``route``; returns the answer's first choice."""
        body = {"model": self.settings.model, "temperature": 0.0, **self.settings.extra_body}
        answer = self.client.post(route, {**body, **payload})
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not choices:
            raise ServedModelError(
                f"{self.client.url(route)}: model {self.settings.model!r}: "
                "the answer has no choices"
            )
        return choices[0]

    # ---------------------------------------------------------------- identity
    @property
    def model_hash(self) -> str:
        """Digest of the model's identity (see the module docstring)."""
        blob = json.dumps(
            {"kind": self.kind, **self.identity, "tokenizer": self._tokenizer_hash},
            sort_keys=True,
        )
        return "served:" + hashlib.sha256(blob.encode()).hexdigest()

    @property
    def context_length(self) -> int:
        return int(self._context_length or 2048)

    @property
    def use_chat_template(self) -> bool:
        return self.fmt.use_chat_template

    @property
    def system_prompt(self) -> str | None:
        return self.fmt.system_prompt

    @property
    def prompt_format_id(self) -> str:
        return self.fmt.prompt_format_id

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to a counter of :attr:`stats` (thread-safe)."""
        with self._stats_lock:
            self.stats[key] = self.stats.get(key, 0) + n

    def served_info(self) -> dict[str, Any]:
        """What a run's manifest records about this model: settings (no key), identity,
        the probe's findings, the formulations it can serve, counters."""
        return {
            **self.settings.public(),
            "identity": dict(self.identity),
            "tokenizer_sha256": self._tokenizer_hash,
            "token_counts": "exact (local tokenizer)"
            if self.fmt.exact
            else f"estimated ({CHARS_PER_TOKEN} characters a token, no local tokenizer)",
            "probe": dict(self.probe_record),
            "formulations": sorted(self.formulations),
            "continuations": self.continuations,
            "stats": dict(self.stats),
        }

    # ---------------------------------------------------------------- prompts
    def prompt_text(self, message: str, *, answer_cue: bool = False) -> str:
        """The prompt string sent for one user turn (the in-process backend's format)."""
        return self.fmt.prompt_text_or_message(message, answer_cue)

    def prompt_ids(self, message: str, *, answer_cue: bool = False) -> list[int]:
        return self.fmt.prompt_ids(message, answer_cue=answer_cue)

    def count_tokens(self, text: str) -> int:
        return self.fmt.count_tokens(text)

    def continuation_ids(self, text: str) -> list[int]:
        return self.fmt.continuation_ids(text)

    def letter_token_ids(self, letters: Sequence[str]) -> list[int]:
        if self.fmt.tokenizer is None:
            raise PromptError(f"model {self.name!r}: letter token ids need a local tokenizer")
        return self.fmt.letter_token_ids(letters)

    # ---------------------------------------------------------------- white box
    def needs_weights(self, what: str) -> ServedModelError:
        """The one-line error of a white-box request on this model."""
        return ServedModelError(
            f"model {self.name!r} ({self.kind}, {self.settings.base_url or self.settings.model}): "
            f"{what} needs the model's weights, which a served model does not have here; "
            "name the same weights as `whitebox:` in its config entry"
        )

    def open_prompt(self, *args: Any, **kwargs: Any) -> Any:
        raise self.needs_weights("a prompt pass (open_prompt)")

    def internals(self, *args: Any, **kwargs: Any) -> Any:
        raise self.needs_weights("a teacher-forced pass with internals")

    def generate_from(self, *args: Any, **kwargs: Any) -> Any:
        raise self.needs_weights("decoding from a prompt pass (generate_from)")

    def close(self) -> None:
        """Release connections (subclasses)."""
