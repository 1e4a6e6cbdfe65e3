"""Prompt format and tokenizer of a served model.

A served model is prompted in exactly the format of the in-process backend (the chat
template of its tokenizer, or the plain template of base models, and the ``"Answer:"``
cue; see :mod:`safescale.models.prompting`): :class:`PromptFormat` *is* that code, bound
to a tokenizer loaded locally without the weights. With it the client knows the token
ids of prompts, continuations and option letters; prompt token counts and the
max-context packing are exact, and the tokenizer is part of the model's identity.

The tokenizer comes from the ``tokenizer:`` spec of the config (a registered name, a
model directory, a ``.gguf`` file or a Hugging Face id in the local cache). A registered
GGUF is read without converting its weights.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from safescale.models.prompting import ANSWER_CUE, PromptingMixin
from safescale.models.registry import UnknownModelError, get_registered, gguf_parts

__all__ = ["PromptFormat", "load_tokenizer", "tokenizer_hash"]

#: Characters per token assumed when a chat-only endpoint has no local tokenizer.
CHARS_PER_TOKEN = 4


class PromptFormat:
    """The in-process backend's prompt code over a tokenizer alone (no weights).

    Args:
        tokenizer: a transformers tokenizer, or None (chat endpoints without a local
            tokenizer: the message is sent as is and token counts are estimated).
        name: the model name (messages).
        use_chat_template: wrap prompts in the tokenizer's chat template (None: when it
            has one).
        system_prompt: optional system turn.
    """

    # The very methods of the in-process backend: the same prompt text and ids.
    prompt_text = PromptingMixin.prompt_text
    _prompt_ids = PromptingMixin.prompt_ids
    _count_tokens = PromptingMixin.count_tokens
    _continuation_ids = PromptingMixin.continuation_ids
    letter_token_ids = PromptingMixin.letter_token_ids
    _prompt_format_id = PromptingMixin.prompt_format_id

    def __init__(
        self,
        tokenizer: Any | None,
        *,
        name: str,
        use_chat_template: bool | None = None,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.name = name
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        if self.use_chat_template and not has_template:
            raise ValueError(f"model {name!r}: chat template requested but the tokenizer has none")
        self.system_prompt = system_prompt

    @property
    def exact(self) -> bool:
        """Token counts are exact (a local tokenizer), not estimated."""
        return self.tokenizer is not None

    @property
    def prompt_format_id(self) -> str:
        if self.tokenizer is None:
            return hashlib.sha256(f"server-template\x1f{ANSWER_CUE}".encode()).hexdigest()[:16]
        return self._prompt_format_id

    def prompt_ids(self, message: str, *, answer_cue: bool = False) -> list[int]:
        """Token ids of the prompt (estimated as ``len/4`` placeholders without a
        tokenizer: only their number is used then)."""
        if self.tokenizer is None:
            return [0] * self.count_tokens(self.prompt_text_or_message(message, answer_cue))
        return self._prompt_ids(message, answer_cue=answer_cue)

    def prompt_text_or_message(self, message: str, answer_cue: bool = False) -> str:
        if self.tokenizer is None:
            return message + (f"\n{ANSWER_CUE}" if answer_cue else "")
        return self.prompt_text(message, answer_cue=answer_cue)

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))
        return self._count_tokens(text)

    def continuation_ids(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(f"model {self.name!r}: continuations need a local tokenizer")
        return self._continuation_ids(text)

    def piece(self, ids: list[int], index: int) -> str:
        """The text token ``ids[index]`` adds after ``ids[:index]`` (how servers name a
        token in ``top_logprobs``)."""
        before = self.tokenizer.decode(ids[:index]) if index else ""
        return self.tokenizer.decode(ids[: index + 1])[len(before) :]

    def letter_pieces(self, letters: list[str]) -> list[str]:
        """How each option letter reads as the first token after the cue (``" A"``)."""
        if self.tokenizer is None:
            return [f" {letter}" for letter in letters]
        return [self.tokenizer.decode([i]) for i in self.letter_token_ids(letters)]


def load_tokenizer(spec: str) -> tuple[Any, bool | None]:
    """A tokenizer from a model spec, without loading weights.

    Returns:
        ``(tokenizer, use_chat_template)`` (the registry's setting for registered
        names, else None: the template when the tokenizer has one).

    Raises:
        UnknownModelError: the spec names no tokenizer that loads offline.
    """
    from transformers import AutoTokenizer

    from safescale.models.cache import cached_model_dir, is_valid_cache
    from safescale.models.loading import cached_sha, transformers_progress_bars

    entry = get_registered(spec)
    try:
        with transformers_progress_bars(False):
            if entry is not None:
                parts = gguf_parts(entry)
                sha = entry.source.sha256 or cached_sha(parts)
                directory = cached_model_dir(Path(entry.source.filename).stem, sha)
                if is_valid_cache(directory, sha):
                    return AutoTokenizer.from_pretrained(str(directory)), entry.use_chat_template
                if len(parts) == 1:
                    tok = AutoTokenizer.from_pretrained(
                        str(parts[0].parent), gguf_file=parts[0].name
                    )
                    return tok, entry.use_chat_template
                from safescale.models.loading import resolve_model_dir

                directory, _ = resolve_model_dir(entry)
                return AutoTokenizer.from_pretrained(str(directory)), entry.use_chat_template
            path = Path(spec).expanduser()
            if path.suffix == ".gguf" and path.is_file():
                return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name), None
            return AutoTokenizer.from_pretrained(str(path) if path.is_dir() else spec), None
    except (OSError, ValueError) as exc:
        raise UnknownModelError(
            f"tokenizer {spec!r}: not a registered model, a model directory, a .gguf file or "
            f"a Hugging Face id available offline ({str(exc).splitlines()[0][:200]})"
        ) from None


def tokenizer_hash(tokenizer: Any | None) -> str | None:
    """sha256 of a tokenizer's vocabulary, merges and chat template (None without one)."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    template = str(getattr(tokenizer, "chat_template", "") or "")
    return hashlib.sha256(f"{body}\x1f{template}".encode()).hexdigest()
