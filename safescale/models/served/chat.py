"""``kind: openai-chat``: a chat-only endpoint (``/v1/chat/completions``).

Chat endpoints (OpenAI chat, Anthropic's OpenAI-compatible API, Ollama, a vLLM or
llama.cpp chat route) return log-probs of *generated* tokens only, so only the letter
formulations can be read from them: the user turn is sent as one user message (the
server applies the model's chat template), and each option letter's score is the
log-prob of the first generated token being that letter (``"A"`` or ``" A"``, summed in
probability) among the ``top_logprobs`` alternatives (a letter outside them is censored
at the smallest alternative, counted in ``letters_censored``). Generation works as for
completions. Continuations (cloze, PMI, the agentic critic's judgements, P(True)) are
refused: the config refuses those formulations and conditions at load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from safescale.models.backend import Generation, PromptError
from safescale.models.served.base import ServedModel
from safescale.models.served.client import ServerClient
from safescale.models.served.errors import ServedModelError
from safescale.models.served.openai import check_decoding, sample_seed
from safescale.models.served.settings import ServedSettings

__all__ = ["OpenAIChatModel"]


class OpenAIChatModel(ServedModel):
    """A model behind ``/v1/chat/completions`` (see the module docstring)."""

    kind = "openai-chat"

    def __init__(
        self, settings: ServedSettings, tokenizer: tuple[Any, bool | None], client: ServerClient
    ) -> None:
        super().__init__(settings, tokenizer)
        self.client = client

    def _messages(self, message: str) -> list[dict[str, str]]:
        turns = []
        if self.settings.system_prompt is not None:
            turns.append({"role": "system", "content": self.settings.system_prompt})
        turns.append({"role": "user", "content": message})
        return turns

    def prompt_text(self, message: str, *, answer_cue: bool = False) -> str:
        """The user turn as sent (the server applies its template)."""
        if not isinstance(message, str) or not message.strip():
            raise PromptError("the prompt message is empty")
        return message

    def prompt_ids(self, message: str, *, answer_cue: bool = False) -> list[int]:
        if self.fmt.tokenizer is not None:
            return self.fmt.prompt_ids(message, answer_cue=False)
        return [0] * self.fmt.count_tokens(message)

    def chat(self, message: str, **params: Any) -> dict[str, Any]:
        """One chat request; returns its first choice."""
        return self.first_choice(
            "/chat/completions", {"messages": self._messages(message), **params}
        )

    def first_token_alternatives(self, message: str) -> dict[str, float]:
        """``token -> log-prob`` of the first generated token's alternatives."""
        choice = self.chat(
            message, max_tokens=1, logprobs=True, top_logprobs=self.settings.top_logprobs
        )
        content = (choice.get("logprobs") or {}).get("content") or []
        if not content:
            raise ServedModelError(
                f"{self.client.url('/chat/completions')}: model {self.settings.model!r}: "
                "no log-probs for the generated token"
            )
        first = content[0]
        top = {str(t["token"]): float(t["logprob"]) for t in first.get("top_logprobs") or []}
        top.setdefault(str(first.get("token")), float(first.get("logprob")))
        return top

    def score_options(self, messages: Sequence[str], letters: Sequence[str]) -> np.ndarray:
        """Log-probs of the first generated token being each letter, ``[n, letters]``."""
        letters = list(letters)
        out = np.zeros((len(messages), len(letters)), dtype=np.float32)
        if not messages:
            return out
        for m in messages:
            self.prompt_text(m)
        tops = self.client.map(self.first_token_alternatives, list(messages))
        for row, top in enumerate(tops):
            floor = min(top.values())
            for col, letter in enumerate(letters):
                found = [v for k, v in top.items() if k.strip() == letter]
                if not found:
                    self.count("letters_censored")
                    out[row, col] = floor
                else:
                    out[row, col] = float(np.logaddexp.reduce(np.asarray(found)))
        self.count("letter_prompts", len(messages))
        return out

    def score_continuations(self, messages, continuations, *, answer_cue: bool = True):
        """Not available: a chat endpoint returns no prompt log-probs."""
        raise PromptError(
            f"model {self.name!r} ({self.settings.base_url}): kind: openai-chat cannot score "
            "continuations (chat endpoints return log-probs of generated tokens only); use "
            "a letter formulation"
        )

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
        """``n`` chat completions per message (temperature 0: greedy)."""
        check_decoding(max_new_tokens, n, temperature)
        jobs = [(row, m, i) for row, m in enumerate(messages) for i in range(n)]

        def one(job: tuple[int, str, int]) -> Generation:
            _, message, index = job
            params: dict[str, Any] = {
                "max_tokens": max_new_tokens,
                "temperature": float(temperature),
                "top_p": 1.0,
                "logprobs": True,
            }
            if temperature > 0:
                params["seed"] = sample_seed(seed, index, message)
            choice = self.chat(message, **params)
            text = str((choice.get("message") or {}).get("content") or "")
            content = (choice.get("logprobs") or {}).get("content") or []
            values = tuple(float(t["logprob"]) for t in content if t.get("logprob") is not None)
            ids: tuple[int, ...] = ()
            if self.fmt.tokenizer is not None and text:
                ids = tuple(self.fmt.tokenizer(text, add_special_tokens=False)["input_ids"])
            return Generation(text=text, token_ids=ids, token_logprobs=values)

        gens = self.client.map(one, jobs)
        out: list[list[Generation]] = [[] for _ in messages]
        for (row, _, _), gen in zip(jobs, gens, strict=True):
            out[row].append(gen)
        self.count("generations", len(jobs))
        return out

    def close(self) -> None:
        self.client.close()
