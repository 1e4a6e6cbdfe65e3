"""The prompt format of the in-process backend (and, over a tokenizer alone, of a
served model: :class:`~safescale.models.served.prompting.PromptFormat`).

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

import hashlib
from collections.abc import Sequence
from typing import Any

__all__ = ["ANSWER_CUE", "NEUTRAL_MESSAGE", "PromptError", "PromptingMixin"]

ANSWER_CUE = "Answer:"
#: The user turn of the unconditional (PMI) prompt: no question, no evidence, the same
#: prompt format and answer cue, so ``log p(text | neutral)`` is the model's prior for an
#: answer text in this position.
NEUTRAL_MESSAGE = "Question:"


class PromptError(ValueError):
    """An empty or unusable prompt or response."""


class PromptingMixin:
    """Prompt text and token ids of one user turn, option letters, continuations.

    Needs ``tokenizer``, ``name``, ``use_chat_template`` and ``system_prompt`` on the
    object (:class:`~safescale.models.backend.LanguageModel`, or a served model's
    :class:`~safescale.models.served.prompting.PromptFormat`); no weights.
    """

    tokenizer: Any
    name: str
    use_chat_template: bool
    system_prompt: str | None

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
        cache = self.__dict__.setdefault("_letter_ids", {})
        if key in cache:
            return cache[key]
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
        cache[key] = ids
        return ids

    def continuation_ids(self, text: str) -> list[int]:
        """Token ids of a continuation as it follows the answer cue: ``" " + text``
        tokenized on its own (no special tokens), as lm-evaluation-harness does with its
        target delimiter; ids are concatenated to the prompt's, never re-tokenized
        together."""
        if not isinstance(text, str) or not text.strip():
            raise PromptError("a continuation is empty")
        return list(self.tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"])

    def cue_ids(self, message: str) -> list[int] | None:
        """The answer cue's ids as they follow ``prompt_ids(message)``, or None when the
        cued prompt does not extend the plain one token-for-token."""
        plain = self.prompt_ids(message)
        cued = self.prompt_ids(message, answer_cue=True)
        if len(cued) <= len(plain) or cued[: len(plain)] != plain:
            return None
        return cued[len(plain) :]
